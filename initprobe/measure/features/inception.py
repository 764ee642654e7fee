"""The FID Inception-v3 feature network (2048-d pool features), from a local weights file.

initprobe never downloads weights. Two file formats are accepted (detected from the content, not
the name):

- a state dict saved with `torch.save`, as pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`
  (the TensorFlow FID graph ported to torchvision's Inception3 names: `Conv2d_1a_3x3.conv.weight`,
  `Mixed_7c.branch_pool.bn.running_var`, ...). It loads into `FIDInception` below, written here
  from the published architecture; `fc.*` (the 1008-way classifier) and `num_batches_tracked`
  entries are ignored, every other weight must match exactly. Read with `weights_only=True`.
- a TorchScript archive such as `inception-2015-12-05.pt` of StyleGAN2-ADA / clean-fid metrics,
  called as `module(images, return_features=True)` on 299x299 RGB images in [0, 255].

Input convention of `InceptionFeatures`: images [N, C, H, W] in [-1, 1] with C = 1 or 3. They are
quantized to 8 bits (as images saved to PNG would be), grayscale is repeated to 3 channels, and
the result is resized to 299x299 (bilinear, align_corners=False, as pytorch-fid).

Architecture (Szegedy et al. 2016, FID variant): BasicConv = conv (no bias) + BatchNorm
(eps 1e-3) + ReLU; stem convs and two max pools; Mixed_5b-d (A), 6a (B), 6b-e (C), 7a (D),
7b-c (E); global average pool. The FID variant differs from torchvision's Inception3 in that the
average pools inside A, C and the first E block exclude the zero padding
(count_include_pad=False), and the second E block max-pools its pool branch.
"""

import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import UserError

FEATURE_DIM = 2048
SIZE = 299
FORMATS = ("pytorch-fid's pt_inception-2015-12-05-6726825d.pth (state dict) or the TorchScript "
           "inception-2015-12-05.pt of StyleGAN2-ADA/clean-fid")


class BasicConv(nn.Sequential):
    """conv (no bias) -> BatchNorm(eps 1e-3) -> ReLU, with torchvision's names `conv`, `bn`."""

    def __init__(self, cin: int, cout: int, kernel, stride: int = 1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)
        self.relu = nn.ReLU()


def _avg_pool(x):
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class BlockA(nn.Module):
    """35x35 block: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1 (pool_features)."""

    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv(cin, 64, 1)
        self.branch5x5_1 = BasicConv(cin, 48, 1)
        self.branch5x5_2 = BasicConv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv(96, 96, 3, padding=1)
        self.branch_pool = BasicConv(cin, pool_features, 1)

    def forward(self, x):
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg_pool(x))], 1)


class BlockB(nn.Module):
    """35 -> 17 reduction: 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = BasicConv(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv(96, 96, 3, stride=2)

    def forward(self, x):
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, 3, stride=2)], 1)


class BlockC(nn.Module):
    """17x17 block with factorized 7x7 convs (c7 inner channels)."""

    def __init__(self, cin: int, c7: int):
        super().__init__()
        row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        self.branch1x1 = BasicConv(cin, 192, 1)
        self.branch7x7_1 = BasicConv(cin, c7, 1)
        self.branch7x7_2 = BasicConv(c7, c7, **row)
        self.branch7x7_3 = BasicConv(c7, 192, **col)
        self.branch7x7dbl_1 = BasicConv(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv(c7, c7, **col)
        self.branch7x7dbl_3 = BasicConv(c7, c7, **row)
        self.branch7x7dbl_4 = BasicConv(c7, c7, **col)
        self.branch7x7dbl_5 = BasicConv(c7, 192, **row)
        self.branch_pool = BasicConv(cin, 192, 1)

    def forward(self, x):
        dbl = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                     self.branch7x7dbl_5):
            dbl = conv(dbl)
        return torch.cat([
            self.branch1x1(x),
            self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
            dbl,
            self.branch_pool(_avg_pool(x))], 1)


class BlockD(nn.Module):
    """17 -> 8 reduction: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = BasicConv(cin, 192, 1)
        self.branch3x3_2 = BasicConv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv(192, 192, 3, stride=2)

    def forward(self, x):
        b = self.branch7x7x3_1(x)
        for conv in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b = conv(b)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b,
                          F.max_pool2d(x, 3, stride=2)], 1)


class BlockE(nn.Module):
    """8x8 block with split 1x3 / 3x1 branches; `max_pool` selects the pool branch's pooling."""

    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        row, col = dict(kernel=(1, 3), padding=(0, 1)), dict(kernel=(3, 1), padding=(1, 0))
        self.max_pool = max_pool
        self.branch1x1 = BasicConv(cin, 320, 1)
        self.branch3x3_1 = BasicConv(cin, 384, 1)
        self.branch3x3_2a = BasicConv(384, 384, **row)
        self.branch3x3_2b = BasicConv(384, 384, **col)
        self.branch3x3dbl_1 = BasicConv(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv(384, 384, **row)
        self.branch3x3dbl_3b = BasicConv(384, 384, **col)
        self.branch_pool = BasicConv(cin, 192, 1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool(x)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(b3), self.branch3x3_2b(b3),
            self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd),
            self.branch_pool(pooled)], 1)


class FIDInception(nn.Module):
    """FID Inception-v3 up to the global average pool: [N, 3, 299, 299] in [-1, 1] -> [N, 2048]."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv(80, 192, 3)
        self.Mixed_5b = BlockA(192, 32)
        self.Mixed_5c = BlockA(256, 64)
        self.Mixed_5d = BlockA(288, 64)
        self.Mixed_6a = BlockB(288)
        self.Mixed_6b = BlockC(768, 128)
        self.Mixed_6c = BlockC(768, 160)
        self.Mixed_6d = BlockC(768, 160)
        self.Mixed_6e = BlockC(768, 192)
        self.Mixed_7a = BlockD(768)
        self.Mixed_7b = BlockE(1280, max_pool=False)
        self.Mixed_7c = BlockE(2048, max_pool=True)

    def forward(self, x):
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean(dim=(2, 3))


def _to_inception_input(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images -> 8-bit levels in [0, 255] (float), 3 channels, 299x299."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise UserError(f"Inception features need images [N, 1 or 3, H, W], got "
                        f"{tuple(images.shape)}; pass grayscale or RGB images")
    x = ((images.float() + 1) * 127.5).round().clamp(0, 255)
    x = x.expand(-1, 3, -1, -1)
    return F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)


class InceptionFeatures(nn.Module):
    """Images in [-1, 1] (any size, 1 or 3 channels) -> 2048-d FID Inception pool features."""

    def __init__(self, backbone: nn.Module, torchscript: bool):
        super().__init__()
        self.backbone, self.torchscript = backbone, torchscript

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = _to_inception_input(images)
        if self.torchscript:
            return self.backbone(x, return_features=True).reshape(len(x), FEATURE_DIM)
        return self.backbone(x / 127.5 - 1)


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zip files with a `code/` folder; `torch.save` files have none."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any("/code/" in name for name in z.namelist())


def _load_state_dict(path: Path) -> FIDInception:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for foreign or damaged files
        raise UserError(f"{path}: not a readable weights file ({type(e).__name__}); expected "
                        f"{FORMATS}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: not a state dict of tensors; expected {FORMATS}")
    state = {k: v for k, v in state.items()
             if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    net = FIDInception()
    expected = {k: v.shape for k, v in net.state_dict().items()
                if not k.endswith("num_batches_tracked")}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and state[k].shape != expected[k]]
    if missing or unexpected or wrong:
        raise UserError(f"{path}: weights do not fit the FID Inception-v3 (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]}, wrong shape {wrong[:3]}); expected "
                        f"{FORMATS}")
    net.load_state_dict(state, strict=False)
    return net


def load_inception(path: str | Path) -> InceptionFeatures:
    """The FID Inception feature network from a local file (see the module docstring)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"--inception-weights {path}: no such file; give the local path of "
                        f"{FORMATS} (initprobe never downloads weights)")
    if _is_torchscript(path):
        try:
            backbone = torch.jit.load(str(path), map_location="cpu")
        except RuntimeError as e:
            raise UserError(f"{path}: unreadable TorchScript file ({str(e).splitlines()[0]}); "
                            f"expected {FORMATS}") from None
        return InceptionFeatures(backbone, torchscript=True).eval()
    return InceptionFeatures(_load_state_dict(path), torchscript=False).eval()
