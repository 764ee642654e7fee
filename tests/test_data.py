import gzip
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from initprobe.data import fit_size, load_dataset
from initprobe.errors import UserError


def test_digits_default_needs_no_files():
    d = load_dataset()
    assert d.images.shape[1:] == (1, 8, 8)
    assert d.images.dtype == torch.float32
    assert d.images.min() == -1 and d.images.max() == 1
    assert d.num_classes == 10 and len(d.labels) == len(d.images)
    test = load_dataset("digits", split="test")
    assert len(d) + len(test) == 1797


def _mnist_npz(path, n=12, shape=(28, 28)):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    y = rng.integers(0, 10, n, dtype=np.uint8)
    np.savez(path, x_train=x, y_train=y, x_test=x[:4], y_test=y[:4])
    return x, y


def test_mnist_npz_padded_to_32(tmp_path):
    x, y = _mnist_npz(tmp_path / "m.npz")
    d = load_dataset("mnist", tmp_path / "m.npz")
    assert d.images.shape == (12, 1, 32, 32)
    # padding is background (-1); the centre holds the original pixels
    assert torch.all(d.images[:, :, :2] == -1)
    centre = (d.images[:, 0, 2:30, 2:30] + 1) * 127.5
    assert torch.allclose(centre, torch.from_numpy(x).float(), atol=1e-3)
    assert torch.equal(d.labels, torch.from_numpy(y.astype(np.int64)))
    assert load_dataset("mnist", tmp_path / "m.npz", split="test", size=28).images.shape == \
        (4, 1, 28, 28)


def _write_idx(path, arr):
    header = struct.pack(">HBB", 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.tobytes())


def test_mnist_idx_folder(tmp_path):
    x = np.arange(5 * 28 * 28, dtype=np.uint32).astype(np.uint8).reshape(5, 28, 28)
    y = np.array([1, 2, 3, 4, 5], np.uint8)
    for pre in ("train", "t10k"):
        _write_idx(tmp_path / f"{pre}-images-idx3-ubyte.gz", x)
        _write_idx(tmp_path / f"{pre}-labels-idx1-ubyte.gz", y)
    d = load_dataset("mnist", tmp_path, split="test")
    assert d.images.shape == (5, 1, 32, 32)
    assert d.labels.tolist() == [1, 2, 3, 4, 5]


def test_cifar_npz_nhwc(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "c.npz", x_train=x, y_train=np.arange(6), x_test=x, y_test=np.arange(6))
    d = load_dataset("cifar10", tmp_path / "c.npz")
    assert d.images.shape == (6, 3, 32, 32)
    expected = torch.tensor(x[0, 3, 5], dtype=torch.float32)
    assert torch.allclose((d.images[0, :, 3, 5] + 1) * 127.5, expected, atol=1e-3)


def test_cifar_pickle_folder_refuses_foreign_globals(tmp_path):
    import pickle
    for i in range(1, 6):
        with open(tmp_path / f"data_batch_{i}", "wb") as f:
            pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}, f)
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}, f)
    assert load_dataset("cifar10", tmp_path).images.shape == (10, 3, 32, 32)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump(Evil(), f)
    with pytest.raises(UserError, match="test_batch"):
        load_dataset("cifar10", tmp_path, split="test")


def test_image_folder_with_class_subfolders(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.fromarray(np.full((16, 16), 40 * i, np.uint8)).save(tmp_path / cls / f"{i}.png")
    d = load_dataset("folder", tmp_path)
    assert d.images.shape == (4, 1, 16, 16)
    assert sorted(d.labels.tolist()) == [0, 0, 1, 1]


@pytest.mark.parametrize("setup, match", [
    (lambda p: None, "no such file"),
    (lambda p: p.write_bytes(b"not a zip"), "not a readable .npz"),
    (lambda p: np.savez(p, a=np.zeros(3)), "missing arrays"),
    (lambda p: np.savez(p, x_train=np.zeros((3, 28, 28), np.uint8), y_train=np.zeros(2),
                        x_test=np.zeros((1, 28, 28)), y_test=np.zeros(1)), "3 images but"),
    (lambda p: np.savez(p, x_train=np.zeros((0, 28, 28), np.uint8), y_train=np.zeros(0),
                        x_test=np.zeros((1, 28, 28)), y_test=np.zeros(1)), "empty"),
    (lambda p: np.savez(p, x_train=np.zeros((3, 28), np.uint8), y_train=np.zeros(3),
                        x_test=np.zeros((1, 28)), y_test=np.zeros(1)), "shape"),
])
def test_bad_mnist_input_names_the_file(tmp_path, setup, match):
    p = tmp_path / "bad.npz"
    setup(p)
    with pytest.raises(UserError, match=match) as e:
        load_dataset("mnist", p)
    assert "\n" not in str(e.value)


def test_unknown_dataset_and_missing_path():
    with pytest.raises(UserError, match="choose one of"):
        load_dataset("imagenet")
    with pytest.raises(UserError, match="needs a path"):
        load_dataset("mnist")


def test_empty_image_folder(tmp_path):
    with pytest.raises(UserError, match="no .png"):
        load_dataset("folder", tmp_path)


def test_fit_size_resizes_down():
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    y = fit_size(x, 8)
    assert y.shape == (2, 1, 8, 8)
    assert torch.allclose(y[0, 0, 0, 0], x[0, 0, :2, :2].mean())
