"""Option help texts and small helpers shared by several command modules (no commands here)."""

from pathlib import Path

from ..errors import UserError

LAYERS_HELP = ("layer selector, the language of `initprobe layers CKPT --select`: blocks (the last "
               "conv of every block), decoder, 'enc.*', res:4, gdd, all, layer ids; join with , "
               "or + (union) and - (difference)")
LABELS_HELP = ("class-conditional networks: classes of the images, e.g. 0-9 (cycled), 3, 1,4,7, "
               "uniform (drawn per seed), data (real images' own); default: real images' own, "
               "generated images uniform")
DEVICE_HELP = "auto, cpu, cuda, cuda:N"
CHANNELS_LAST_HELP = "GPU: channels_last layout of the networks (cuDNN's NHWC bf16 convolutions)"
COMPILE_HELP = "GPU: torch.compile the generator and teacher (pays on long runs)"
def run_labels(checkpoints: list[Path], labels: list[str] | None) -> list[str]:
    if labels and len(labels) != len(checkpoints):
        raise UserError(f"got {len(labels)} --label for {len(checkpoints)} checkpoints; give one "
                        f"label per checkpoint or none (labels default to file stems)")
    names = labels or [Path(c).stem for c in checkpoints]
    if len(set(names)) != len(names):
        raise UserError(f"run labels {names} are not unique; give one --label per checkpoint")
    return names


def dataset_for(net, data: str, data_path: str | None, split: str, n_images: int):
    """The first `n_images` images (and labels) of the dataset at the network's size;
    UserError if the channels differ."""
    from ..data import load_dataset
    if n_images < 1:
        raise UserError(f"--n-images {n_images}: give at least 1 image")
    ds = load_dataset(data, data_path, split, net.cfg.img_resolution, limit=n_images)
    if ds.shape[0] != net.cfg.in_channels:
        raise UserError(f"{data} images have {ds.shape[0]} channels but the network takes "
                        f"{net.cfg.in_channels}; pick the matching --data")
    return ds


def class_inputs(nets: dict, spec: str | None, ds, device) -> dict:
    """Name -> the one-hot class labels a network sees for the images of `ds` (`--labels`;
    default the images' own; None for an unconditional network)."""
    from ..nets.labels import labels_onehot
    return {name: labels_onehot(net, spec, own=ds.labels, device=device)
            for name, net in nets.items()}


def numbers(spec: str, kind, option: str) -> list:
    """Comma-separated numbers of an option; UserError naming the option if malformed."""
    try:
        values = [kind(v) for v in spec.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"bad {option} {spec!r}; give comma-separated numbers like 2,4,6") from None
    if not values:
        raise UserError(f"{option} is empty; give comma-separated numbers like 2,4,6")
    return values


def parse_ints(spec: str | None, option: str) -> list[int] | None:
    """'1,2,2' -> [1, 2, 2]; 'none' -> []; None -> None (the preset's value)."""
    if spec is None:
        return None
    return [] if spec.strip().lower() == "none" else numbers(spec, int, option)
