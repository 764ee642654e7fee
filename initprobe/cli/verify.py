"""Inference-time scaling with the ratio estimator of a `ratio`/`diffratio` run: sample-best-of."""

from pathlib import Path

import numpy as np
import typer

from ..errors import UserError
from . import app

MODES = ("best", "resample")


def load_run_verifier(run_dir: Path):
    """The EMA generator, its map z -> image and the trained ratio estimator of a run's latest
    checkpoint. The estimator lives in the checkpoint's `.state.pt` under `aux` (the objective's
    state, which records the estimator's architecture as `estimator_spec`)."""
    from ..nets.io import load_generator, read_meta, resolve
    from ..train.ratio import run_estimator
    stem = resolve(run_dir)
    meta = read_meta(stem)
    if meta.get("kind") != "student" or meta.get("objective") not in ("ratio", "diffratio"):
        raise UserError(f"{stem}: not a ratio/diffratio student checkpoint (objective "
                        f"{meta.get('objective')!r}); pass a run trained with --objective "
                        f"ratio or diffratio")
    gen, gen_map = load_generator(stem, "ema")
    return gen, gen_map, run_estimator(stem), stem


@app.command("sample-best-of")
def sample_best_of_cmd(
    run_dir: Path = typer.Argument(..., help="ratio/diffratio run directory or checkpoint"),
    out: Path = typer.Option(..., "--out", help="output folder"),
    k: int = typer.Option(4, "--k", help="candidates per output (best) / pool factor (resample)"),
    mode: str = typer.Option("best", help="best: keep the smallest d of K candidates; "
                                          "resample: draw N of N*K by weight exp(-d)"),
    n: int = typer.Option(64, "--n", help="number of output images"),
    sigma: float = typer.Option(0.05, help="noise label at which d(x, sigma) is evaluated "
                                           "(inside the estimator's training range)"),
    seed: int = typer.Option(0, help="candidates use latent seeds seed*N*K ... ; resampling "
                                     "draws with this seed"),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N"),
):
    """Draw N*K one-step samples and select N with the run's ratio estimator as verifier.

    Writes OUT/{best,resample}-K.png and .npz (images in [-1, 1], their d, latent seeds) and
    OUT/plain.png (the first N candidates without selection, for comparison).

    Example: initprobe sample-best-of runs/diffratio --k 8 --mode best --n 64 --out runs/bo8
    """
    import torch

    from ..diffusion import latents
    from ..report.images import save_grid
    from ..runio import atomic_save_npz
    from ..train.loop import pick_device
    from ..train.verifier import best_of_k, choose_best, importance_resample, ratio_logits
    if mode not in MODES:
        raise UserError(f"unknown --mode {mode!r}; choose best or resample")
    if k < 1 or n < 1 or sigma <= 0:
        raise UserError("--k and --n must be >= 1 and --sigma > 0")
    dev = pick_device(device)
    gen, sample, ratio_net, stem = load_run_verifier(run_dir)
    gen, ratio_net = gen.to(dev), ratio_net.to(dev)
    shape = (gen.cfg.in_channels, gen.cfg.img_resolution, gen.cfg.img_resolution)
    seeds = torch.arange(seed * n * k, (seed + 1) * n * k)
    z = latents(seeds.tolist(), shape, dev)

    def gen_fn(zb):
        with torch.no_grad():
            return sample(gen, zb)

    if mode == "best":
        x, d_all = best_of_k(gen_fn, ratio_net, z.reshape(n, k, *shape), sigma)
        chosen = choose_best(seeds.reshape(n, k), d_all.cpu())
        d = d_all.min(1).values.cpu()
        pool = torch.cat([gen_fn(zb) for zb in z.reshape(n, k, *shape)[:, 0].split(256)])
        summary = f"mean d {float(d_all[:, 0].mean()):.3f} -> {float(d.mean()):.3f}"
    else:
        pool_all = torch.cat([gen_fn(zb) for zb in z.split(256)])
        x, idx, p = importance_resample(pool_all, ratio_net, sigma, n,
                                        torch.Generator().manual_seed(seed))
        chosen = seeds[idx]
        d = ratio_logits(ratio_net, x, sigma).cpu()
        pool = pool_all[:n]
        ess = float(1 / p.square().sum())
        summary = f"{len(idx.unique())} distinct, effective sample size {ess:.1f} of {n * k}"
    name = f"{mode}-{k}"
    png = save_grid(x.cpu(), out / f"{name}.png")
    save_grid(pool.cpu(), out / "plain.png")
    atomic_save_npz(out / f"{name}.npz", images=x.cpu().numpy(), d=d.numpy(),
                    seeds=np.asarray(chosen), sigma=np.float32(sigma))
    typer.echo(f"{stem.name}: {summary}; wrote {png} and {out / f'{name}.npz'}")
