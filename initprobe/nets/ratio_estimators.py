"""Noise-conditional log-ratio estimators: d(x_t, sigma) -> one logit per image.

Both networks take a noised image x_t and its noise level sigma, apply EDM input
preconditioning (the network sees c_in x_t and the noise label c_noise(sigma)), and end in the
same head: GroupNorm - SiLU - global average pool - Linear -> scalar. The head's Linear starts at
zero, so every estimator starts at d = 0 (density ratio 1).

- `EncoderRatio` (objective `ratio`): the teacher's UNet cut after its bottleneck. It keeps the
  noise embedding (`map_noise`, `map_layer0/1`), every encoder block (`enc.*`) and the two
  bottleneck blocks (`dec.RxR_in0`, `dec.RxR_in1`) under the teacher's own parameter names, so
  layer ids stay canonical. `from_denoiser` copies these weights from the teacher (decoder and
  output head are dropped) and uses the teacher's preconditioning (edm, edm-eps, vp, ve), so the
  copied noise embedding receives the labels it was trained on.
- `LiteRatio` (objective `diffratio`): a lightweight network of the same family with random
  (unet.py default) init: a 3x3 stem, one residual block per resolution (down-sampling between
  resolutions), no attention, the noise-embedding MLP, and the head; EDM preconditioning. With
  a quarter of the teacher's base width it has a few percent of the teacher's parameters.

Class-conditional, `d(x_t, sigma, y)`: the one-hot label enters the embedding as in the UNet
(`map_label`, added to the noise features): `EncoderRatio` of a conditional teacher copies its
`map_label`; `LiteRatio(label_dim=K)` adds a new one.

`spec()` is a JSON-able description of the architecture; `build_estimator(spec)` rebuilds it
(weights are stored separately, e.g. in the objective's state).
"""

import torch
import torch.nn.functional as F
from torch import nn

from .precond import SIGMA_DATA, coefficients, levels
from .unet import Conv2d, GroupNorm, Linear, PositionalEmbedding, UNet, UNetBlock, UNetConfig


class RatioHead(nn.Module):
    """GroupNorm - SiLU - global average pool - Linear (zero-initialized) -> [B]."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = GroupNorm(channels)
        self.out = Linear(channels, 1, init_weight=0.0)

    def forward(self, x):
        return self.out(F.silu(self.norm(x)).mean(dim=(2, 3))).squeeze(1)


def _embedding(net: nn.Module, c_noise: torch.Tensor, n: int, dtype,
               class_labels: torch.Tensor | None = None) -> torch.Tensor:
    """The UNet's noise (and class) embedding (positional/Fourier features then a 2-layer MLP)
    for any module holding `map_noise`, `map_layer0`, `map_layer1` and optionally `map_label`
    (same recipe as `UNet.forward`; no labels: all-zero labels)."""
    emb = net.map_noise(c_noise.reshape(-1).expand(n))
    emb = emb.reshape(n, 2, -1).flip(1).reshape(n, -1)
    if hasattr(net, "map_label"):
        dim = net.map_label.in_features
        y = torch.zeros(1, dim, device=emb.device) if class_labels is None else class_labels
        emb = emb + net.map_label(y.to(emb.dtype) * dim ** 0.5)
    emb = F.silu(net.map_layer0(emb.to(dtype)))
    return F.silu(net.map_layer1(emb))


def _run(blocks, x, emb):
    for block in blocks:
        x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
    return x


class RatioEstimator(nn.Module):
    """Base: preconditioning and the call convention `d = net(x_t, sigma)`."""

    precond = "edm"
    sigma_data = SIGMA_DATA

    def forward(self, x: torch.Tensor, sigma, class_labels=None) -> torch.Tensor:
        _, _, c_in, c_noise = coefficients(levels(sigma, x), self.precond, self.sigma_data)
        emb = _embedding(self, c_noise.flatten(), x.shape[0], x.dtype, class_labels)
        return self.head(self.features(c_in * x, emb))

    def features(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def spec(self) -> dict:
        raise NotImplementedError


class EncoderRatio(RatioEstimator):
    def __init__(self, unet: dict, precond: str = "edm", sigma_data: float = SIGMA_DATA):
        super().__init__()
        full = UNet(UNetConfig(**unet))
        self.unet_config, self.precond, self.sigma_data = dict(unet), precond, sigma_data
        self.map_noise, self.map_layer0, self.map_layer1 = (full.map_noise, full.map_layer0,
                                                             full.map_layer1)
        if full.cfg.label_dim:
            self.map_label = full.map_label
        self.enc = full.enc
        self.dec = nn.ModuleDict({k: v for k, v in full.dec.items() if "_in" in k})
        self.head = RatioHead(list(self.dec.values())[-1].out_channels)

    @classmethod
    def from_denoiser(cls, teacher: nn.Module) -> "EncoderRatio":
        """An estimator whose embedding, encoder and bottleneck are copies of the teacher's."""
        net = cls(teacher.cfg.to_dict(), teacher.precond, teacher.sigma_data)
        mine = net.state_dict()
        copied = {k: v.detach().clone() for k, v in teacher.model.state_dict().items()
                  if k in mine}
        missing, _ = net.load_state_dict(copied, strict=False)
        assert all(k.startswith("head.") for k in missing), missing
        return net.to(next(teacher.parameters()).device)

    def features(self, x, emb):
        return _run(self.dec.values(), _run(self.enc.values(), x, emb), emb)

    def spec(self) -> dict:
        return {"kind": "encoder", "unet": self.unet_config, "precond": self.precond,
                "sigma_data": self.sigma_data}


class LiteRatio(RatioEstimator):
    def __init__(self, in_channels: int, img_resolution: int, channels: int = 8,
                 channel_mult: list[int] | tuple[int, ...] = (1, 2), label_dim: int = 0):
        super().__init__()
        if img_resolution % 2 ** (len(channel_mult) - 1):
            raise ValueError(f"img_resolution {img_resolution} is not divisible by "
                             f"2^{len(channel_mult) - 1}")
        self.args = dict(in_channels=in_channels, img_resolution=img_resolution,
                         channels=channels, channel_mult=list(channel_mult))
        emb_ch = 4 * channels
        self.map_noise = PositionalEmbedding(channels)
        if label_dim:
            self.args["label_dim"] = label_dim
            self.map_label = Linear(label_dim, channels)
        self.map_layer0 = Linear(channels, emb_ch)
        self.map_layer1 = Linear(emb_ch, emb_ch)
        self.enc = nn.ModuleDict()
        self.enc[f"{img_resolution}x{img_resolution}_conv"] = Conv2d(in_channels, channels, 3)
        cout = channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            cin, cout = cout, channels * mult
            self.enc[f"{res}x{res}_block0"] = UNetBlock(cin, cout, emb_ch, down=level > 0)
        self.head = RatioHead(cout)

    def features(self, x, emb):
        return _run(self.enc.values(), x, emb)

    def spec(self) -> dict:
        return {"kind": "lite", **self.args}


def build_estimator(spec: dict) -> RatioEstimator:
    """A freshly initialized estimator with the architecture described by `spec`."""
    args = {k: v for k, v in spec.items() if k != "kind"}
    if spec.get("kind") == "encoder":
        return EncoderRatio(**args)
    if spec.get("kind") == "lite":
        return LiteRatio(**args)
    raise ValueError(f"unknown ratio estimator kind {spec.get('kind')!r}")


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
