"""An EDM-style UNet (DDPM++ layout of EDM's SongUNet), written for initprobe.

Parameter names and shapes follow EDM's `SongUNet` so that official checkpoints map onto this
network by name: `map_layer0`, `enc.32x32_conv`, `enc.16x16_down`, `enc.16x16_block0.conv1`,
`dec.4x4_in0.qkv`, `dec.32x32_aux_conv`, ... The dotted module path of a layer *is* its canonical
layer id (see `initprobe.nets.layers`).

Initialization (the single place it is decided; re-init ablations restore exactly this):
- every Conv2d and Linear weight: Xavier-uniform, scaled by `init_weight`; every bias: zero;
- `init_weight = 1e-5` ("near-zero") for the last conv of each residual branch (`*.conv1`), the
  attention output projection (`*.proj`) and the output head (`dec.*_aux_conv`), so that each
  block starts close to its skip path and the network output starts close to zero;
- `init_weight = sqrt(0.2)` for attention `qkv`;
- `init_weight = 1` everywhere else;
- GroupNorm: weight one, bias zero.
These are EDM's choices for SongUNet. `initialize_weights` applies them to any subset of modules.
"""

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError

NEAR_ZERO = 1e-5
ATTN_QKV = math.sqrt(0.2)


@dataclass
class UNetConfig:
    """Architecture of the UNet. Every field is written into checkpoints and run configs."""

    img_resolution: int = 8
    in_channels: int = 1
    out_channels: int = 1
    model_channels: int = 16          # channels at the highest resolution
    channel_mult: list[int] = field(default_factory=lambda: [1, 2])
    channel_mult_emb: int = 4         # embedding width = model_channels * this
    channel_mult_noise: int = 1       # noise-embedding width = model_channels * this
    num_blocks: int = 1               # residual blocks per resolution (encoder; decoder has +1)
    attn_resolutions: list[int] = field(default_factory=lambda: [4])
    dropout: float = 0.0
    embedding_type: str = "positional"  # "positional" (DDPM++) or "fourier" (NCSN++)
    resample_filter: list[int] = field(default_factory=lambda: [1, 1])

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, dict] = {
    # Tests and the bundled 8x8 digits: seconds on a CPU.
    "tiny": dict(model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4]),
    # MNIST at 32x32 on a CPU (~110 images/s of training per core here; 32 channels is 3x slower).
    "small": dict(model_channels=16, channel_mult=[1, 2, 2], num_blocks=1, attn_resolutions=[8]),
    # EDM's CIFAR-10 DDPM++ network (~56M parameters), for GPUs.
    "cifar": dict(model_channels=128, channel_mult=[2, 2, 2], num_blocks=4, attn_resolutions=[16],
                  dropout=0.13),
}


def weight_init(shape, fan_in: int, fan_out: int, scale: float) -> torch.Tensor:
    bound = math.sqrt(6 / (fan_in + fan_out))
    return (torch.rand(*shape) * 2 - 1) * bound * scale


class Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 init_weight: float = 1.0):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.init_weight = init_weight
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        with torch.no_grad():
            self.weight.copy_(weight_init(self.weight.shape, self.in_features, self.out_features,
                                          self.init_weight))
            if self.bias is not None:
                self.bias.zero_()

    def forward(self, x):
        return F.linear(x, self.weight.to(x.dtype),
                        None if self.bias is None else self.bias.to(x.dtype))


class Conv2d(nn.Module):
    """Conv with optional 2x up/down-sampling by a fixed FIR filter applied before the conv.

    `kernel=0` means resampling only (no weights).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, up: bool = False,
                 down: bool = False, resample_filter=(1, 1), init_weight: float = 1.0):
        super().__init__()
        assert not (up and down)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.up, self.down, self.init_weight = up, down, init_weight
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel, kernel)) \
            if kernel else None
        self.bias = nn.Parameter(torch.empty(out_channels)) if kernel else None
        f = torch.as_tensor(resample_filter, dtype=torch.float32)
        f = f.ger(f).unsqueeze(0).unsqueeze(1) / f.sum().square()
        self.register_buffer("resample_filter", f if up or down else None)
        self.reset_parameters()

    def reset_parameters(self):
        if self.weight is None:
            return
        k = self.weight.shape[-1]
        with torch.no_grad():
            self.weight.copy_(weight_init(self.weight.shape, self.in_channels * k * k,
                                          self.out_channels * k * k, self.init_weight))
            self.bias.zero_()

    def forward(self, x):
        f = self.resample_filter
        if f is not None:
            f = f.to(x.dtype)
            pad = (f.shape[-1] - 1) // 2
            ch = x.shape[1]
            if self.up:
                x = F.conv_transpose2d(x, f.mul(4).tile([ch, 1, 1, 1]), groups=ch, stride=2,
                                       padding=pad)
            else:
                x = F.conv2d(x, f.tile([ch, 1, 1, 1]), groups=ch, stride=2, padding=pad)
        if self.weight is not None:
            w = self.weight.to(x.dtype)
            x = F.conv2d(x, w, self.bias.to(x.dtype), padding=w.shape[-1] // 2)
        return x


class GroupNorm(nn.Module):
    def __init__(self, num_channels: int, num_groups: int = 32, min_channels_per_group: int = 4,
                 eps: float = 1e-6):
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def reset_parameters(self):
        with torch.no_grad():
            self.weight.fill_(1)
            self.bias.zero_()

    def forward(self, x):
        return F.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype),
                            self.eps)


class UNetBlock(nn.Module):
    """Residual block: norm0, conv0, affine (noise embedding), norm1, conv1, skip; optional
    single-head self-attention: norm2, qkv, proj. Output scaled by sqrt(1/2) after each sum."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, up=False,
                 down=False, attention=False, dropout=0.0, resample_filter=(1, 1)):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.dropout = dropout
        self.skip_scale = math.sqrt(0.5)
        self.norm0 = GroupNorm(in_channels)
        self.conv0 = Conv2d(in_channels, out_channels, 3, up=up, down=down,
                            resample_filter=resample_filter)
        self.affine = Linear(emb_channels, out_channels)
        self.norm1 = GroupNorm(out_channels)
        self.conv1 = Conv2d(out_channels, out_channels, 3, init_weight=NEAR_ZERO)
        self.skip = None
        if out_channels != in_channels or up or down:
            self.skip = Conv2d(in_channels, out_channels, 1, up=up, down=down,
                               resample_filter=resample_filter)
        self.attention = attention
        if attention:
            self.norm2 = GroupNorm(out_channels)
            self.qkv = Conv2d(out_channels, out_channels * 3, 1, init_weight=ATTN_QKV)
            self.proj = Conv2d(out_channels, out_channels, 1, init_weight=NEAR_ZERO)

    def forward(self, x, emb):
        orig = x
        x = self.conv0(F.silu(self.norm0(x)))
        x = x + self.affine(emb).unsqueeze(2).unsqueeze(3).to(x.dtype)
        x = F.silu(self.norm1(x))
        x = self.conv1(F.dropout(x, p=self.dropout, training=self.training))
        x = (x + (self.skip(orig) if self.skip is not None else orig)) * self.skip_scale
        if self.attention:
            n, c, h, w = x.shape
            q, k, v = self.qkv(self.norm2(x)).reshape(n, c, 3, h * w).unbind(2)
            attn = torch.softmax(torch.einsum("ncq,nck->nqk", q, k) / math.sqrt(c), dim=2)
            a = torch.einsum("nqk,nck->ncq", attn, v).reshape(n, c, h, w)
            x = (self.proj(a) + x) * self.skip_scale
        return x


class PositionalEmbedding(nn.Module):
    def __init__(self, num_channels: int, max_positions: int = 10000):
        super().__init__()
        self.num_channels, self.max_positions = num_channels, max_positions

    def forward(self, x):
        half = self.num_channels // 2
        freqs = torch.arange(half, dtype=torch.float32, device=x.device) / (half - 1)
        freqs = (1 / self.max_positions) ** freqs
        x = x.float().ger(freqs)
        return torch.cat([x.cos(), x.sin()], dim=1)


class FourierEmbedding(nn.Module):
    def __init__(self, num_channels: int, scale: float = 16):
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x):
        x = x.float().ger((2 * math.pi * self.freqs).to(x.device))
        return torch.cat([x.cos(), x.sin()], dim=1)


class UNet(nn.Module):
    """F(x, c_noise): the raw network that preconditioning wraps (`initprobe.nets.precond`)."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        emb_ch = cfg.model_channels * cfg.channel_mult_emb
        noise_ch = cfg.model_channels * cfg.channel_mult_noise
        if cfg.img_resolution % (2 ** (len(cfg.channel_mult) - 1)):
            raise UserError(f"image side {cfg.img_resolution} is not divisible by "
                            f"2^{len(cfg.channel_mult) - 1} ({len(cfg.channel_mult)} "
                            f"resolutions); pick a --size that is")
        blk = dict(emb_channels=emb_ch, dropout=cfg.dropout, resample_filter=cfg.resample_filter)
        if cfg.embedding_type == "positional":
            self.map_noise = PositionalEmbedding(noise_ch)
        elif cfg.embedding_type == "fourier":
            self.map_noise = FourierEmbedding(noise_ch)
        else:
            raise UserError(f"unknown embedding_type {cfg.embedding_type!r}; use positional or "
                            f"fourier")
        self.map_layer0 = Linear(noise_ch, emb_ch)
        self.map_layer1 = Linear(emb_ch, emb_ch)

        self.enc = nn.ModuleDict()
        cout = cfg.in_channels
        for level, mult in enumerate(cfg.channel_mult):
            res = cfg.img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = Conv2d(cout, cfg.model_channels, 3)
                cout = cfg.model_channels
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **blk)
            for idx in range(cfg.num_blocks):
                cin, cout = cout, cfg.model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(
                    cin, cout, attention=res in cfg.attn_resolutions, **blk)
        skips = [b.out_channels for b in self.enc.values()]

        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            res = cfg.img_resolution >> level
            if level == len(cfg.channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **blk)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **blk)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **blk)
            for idx in range(cfg.num_blocks + 1):
                cin, cout = cout + skips.pop(), cfg.model_channels * mult
                attn = idx == cfg.num_blocks and res in cfg.attn_resolutions
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=attn, **blk)
            if level == 0:
                self.dec[f"{res}x{res}_aux_norm"] = GroupNorm(cout)
                self.dec[f"{res}x{res}_aux_conv"] = Conv2d(cout, cfg.out_channels, 3,
                                                           init_weight=NEAR_ZERO)

    def forward(self, x, noise_labels):
        emb = self.map_noise(noise_labels.reshape(-1).expand(x.shape[0]))
        emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(*emb.shape)  # [sin, cos]
        emb = F.silu(self.map_layer0(emb.to(x.dtype)))
        emb = F.silu(self.map_layer1(emb))
        skips = []
        for block in self.enc.values():
            x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
            skips.append(x)
        out = None
        for name, block in self.dec.items():
            if name.endswith("aux_norm"):
                out = block(x)
            elif name.endswith("aux_conv"):
                out = block(F.silu(out))
            else:
                if x.shape[1] != block.in_channels:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = block(x, emb)
        return out


def initialize_weights(modules) -> list[str]:
    """Restore the documented default init (module docstring) on every Linear/Conv2d/GroupNorm
    in `modules` (an iterable of modules); returns their class names for the record."""
    done = []
    for m in modules:
        if isinstance(m, (Linear, Conv2d, GroupNorm)):
            m.reset_parameters()
            done.append(type(m).__name__)
    return done
