"""Teacher training: an EDM denoiser trained with the EDM loss (log-normal sigma), Adam, EMA.

`labels=True` trains a class-conditional teacher: `label_dim` = the data's number of classes, each
training image's own label one-hot, and `label_dropout` (default 0.1) the probability that a
sample is shown without its label, so the network also learns the unconditional denoiser
classifier-free guidance needs (EDM trains its conditional CIFAR-10 networks with 0; 0.1 is Ho &
Salimans' convention). Both land in the resolved `unet` config, so every checkpoint loads back as a
conditional network. The label options enter the run's config only when `labels` is on
(`loop.to_plain`): an unconditional teacher's config, and its folder hash in `reproduce`, read as
before.
"""

import math
import time
from dataclasses import dataclass, field, replace

import torch
from tqdm.auto import tqdm

from ..data import load_dataset
from ..diffusion import edm_loss, generate, latents, sample_sigma
from ..nets.io import ema_copy
from ..nets.labels import bind, labels_onehot, one_hot
from ..nets.precond import Denoiser
from ..nets.unet import PRESETS, UNetConfig
from ..report.images import save_grid
from ..runio import append_jsonl
from .loop import Dist, RunDir, check_finite, pick_device, step_generator, to_plain, update_ema

DEFAULT_LABEL_DROPOUT = 0.1


@dataclass
class TeacherConfig:
    data: str = "digits"
    data_path: str | None = None
    size: int | None = None         # image side; default: the dataset's UNet size
    preset: str = "tiny"
    # architecture overrides of the preset (None: the preset's value)
    model_channels: int | None = None
    channel_mult: list[int] | None = None
    attn_res: list[int] | None = None   # resolutions with self-attention ([] for none)
    precond: str = "edm"
    images: int = 400_000           # training budget in images seen
    batch: int = 128
    lr: float = 2e-3
    warmup_images: int = 20_000     # linear learning-rate warm-up
    ema_halflife: float = 20_000    # in images
    seed: int = 0
    ckpt_every: int = 1000          # steps
    log_every: int = 50             # steps
    sample_steps: int = 18          # Heun steps for the final sample grid
    labels: bool = False            # class-conditional (label_dim = the data's classes)
    label_dropout: float = DEFAULT_LABEL_DROPOUT   # with labels: P(sample shown unlabelled)
    unet: dict = field(default_factory=dict)   # resolved architecture (`resolve_config`)


def resolve_config(cfg: TeacherConfig) -> TeacherConfig:
    """A copy of `cfg` with the image side `size` and the architecture `unet` filled in from
    the preset and the data (`cfg` itself is left as it is); validates user options."""
    from ..errors import UserError
    if cfg.preset not in PRESETS:
        raise UserError(f"unknown preset {cfg.preset!r}; choose one of {', '.join(PRESETS)}")
    for name in ("images", "batch", "ckpt_every", "log_every", "lr", "ema_halflife"):
        value = getattr(cfg, name)
        zero_ok = name == "ema_halflife"   # a half-life of 0 disables the EMA
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
            raise UserError(f"--{name.replace('_', '-')} must be a finite number "
                            f"{'>= 0' if zero_ok else '> 0'}, got {value!r}")
    arch = dict(PRESETS[cfg.preset])
    if cfg.model_channels is not None:
        if cfg.model_channels <= 0:
            raise UserError(f"--model-channels must be positive, got {cfg.model_channels}")
        arch["model_channels"] = cfg.model_channels
    if cfg.channel_mult is not None:
        if not cfg.channel_mult or any(m <= 0 for m in cfg.channel_mult):
            raise UserError(f"--channel-mult must be positive integers like 1,2,2, got "
                            f"{cfg.channel_mult}")
        arch["channel_mult"] = list(cfg.channel_mult)
    if cfg.attn_res is not None:
        arch["attn_resolutions"] = list(cfg.attn_res)
    if not 0 <= cfg.label_dropout < 1:
        raise UserError(f"--label-dropout must lie in [0, 1), got {cfg.label_dropout}")
    # the labelled teacher needs every label (its number of classes); the shape needs 8 images
    data = load_dataset(cfg.data, cfg.data_path, size=cfg.size, limit=None if cfg.labels else 8)
    c, h, _ = data.shape
    levels = len(arch["channel_mult"])
    if h % 2 ** (levels - 1):
        raise UserError(f"image side {h} is not divisible by 2^{levels - 1} ({levels} "
                        f"resolutions of --channel-mult {arch['channel_mult']}); pick a --size "
                        f"that is, or fewer levels")
    resolutions = [h >> i for i in range(levels)]
    bad = [r for r in arch["attn_resolutions"] if r not in resolutions]
    if bad:
        raise UserError(f"--attn-res {bad}: the network's resolutions are {resolutions}")
    if cfg.labels:
        arch.update(label_dim=data.num_classes, label_dropout=cfg.label_dropout)
    unet = UNetConfig(img_resolution=h, in_channels=c, out_channels=c, **arch).to_dict()
    return replace(cfg, size=h, unet=unet)


def train_teacher(cfg: TeacherConfig, out: str, device: str = "auto",
                  progress: bool = True) -> dict:
    """Train (or resume) a teacher in run directory `out`; returns the final metrics record."""
    cfg = resolve_config(cfg)
    ddp = Dist()
    dev = pick_device(device)
    with RunDir(out, {"kind": "teacher", **to_plain(cfg)}, resume_ignore=("images",),
                lock=ddp.main) as run:
        return _train(cfg, run, ddp, dev, progress)


def _train(cfg: TeacherConfig, run: RunDir, ddp: Dist, dev: torch.device,
           progress: bool) -> dict:
    data = load_dataset(cfg.data, cfg.data_path, size=cfg.size)
    images = data.images.to(dev)
    dim = UNetConfig(**cfg.unet).label_dim
    onehot = one_hot(data.labels, dim, dev) if dim else None

    torch.manual_seed(cfg.seed)
    net = Denoiser(UNetConfig(**cfg.unet), cfg.precond).to(dev).train()
    ema = ema_copy(net)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)
    step = 0
    if (stem := run.latest()) is not None:
        step = run.restore(stem, {"net": net.load_state_dict, "ema": ema.load_state_dict,
                                  "opt": opt.load_state_dict})
    if ddp.main:
        run.write_config()
        run.resume_metrics(step)
    model = torch.nn.parallel.DistributedDataParallel(net) if ddp.on else net
    ddp.local_batch(cfg.batch)  # refuses a batch that does not split over the processes
    total_steps = -(-cfg.images // cfg.batch)
    bar = tqdm(total=total_steps, initial=step, disable=None if (progress and ddp.main) else True,
               desc="teacher", unit="step", dynamic_ncols=True)
    t0, seen0 = time.perf_counter(), step * cfg.batch
    record = {}
    while step < total_steps:
        g = step_generator(cfg.seed, step)
        idx = ddp.shard(torch.randint(len(images), (cfg.batch,), generator=g))
        sigma = ddp.shard(sample_sigma(cfg.batch, g)).to(dev)
        noise = ddp.shard(torch.randn(cfg.batch, *data.shape, generator=g)).to(dev)
        torch.manual_seed(int(torch.randint(2**62, (1,), generator=g)) + ddp.rank)  # dropout
        net_b = model if onehot is None else bind(model, onehot[idx.to(dev)])
        loss = edm_loss(net_b, images[idx.to(dev)], sigma, noise)
        lr = cfg.lr * min(1.0, (step + 1) * cfg.batch / max(cfg.warmup_images, 1))
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        update_ema(ema, net, cfg.batch, cfg.ema_halflife)
        step += 1
        check_finite(step, {"loss": float(loss.detach())}, run)
        bar.update(1)
        if step % cfg.log_every == 0 or step == total_steps:
            seen = step * cfg.batch
            rate = (seen - seen0) / max(time.perf_counter() - t0, 1e-9)
            record = {"step": step, "images_seen": seen, "loss": ddp.mean(float(loss.detach())),
                      "lr": lr, "images_per_s": rate}
            bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{rate:.0f}")
            if ddp.main:
                append_jsonl(run.metrics, record)
        if ddp.main and (step % cfg.ckpt_every == 0 or step == total_steps):
            run.save(step, net, ema, {"net": net.state_dict(), "ema": ema.state_dict(),
                                      "opt": opt.state_dict(), "step": step},
                     kind="teacher", images_seen=step * cfg.batch, data=cfg.data, seed=cfg.seed)
        ddp.barrier()
    bar.close()
    if ddp.main:
        z = latents(range(64), data.shape, dev)
        # a conditional teacher's grids: one class per column (classes 0, 1, ... cycled)
        y = labels_onehot(ema, f"0-{dim - 1}", range(64), device=dev) if dim else None
        nrow = dim if dim else None
        save_grid(generate(ema, z, "heun", cfg.sample_steps, labels=y),
                  run.samples / "heun.png", nrow)
        save_grid(generate(ema, z, "one-step", labels=y), run.samples / "one-step.png", nrow)
    return record
