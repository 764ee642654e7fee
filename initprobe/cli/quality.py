"""Quality commands: train-features, quality (abs or rel, several checkpoints), relfid."""

from pathlib import Path
from typing import Annotated

import typer

from ..data import DATA_HELP, PATH_HELP
from ..errors import UserError
from . import app
from .common import DEVICE_HELP, LABELS_HELP, numbers, run_labels

Opt = typer.Option
NETWORK_HELP = "feature network: classifier (trained on the data, cached) or inception (FID)"
WEIGHTS_HELP = ("local FID Inception weights: pytorch-fid's pt_inception-2015-12-05-*.pth or the "
                "TorchScript inception-2015-12-05.pt (never downloaded)")


@app.command("train-features")
def train_features_cmd(
    data: str = typer.Option("digits", help=DATA_HELP),
    data_path: str = typer.Option(None, help=PATH_HELP),
    size: int = typer.Option(None, help="image side (default: the dataset's UNet size)"),
    steps: int = typer.Option(1500, help="classifier training steps"),
    seed: int = typer.Option(0, help="random seed"),
):
    """Train (or find in the cache) the domain classifier whose features measure quality.

    Example: initprobe train-features --data mnist --data-path ../shared/data/mnist.npz
    """
    from ..data import load_dataset
    from ..measure.features.classifier import cache_dir, load_or_train
    train = load_dataset(data, data_path, "train", size)
    test = load_dataset(data, data_path, "test", size)
    _, meta = load_or_train(train, test, steps=steps, seed=seed)
    typer.echo(f"classifier for {data}: test accuracy {meta['test_accuracy']:.4f} "
               f"(cached under {cache_dir() / 'features'})")


def _setup(data: str, data_path: str | None, network: str, weights: Path | None, device: str,
           checkpoints: list[Path]):
    """(train data at the checkpoints' image side, extractor on the device, device, the
    checkpoints' generators, `load_generator`); the networks are loaded and checked against the
    data before the extractor (maybe trained) is made."""
    from ..measure.features.extractors import make_extractor
    from ..nets.io import dataset_for_network, load_generator
    from ..train.loop import pick_device
    dev = pick_device(device)
    gens = [load_generator(c).to(dev) for c in checkpoints]
    nets = [g.net for g in gens]
    train = dataset_for_network(nets[0], checkpoints[0], data, data_path)
    for checkpoint, net in zip(checkpoints, nets):
        if (net.cfg.in_channels, net.cfg.img_resolution, net.cfg.img_resolution) != train.shape:
            raise UserError(f"{checkpoint} makes {net.cfg.in_channels}x"
                            f"{net.cfg.img_resolution}^2 images but {train.name} has shape "
                            f"{train.shape}; pick the matching --data")
    test = dataset_for_network(nets[0], checkpoints[0], data, data_path, "test")
    return train, make_extractor(network, train, test, weights).to(dev), dev, gens


@app.command("quality")
def quality_cmd(
    checkpoints: Annotated[list[Path], typer.Argument(help="checkpoints (file, stem, run dir)")],
    out: Annotated[Path, Opt("--out", help="output folder for quality.csv")],
    data: Annotated[str, Opt(help=DATA_HELP)] = "digits",
    data_path: Annotated[str | None, Opt(help=PATH_HELP)] = None,
    network: Annotated[str, Opt(help=NETWORK_HELP)] = "classifier",
    inception_weights: Annotated[Path | None, Opt(help=WEIGHTS_HELP)] = None,
    reference: Annotated[str, Opt(help="data (abs) or a CHECKPOINT whose samples, same seeds, "
                                       "are the reference (rel)")] = "data",
    sampler: Annotated[str, Opt(help="heun, euler, two-step, one-step, generator "
                                     "(a student's trained map)")] = "heun",
    steps: Annotated[int, Opt(help="sampler steps (heun/euler)")] = 18,
    sigma_mid: Annotated[float, Opt(help="two-step intermediate sigma")] = 2.0,
    reference_sampler: Annotated[str | None, Opt(help="sampler of a checkpoint reference "
                                                      "(default: --sampler)")] = None,
    reference_steps: Annotated[int | None, Opt(help="its steps (default: --steps)")] = None,
    n: Annotated[int, Opt(help="number of samples (seeds 0..n-1)")] = 1000,
    label: Annotated[list[str] | None, Opt(help="one per checkpoint (default: file stem)")] = None,
    batch: Annotated[int, Opt(help="images per generation / feature batch")] = 256,
    labels: Annotated[str | None, Opt(help=LABELS_HELP)] = None,
    device: Annotated[str, Opt(help=DEVICE_HELP)] = "auto",
):
    """Sample quality of one or more checkpoints against the data (abs) or against another
    checkpoint's samples with the same seeds (rel); writes the long-form quality.csv.
    Class-conditional networks add the label accuracy and, against the data, per-class rows
    (fd, precision, recall, label_accuracy; the class in the `label` column).

    Example: initprobe quality runs/teacher-digits runs/gen-digits --label teacher
             --label generator --reference data --out runs/quality

    Labels:  initprobe quality runs/teacher-cond --labels 0-9 --out runs/quality-cond

    FID:     initprobe quality runs/gen-cifar --data cifar10 --data-path DATA
             --network inception --inception-weights pt_inception-2015-12-05-6726825d.pth
    """
    from ..diffusion import sampler_for
    from ..measure.analyses.quality import (
        class_metrics,
        quality_metrics,
        summarize_classes,
        summarize_data,
        summarize_samples,
    )
    from ..runio import atomic_write_text, writable_dir
    from ..schema import frame, split_class
    names = run_labels(checkpoints, label)
    writable_dir(out)
    refs = [] if reference == "data" else [Path(reference)]
    train, extractor, dev, loaded = _setup(data, data_path, network, inception_weights, device,
                                           [*checkpoints, *refs])
    gens = dict(zip(names, loaded))
    if reference == "data":
        ref = summarize_data(extractor, train, batch=batch)
    else:
        ref_net, ref_map = loaded[-1]
        ref = summarize_samples(extractor, ref_net, n,
                                sampler_for(reference_sampler or sampler, ref_map),
                                reference_steps or steps, sigma_mid, batch, labels)
    records = []
    for name, (net, gen_map) in gens.items():
        s = summarize_samples(extractor, net, n, sampler_for(sampler, gen_map), steps,
                              sigma_mid, batch, labels)
        q = quality_metrics(s, ref, extractor)
        if s.by_class and reference == "data":
            q.update(class_metrics(s, summarize_classes(extractor, train), extractor))
        records += [{"run": name, "metric": split_class(k)[0], "label": split_class(k)[1],
                     "value": v} for k, v in q.items()]
        typer.echo(f"{name}: " + ", ".join(f"{k} {v:.4g}" for k, v in q.items()))
    df = frame(records, network=extractor.name, reference=reference, sampler=sampler,
               steps=steps, sigma_mid=sigma_mid, n=n)
    atomic_write_text(out / "quality.csv", df.to_csv(index=False))
    typer.echo(f"wrote {out / 'quality.csv'}")


@app.command("relfid")
def relfid_cmd(
    teacher: Annotated[Path, Opt(help="teacher checkpoint (file, stem, run dir)")],
    student: Annotated[Path, Opt(help="one-step student checkpoint")],
    out: Annotated[Path, Opt("--out", help="output folder")],
    steps: Annotated[str, Opt(help="teacher step counts (Karras grid levels)")] = "2,4,6,8,10",
    step_sampler: Annotated[str, Opt(help="sampler of the step sweep: heun (EDM, 2N-1 "
                                          "evaluations) or euler (N evaluations)")] = "heun",
    sigma_mid: Annotated[str, Opt(help="intermediate sigmas of the two-step teacher")]
    = "0.2,0.5,0.8,2,5",
    n: Annotated[int, Opt(help="samples per configuration (seeds 0..n-1)")] = 1000,
    data: Annotated[str, Opt(help=DATA_HELP)] = "digits",
    data_path: Annotated[str | None, Opt(help=PATH_HELP)] = None,
    network: Annotated[str, Opt(help=NETWORK_HELP)] = "classifier",
    inception_weights: Annotated[Path | None, Opt(help=WEIGHTS_HELP)] = None,
    batch: Annotated[int, Opt(help="images per generation / feature batch")] = 256,
    device: Annotated[str, Opt(help=DEVICE_HELP)] = "auto",
):
    """GDD's rel-FID vs abs-FID (claim C5): Frechet distances of the teacher's N-step (Heun or
    Euler) and two-step (sigma_mid) samples to the data (abs_fd) and to the student's one-step
    samples with the same seeds (rel_fd); writes relfid.csv and relfid.png.

    Example: initprobe relfid --teacher runs/teacher-digits --student runs/gen-digits
             --steps 2,4,6,8,10 --sigma-mid 0.2,0.5,0.8,2,5 --n 1000 --out runs/relfid
    """
    from ..measure.analyses.relfid import RelFidOptions, relfid_sweep
    from ..report.figures import relfid_figure
    from ..runio import atomic_write_text, writable_dir
    writable_dir(out)
    step_list = numbers(steps, int, "--steps")
    mids = numbers(sigma_mid, float, "--sigma-mid")
    train, extractor, dev, (t_gen, s_gen) = _setup(data, data_path, network, inception_weights,
                                                   device, [teacher, student])
    df = relfid_sweep(t_gen.net, s_gen, train, extractor,
                      RelFidOptions(step_list, mids, n, batch, step_sampler))
    df["teacher"], df["student"] = str(teacher), str(student)
    atomic_write_text(out / "relfid.csv", df.to_csv(index=False))
    png = relfid_figure(df, out / "relfid.png")
    wide = df.pivot_table(index="run", columns="metric", values="value", sort=False)
    typer.echo(wide.to_string(float_format=lambda v: f"{v:.4g}"))
    typer.echo(f"wrote {out / 'relfid.csv'} and {png}")
