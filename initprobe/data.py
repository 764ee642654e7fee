"""Datasets as NCHW float32 tensors in [-1, 1] with integer labels.

Sources (`load_dataset(name, path)`):
- `digits`: scikit-learn's bundled 8x8 digits (1797 images, 16 grey levels): needs no file.
- `mnist`: an `.npz` with `x_train, y_train, x_test, y_test`, or a folder with the four official
  idx `.gz` files (`train-images-idx3-ubyte.gz`, ...). 28x28, padded to 32x32 by default.
- `cifar10`: the official python-pickle batch folder (`data_batch_1..5`, `test_batch`) or an
  `.npz` with `x_train, y_train, ...` in NHWC or NCHW uint8.
- `folder`: a folder of PNG/JPEG images; labels from sub-folder names (0 if flat).
Images keep their labels; `size` pads (with the background value -1) or resizes to a side the
UNet accepts. Every problem with the input raises `UserError` naming the file and the format.
"""

import gzip
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import UserError

DATA_HELP = "dataset: digits (bundled, default), mnist, cifar10, folder"
PATH_HELP = "path of the dataset file or folder (not needed for digits)"

DATASETS = ("digits", "mnist", "cifar10", "folder")
NATIVE_SIZE = {"digits": 8, "mnist": 32, "cifar10": 32}


@dataclass
class Dataset:
    name: str
    images: torch.Tensor   # [N, C, H, W] float32 in [-1, 1]
    labels: torch.Tensor   # [N] int64
    num_classes: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def __len__(self) -> int:
        return len(self.images)


def _to_tensor(x: np.ndarray, levels: float) -> torch.Tensor:
    return torch.from_numpy(x.astype(np.float32) / levels * 2 - 1)


def _load_digits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits
    d = load_digits()
    x = _to_tensor(d.images[:, None], 16.0)
    y = torch.from_numpy(d.target.astype(np.int64))
    # A fixed 80/20 split, the same every time.
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    cut = int(0.8 * len(x))
    sel = idx[:cut] if split == "train" else idx[cut:]
    return x[sel], y[sel]


def _npz_arrays(path: Path, split: str, fmt: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise UserError(f"{path}: not a readable .npz file ({e or 'empty'}); expected "
                        f"{fmt}") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise UserError(f"{path}: a single .npy array, not an .npz archive; expected {fmt}")
    with z:
        keys = (f"x_{split}", f"y_{split}")
        if not all(k in z.files for k in keys):
            raise UserError(f"{path}: missing arrays {keys} (has {z.files}); expected {fmt}")
        try:
            x, y = z[keys[0]], z[keys[1]]
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise UserError(f"{path}: unreadable arrays {keys} ({e}); expected {fmt}") from None
    if x.dtype.kind not in "uif" or y.dtype.kind not in "uif":
        raise UserError(f"{path}: {keys[0]} is {x.dtype} and {keys[1]} is {y.dtype}, not "
                        f"numbers; expected {fmt}")
    if len(x) != len(y):
        raise UserError(f"{path}: {keys[0]} has {len(x)} images but {keys[1]} has {len(y)} "
                        f"labels; expected {fmt}")
    return x, y


def _read_idx(path: Path) -> np.ndarray:
    try:
        raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
        zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
        if zero != 0 or dtype != 0x08:
            raise ValueError("bad magic number")
        dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
        return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)
    except (OSError, ValueError, struct.error, EOFError) as e:
        raise UserError(f"{path}: not an idx file ({e}); expected the official MNIST "
                        f"idx .gz files") from None


MNIST_FMT = ("an .npz with x_train, y_train, x_test, y_test (uint8, 28x28) or a folder with "
             "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
             "t10k-labels-idx1-ubyte.gz")


def _load_mnist(path: Path, split: str):
    if path.is_dir():
        pre = "train" if split == "train" else "t10k"
        files = [path / f"{pre}-images-idx3-ubyte.gz", path / f"{pre}-labels-idx1-ubyte.gz"]
        for f in files:
            if not f.exists():
                raise UserError(f"{f}: not found; expected {MNIST_FMT}")
        x, y = _read_idx(files[0]), _read_idx(files[1])
        if len(x) != len(y):
            raise UserError(f"{files[0]}: {len(x)} images but {len(y)} labels in {files[1]}")
    else:
        x, y = _npz_arrays(path, split, MNIST_FMT)
    if x.ndim != 3:
        raise UserError(f"{path}: images have shape {x.shape}; expected {MNIST_FMT}")
    return _to_tensor(x[:, None], 255.0), torch.from_numpy(y.astype(np.int64))


CIFAR_FMT = ("the python-pickle folder cifar-10-batches-py (data_batch_1..5, test_batch) or an "
             ".npz with x_train, y_train, x_test, y_test (uint8 NHWC or NCHW)")


def _load_cifar(path: Path, split: str):
    if path.is_dir():
        names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        xs, ys = [], []
        for n in names:
            f = path / n
            if not f.exists():
                raise UserError(f"{f}: not found; expected {CIFAR_FMT}")
            try:
                d = _SafeUnpickler(f.open("rb"), encoding="bytes").load()
                xs.append(np.asarray(d[b"data"], np.uint8).reshape(-1, 3, 32, 32))
                ys.append(np.asarray(d[b"labels"]))
            except (pickle.UnpicklingError, KeyError, ValueError, EOFError, TypeError) as e:
                raise UserError(f"{f}: not a CIFAR-10 batch ({e}); expected {CIFAR_FMT}") from None
        x, y = np.concatenate(xs), np.concatenate(ys)
    else:
        x, y = _npz_arrays(path, split, CIFAR_FMT)
        if x.ndim == 4 and x.shape[-1] == 3:
            x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4 or x.shape[1] != 3:
        raise UserError(f"{path}: images have shape {x.shape}; expected {CIFAR_FMT}")
    return _to_tensor(x, 255.0), torch.from_numpy(y.astype(np.int64))


class _SafeUnpickler(pickle.Unpickler):
    """CIFAR batches are dicts of lists and numpy arrays; refuse every global but numpy's."""

    def find_class(self, module, name):
        if module in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray") and \
                name in ("ndarray", "dtype", "_reconstruct"):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing global {module}.{name}")


def _load_folder(path: Path):
    from PIL import Image
    if not path.is_dir():
        raise UserError(f"{path}: not a folder; expected a folder of PNG/JPEG images")
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not files:
        raise UserError(f"{path}: no .png/.jpg/.jpeg images found; expected a folder of images")
    classes = sorted({f.parent.relative_to(path).as_posix() for f in files})
    arrays, labels = [], []
    for f in files:
        try:
            img = np.asarray(Image.open(f).convert("RGB"))
        except OSError as e:
            raise UserError(f"{f}: unreadable image ({e}); expected PNG or JPEG") from None
        if arrays and img.shape != arrays[0].shape:
            raise UserError(f"{f}: size {img.shape[:2]} differs from {arrays[0].shape[:2]} of "
                            f"{files[0]}; give --size to resize all images to one size")
        arrays.append(img)
        labels.append(classes.index(f.parent.relative_to(path).as_posix()))
    x = np.stack(arrays).transpose(0, 3, 1, 2)
    if np.all(x[:, 0] == x[:, 1]) and np.all(x[:, 1] == x[:, 2]):
        x = x[:, :1]
    return _to_tensor(x, 255.0), torch.tensor(labels)


def fit_size(images: torch.Tensor, size: int) -> torch.Tensor:
    """Pad symmetrically with -1 (background) when smaller, resize (area/bilinear) otherwise."""
    h, w = images.shape[-2:]
    if (h, w) == (size, size):
        return images
    if h <= size and w <= size:
        top, left = (size - h) // 2, (size - w) // 2
        return F.pad(images, (left, size - w - left, top, size - h - top), value=-1.0)
    return F.interpolate(images, size=(size, size), mode="area")


def load_dataset(name: str = "digits", path: str | Path | None = None, split: str = "train",
                 size: int | None = None, limit: int | None = None) -> Dataset:
    """Load a dataset; `size` defaults to the dataset's native UNet size (MNIST: 32)."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if split not in ("train", "test"):
        raise UserError(f"unknown split {split!r}; choose 'train' or 'test'")
    if size is not None and size < 1:
        raise UserError(f"image side {size} must be positive; pass --size N >= 1 or leave it "
                        f"out for the dataset's own size")
    if limit is not None and limit < 1:
        raise UserError(f"asked for {limit} images; ask for at least 1")
    if name == "digits":
        x, y = _load_digits(split)
    else:
        if path is None:
            raise UserError(f"dataset {name!r} needs a path; pass --data-path PATH")
        p = Path(path).expanduser()
        if not p.exists():
            raise UserError(f"{p}: no such file or folder; pass the path of the {name} data")
        x, y = {"mnist": _load_mnist, "cifar10": _load_cifar,
                "folder": lambda q, s: _load_folder(q)}[name](p, split)
    if len(x) == 0:
        raise UserError(f"{path or name}: the {split} split is empty; expected a non-empty set")
    if limit is not None:
        x, y = x[:limit], y[:limit]
    size = size or NATIVE_SIZE.get(name, max(x.shape[-2:]))
    x = fit_size(x, size).contiguous()
    return Dataset(name, x, y, int(y.max()) + 1)
