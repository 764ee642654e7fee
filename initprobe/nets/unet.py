"""An EDM-style UNet (EDM's SongUNet: DDPM++ and NCSN++ layouts), written for initprobe.

Parameter names and shapes follow EDM's `SongUNet` so that official checkpoints map onto this
network by name: `map_layer0`, `enc.32x32_conv`, `enc.16x16_down`, `enc.16x16_block0.conv1`,
`dec.4x4_in0.qkv`, `dec.32x32_aux_conv`, ... The dotted module path of a layer *is* its canonical
layer id (see `initprobe.nets.layers`).

Layouts (`UNetConfig`): DDPM++ is encoder and decoder 'standard', positional embedding; NCSN++
(EDM's `-ve` networks): Fourier embedding, `channel_mult_noise` 2, [1,3,3,1] filter, encoder
'residual' (input pyramid `enc.RxR_aux_residual`: a 3x3 conv fused with down-sampling, averaged
in) or 'skip' (`enc.RxR_aux_down` + 1x1 `enc.RxR_aux_skip`, added); decoder 'skip' sums a head
(`dec.RxR_aux_norm`, `_aux_conv`) per resolution, up-sampled (`dec.RxR_aux_up`). `label_dim > 0`
adds the class embedding `map_label` (one-hot labels times sqrt(label_dim), added to the noise
embedding; in training a sample loses its label with probability `label_dropout`).
`model_type` 'DhariwalUNet' is ADM (`initprobe.nets.adm`).

Initialization (the single place it is decided; re-init ablations restore exactly this):
- every Conv2d and Linear weight: Xavier-uniform, scaled by `init_weight`; every bias: zero;
- `init_weight = 1e-5` ("near-zero") for the last conv of each residual branch (`*.conv1`), the
  attention output projection (`*.proj`) and the output head (`dec.*_aux_conv`), so that each
  block starts close to its skip path and the network output starts close to zero;
- `init_weight = sqrt(0.2)` for attention `qkv`;
- `init_weight = 1` everywhere else;
- GroupNorm: weight one, bias zero; `map_label`: Xavier-uniform like the other Linear layers.
These are EDM's choices for SongUNet. `initialize_weights` applies them to any subset of modules;
each layer keeps its own init recipe (ADM's differ, see `initprobe.nets.adm`).
"""

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError

NEAR_ZERO = 1e-5
ATTN_QKV = math.sqrt(0.2)
MODEL_TYPES = ("SongUNet", "DhariwalUNet")
EMBEDDING_TYPES = ("positional", "fourier")
ENCODER_TYPES = ("standard", "skip", "residual")
DECODER_TYPES = ("standard", "skip")
LATER_FIELDS = ("encoder_type", "decoder_type", "label_dim", "label_dropout", "model_type")


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
    encoder_type: str = "standard"    # "standard" (DDPM++), "residual" or "skip" (NCSN++)
    decoder_type: str = "standard"    # "standard" or "skip"
    label_dim: int = 0                # classes; 0 = unconditional
    label_dropout: float = 0.0        # training-time probability of dropping a sample's label
    model_type: str = "SongUNet"      # or "DhariwalUNet" (ADM, `initprobe.nets.adm`)

    def to_dict(self) -> dict:
        """Every field, except those added for NCSN++, ADM and labels while at their defaults:
        a DDPM++ unconditional config reads exactly as before (run directories compare theirs
        on resume)."""
        return {k: v for k, v in asdict(self).items()
                if k not in LATER_FIELDS or v != UNetConfig.__dataclass_fields__[k].default}


PRESETS: dict[str, dict] = {
    # Tests and the bundled 8x8 digits: seconds on a CPU.
    "tiny": dict(model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4]),
    # MNIST at 32x32 on a CPU (~110 images/s of training per core here; 32 channels is 3x slower).
    "small": dict(model_channels=16, channel_mult=[1, 2, 2], num_blocks=1, attn_resolutions=[8]),
    # EDM's CIFAR-10 DDPM++ network (~56M parameters), for GPUs.
    "cifar": dict(model_channels=128, channel_mult=[2, 2, 2], num_blocks=4, attn_resolutions=[16],
                  dropout=0.13),
}


def weight_init(shape, fan_in: int, fan_out: int, scale: float,
                mode: str = "xavier_uniform") -> torch.Tensor:
    """EDM's init modes: uniform in +-sqrt(6/(fan_in+fan_out)) (xavier) or +-sqrt(3/fan_in)
    (kaiming), or normal with std sqrt(1/fan_in) (kaiming_normal); times `scale`."""
    if mode == "kaiming_normal":
        return torch.randn(*shape) * math.sqrt(1 / fan_in) * scale
    bound = math.sqrt(6 / (fan_in + fan_out) if mode == "xavier_uniform" else 3 / fan_in)
    return (torch.rand(*shape) * 2 - 1) * bound * scale


def _init_bias(bias: torch.Tensor, fans: tuple[int, int], scale: float, mode: str):
    """Zero (drawing no random numbers, so seeded inits stay as they were) unless `scale`."""
    if scale:
        bias.copy_(weight_init(bias.shape, *fans, scale, mode))
    else:
        bias.zero_()


class Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 init_weight: float = 1.0, init_mode: str = "xavier_uniform",
                 init_bias: float = 0.0):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.init_weight, self.init_mode, self.init_bias = init_weight, init_mode, init_bias
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        with torch.no_grad():
            fans = (self.in_features, self.out_features)
            self.weight.copy_(weight_init(self.weight.shape, *fans, self.init_weight,
                                          self.init_mode))
            if self.bias is not None:
                _init_bias(self.bias, fans, self.init_bias, self.init_mode)

    def forward(self, x):
        return F.linear(x, self.weight.to(x.dtype),
                        None if self.bias is None else self.bias.to(x.dtype))


class Conv2d(nn.Module):
    """Conv with optional 2x up/down-sampling by a fixed FIR filter applied before the conv
    (`fused_down`: after the conv, whose padding grows by the filter's; NCSN++'s residual input
    pyramid). `kernel=0` means resampling only (no weights)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, up: bool = False,
                 down: bool = False, resample_filter=(1, 1), init_weight: float = 1.0,
                 init_mode: str = "xavier_uniform", init_bias: float = 0.0,
                 fused_down: bool = False):
        super().__init__()
        assert not (up and down) and (not fused_down or (down and kernel))
        self.in_channels, self.out_channels = in_channels, out_channels
        self.up, self.down, self.fused_down = up, down, fused_down
        self.init_weight, self.init_mode, self.init_bias = init_weight, init_mode, init_bias
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
        fans = (self.in_channels * k * k, self.out_channels * k * k)
        with torch.no_grad():
            self.weight.copy_(weight_init(self.weight.shape, *fans, self.init_weight,
                                          self.init_mode))
            _init_bias(self.bias, fans, self.init_bias, self.init_mode)

    def forward(self, x):
        f = self.resample_filter
        if self.fused_down:
            w, f = self.weight.to(x.dtype), f.to(x.dtype)
            x = F.conv2d(x, w, padding=w.shape[-1] // 2 + (f.shape[-1] - 1) // 2)
            x = F.conv2d(x, f.tile([self.out_channels, 1, 1, 1]), groups=self.out_channels,
                         stride=2)
            return x + self.bias.to(x.dtype).reshape(1, -1, 1, 1)
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
    """cos/sin features at frequencies (1/max_positions)^(i/(half-1)) (`endpoint`, SongUNet's)
    or ^(i/half) (ADM's), i = 0..half-1."""

    def __init__(self, num_channels: int, max_positions: int = 10000, endpoint: bool = True):
        super().__init__()
        self.num_channels, self.max_positions = num_channels, max_positions
        self.endpoint = endpoint

    def forward(self, x):
        half = self.num_channels // 2
        freqs = torch.arange(half, dtype=torch.float32, device=x.device) / (half - self.endpoint)
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
    """F(x, c_noise, class_labels): the raw network that preconditioning wraps
    (`initprobe.nets.precond`)."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        emb_ch = cfg.model_channels * cfg.channel_mult_emb
        noise_ch = cfg.model_channels * cfg.channel_mult_noise
        checks = {"model_type": (cfg.model_type, ("SongUNet",)),
                  "embedding_type": (cfg.embedding_type, EMBEDDING_TYPES),
                  "encoder_type": (cfg.encoder_type, ENCODER_TYPES),
                  "decoder_type": (cfg.decoder_type, DECODER_TYPES)}
        for key, (value, allowed) in checks.items():
            if value not in allowed:
                raise UserError(f"unknown {key} {value!r}; choose one of {allowed}")
        if cfg.img_resolution % (2 ** (len(cfg.channel_mult) - 1)):
            raise UserError(f"image side {cfg.img_resolution} is not divisible by "
                            f"2^{len(cfg.channel_mult) - 1} ({len(cfg.channel_mult)} "
                            f"resolutions); pick a --size that is")
        blk = dict(emb_channels=emb_ch, dropout=cfg.dropout, resample_filter=cfg.resample_filter)
        self.map_noise = (PositionalEmbedding(noise_ch) if cfg.embedding_type == "positional"
                          else FourierEmbedding(noise_ch))
        if cfg.label_dim:
            self.map_label = Linear(cfg.label_dim, noise_ch)
        self.map_layer0 = Linear(noise_ch, emb_ch)
        self.map_layer1 = Linear(emb_ch, emb_ch)

        self.enc = nn.ModuleDict()
        cout = caux = cfg.in_channels
        for level, mult in enumerate(cfg.channel_mult):
            res = cfg.img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = Conv2d(cout, cfg.model_channels, 3)
                cout = cfg.model_channels
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **blk)
                if cfg.encoder_type == "skip":
                    self.enc[f"{res}x{res}_aux_down"] = Conv2d(
                        caux, caux, 0, down=True, resample_filter=cfg.resample_filter)
                    self.enc[f"{res}x{res}_aux_skip"] = Conv2d(caux, cout, 1)
                elif cfg.encoder_type == "residual":
                    self.enc[f"{res}x{res}_aux_residual"] = Conv2d(
                        caux, cout, 3, down=True, resample_filter=cfg.resample_filter,
                        fused_down=True)
                    caux = cout
            for idx in range(cfg.num_blocks):
                cin, cout = cout, cfg.model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(
                    cin, cout, attention=res in cfg.attn_resolutions, **blk)
        skips = [b.out_channels for name, b in self.enc.items() if "_aux_" not in name]

        self.dec = nn.ModuleDict()
        top = len(cfg.channel_mult) - 1
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            res = cfg.img_resolution >> level
            if level == top:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **blk)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **blk)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **blk)
            for idx in range(cfg.num_blocks + 1):
                cin, cout = cout + skips.pop(), cfg.model_channels * mult
                attn = idx == cfg.num_blocks and res in cfg.attn_resolutions
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=attn, **blk)
            if cfg.decoder_type == "skip" or level == 0:
                if cfg.decoder_type == "skip" and level < top:
                    self.dec[f"{res}x{res}_aux_up"] = Conv2d(
                        cfg.out_channels, cfg.out_channels, 0, up=True,
                        resample_filter=cfg.resample_filter)
                self.dec[f"{res}x{res}_aux_norm"] = GroupNorm(cout)
                self.dec[f"{res}x{res}_aux_conv"] = Conv2d(cout, cfg.out_channels, 3,
                                                           init_weight=NEAR_ZERO)

    def forward(self, x, noise_labels, class_labels=None):
        emb = self.map_noise(noise_labels.reshape(-1).expand(x.shape[0]))
        emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(*emb.shape)  # [sin, cos]
        if self.cfg.label_dim:
            emb = emb + self.map_label(drop_labels(self, class_labels, x.shape[0])
                                       * math.sqrt(self.cfg.label_dim))
        emb = F.silu(self.map_layer0(emb.to(x.dtype)))
        emb = F.silu(self.map_layer1(emb))
        skips, aux = [], x
        for name, block in self.enc.items():
            if name.endswith("_aux_down"):
                aux = block(aux)
            elif name.endswith("_aux_skip"):
                x = skips[-1] = x + block(aux)
            elif name.endswith("_aux_residual"):
                x = skips[-1] = aux = (x + block(aux)) / math.sqrt(2)
            else:
                x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
                skips.append(x)
        out = head = None
        for name, block in self.dec.items():
            if name.endswith("_aux_up"):
                out = block(out)
            elif name.endswith("_aux_norm"):
                head = block(x)
            elif name.endswith("_aux_conv"):
                head = block(F.silu(head))
                out = head if out is None else head + out
            else:
                if x.shape[1] != block.in_channels:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = block(x, emb)
        return out


def drop_labels(net: nn.Module, class_labels: torch.Tensor, n: int) -> torch.Tensor:
    """The one-hot labels a class embedding sees: in training, each of the `n` samples loses its
    label (all zeros) with probability `net.cfg.label_dropout` (classifier-free guidance)."""
    p = net.cfg.label_dropout
    if not (net.training and p):
        return class_labels
    keep = torch.rand([n, 1], device=class_labels.device) >= p
    return class_labels * keep.to(class_labels.dtype)


def initialize_weights(modules) -> list[str]:
    """Restore the documented default init (module docstring) on every Linear/Conv2d/GroupNorm
    in `modules` (an iterable of modules); returns their class names for the record."""
    done = []
    for m in modules:
        if isinstance(m, (Linear, Conv2d, GroupNorm)):
            m.reset_parameters()
            done.append(type(m).__name__)
    return done
