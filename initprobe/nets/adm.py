"""ADM (Dhariwal & Nichol 2021) as EDM's `DhariwalUNet` lays it out, written for initprobe.

The network behind EDM's ImageNet-64 checkpoint (`edm-imagenet-64x64-cond-adm.pkl`, GDD's
headline benchmark). Parameter names and shapes are EDM's, so a pickle maps onto it by name:
`map_layer0`, `map_label`, `enc.64x64_conv`, `enc.32x32_down`, `enc.32x32_block0.conv0`,
`dec.8x8_in0.qkv`, `out_norm`, `out_conv`. It differs from SongUNet (`initprobe.nets.unet`) in:
- the noise embedding: positional features with frequencies (1/10000)^(i/half) (no endpoint, no
  sin/cos swap), `map_layer0` - SiLU - `map_layer1`, then the class embedding `map_label` (a
  bias-free Linear on the one-hot labels) is added before the final SiLU;
- residual blocks (`ADMBlock`): the embedding gives a per-channel scale and shift
  (`affine` has 2x out_channels outputs: x = SiLU(shift + norm1(x) (1 + scale))), the residual sum
  is not rescaled, GroupNorm eps is 1e-5, a block that only resamples has a parameter-free skip
  (plain resampling) and a 1x1 `skip` conv only where the width changes;
- attention in every block at the listed resolutions, on both sides, with one head per 64
  channels (none where a block has fewer than 64);
- the head is `out_norm` - SiLU - `out_conv`, outside the decoder.

Canonical layer ids (`initprobe.nets.layers`) are the module paths, except that the head joins
the decoder's vocabulary: `out_norm` -> `dec.RxR_aux_norm`, `out_conv` -> `dec.RxR_aux_conv`
(R = img_resolution), as in SongUNet. So selectors, probes, CKA and the `gdd` preset (conv0,
conv1 and proj of every block) work unchanged.

Initialization (EDM's for ADM; `initialize_weights` restores it): Linear and Conv2d weights and
biases uniform in +-1/sqrt(fan_in) (kaiming-uniform scaled by sqrt(1/3)); exactly zero for
`*.conv1`, `*.proj` and `out_conv`; `map_label`: normal with std 1 (kaiming-normal scaled by
sqrt(label_dim)), no bias; GroupNorm weight one, bias zero.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from .unet import Conv2d, GroupNorm, Linear, PositionalEmbedding, UNetConfig, drop_labels

EPS = 1e-5
CHANNELS_PER_HEAD = 64
INIT = dict(init_mode="kaiming_uniform", init_weight=math.sqrt(1 / 3), init_bias=math.sqrt(1 / 3))
INIT_ZERO = dict(init_mode="kaiming_uniform", init_weight=0.0, init_bias=0.0)
# UNetConfig fields ADM has no use for; they must keep these values.
UNUSED = {"embedding_type": "positional", "channel_mult_noise": 1, "encoder_type": "standard",
          "decoder_type": "standard", "resample_filter": [1, 1]}


class ADMBlock(nn.Module):
    """Residual block with scale-shift embedding and multi-head self-attention."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, up=False,
                 down=False, attention=False, dropout=0.0):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.dropout = dropout
        self.num_heads = out_channels // CHANNELS_PER_HEAD if attention else 0
        self.norm0 = GroupNorm(in_channels, eps=EPS)
        self.conv0 = Conv2d(in_channels, out_channels, 3, up=up, down=down, **INIT)
        self.affine = Linear(emb_channels, 2 * out_channels, **INIT)
        self.norm1 = GroupNorm(out_channels, eps=EPS)
        self.conv1 = Conv2d(out_channels, out_channels, 3, **INIT_ZERO)
        self.skip = None
        if out_channels != in_channels or up or down:
            kernel = 1 if out_channels != in_channels else 0
            self.skip = Conv2d(in_channels, out_channels, kernel, up=up, down=down, **INIT)
        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=EPS)
            self.qkv = Conv2d(out_channels, out_channels * 3, 1, **INIT)
            self.proj = Conv2d(out_channels, out_channels, 1, **INIT_ZERO)

    def forward(self, x, emb):
        orig = x
        x = self.conv0(F.silu(self.norm0(x)))
        scale, shift = self.affine(emb).unsqueeze(2).unsqueeze(3).to(x.dtype).chunk(2, dim=1)
        x = F.silu(torch.addcmul(shift, self.norm1(x), scale + 1))
        x = self.conv1(F.dropout(x, p=self.dropout, training=self.training))
        x = x + (self.skip(orig) if self.skip is not None else orig)
        if self.num_heads:
            n, c, h, w = x.shape
            q, k, v = self.qkv(self.norm2(x)).reshape(n * self.num_heads, c // self.num_heads,
                                                      3, h * w).unbind(2)
            scores = torch.einsum("ncq,nck->nqk", q.float(), (k / math.sqrt(k.shape[1])).float())
            attn = scores.softmax(dim=2).to(q.dtype)
            a = torch.einsum("nqk,nck->ncq", attn, v).reshape(n, c, h, w)
            x = self.proj(a) + x
        return x


class DhariwalUNet(nn.Module):
    """F(x, c_noise, class_labels) of ADM; `cfg.model_type` is 'DhariwalUNet'."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.model_type != "DhariwalUNet":
            raise ValueError(f"model_type {cfg.model_type!r} is not DhariwalUNet")
        for key, value in UNUSED.items():
            if getattr(cfg, key) != value:
                raise ValueError(f"DhariwalUNet has no {key} option (must stay {value!r})")
        if cfg.img_resolution % (2 ** (len(cfg.channel_mult) - 1)):
            raise ValueError(f"img_resolution {cfg.img_resolution} is not divisible by "
                             f"2^{len(cfg.channel_mult) - 1}")
        mc, emb_ch = cfg.model_channels, cfg.model_channels * cfg.channel_mult_emb
        blk = dict(emb_channels=emb_ch, dropout=cfg.dropout)
        self.map_noise = PositionalEmbedding(mc, endpoint=False)
        self.map_layer0 = Linear(mc, emb_ch, **INIT)
        self.map_layer1 = Linear(emb_ch, emb_ch, **INIT)
        if cfg.label_dim:
            self.map_label = Linear(cfg.label_dim, emb_ch, bias=False, init_mode="kaiming_normal",
                                    init_weight=math.sqrt(cfg.label_dim))

        self.enc = nn.ModuleDict()
        cout = cfg.in_channels
        for level, mult in enumerate(cfg.channel_mult):
            res = cfg.img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = Conv2d(cout, mc * mult, 3, **INIT)
                cout = mc * mult
            else:
                self.enc[f"{res}x{res}_down"] = ADMBlock(cout, cout, down=True, **blk)
            for idx in range(cfg.num_blocks):
                cin, cout = cout, mc * mult
                self.enc[f"{res}x{res}_block{idx}"] = ADMBlock(
                    cin, cout, attention=res in cfg.attn_resolutions, **blk)
        skips = [b.out_channels for b in self.enc.values()]

        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            res = cfg.img_resolution >> level
            if level == len(cfg.channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = ADMBlock(cout, cout, attention=True, **blk)
                self.dec[f"{res}x{res}_in1"] = ADMBlock(cout, cout, **blk)
            else:
                self.dec[f"{res}x{res}_up"] = ADMBlock(cout, cout, up=True, **blk)
            for idx in range(cfg.num_blocks + 1):
                cin, cout = cout + skips.pop(), mc * mult
                self.dec[f"{res}x{res}_block{idx}"] = ADMBlock(
                    cin, cout, attention=res in cfg.attn_resolutions, **blk)
        self.out_norm = GroupNorm(cout, eps=EPS)
        self.out_conv = Conv2d(cout, cfg.out_channels, 3, **INIT_ZERO)

    @property
    def lowest_resolution(self) -> int:
        return self.cfg.img_resolution >> (len(self.cfg.channel_mult) - 1)

    def _head_ids(self) -> dict[str, str]:
        r = self.cfg.img_resolution
        return {"out_norm": f"dec.{r}x{r}_aux_norm", "out_conv": f"dec.{r}x{r}_aux_conv"}

    def canonical_layers(self) -> dict[str, nn.Module]:
        """Layer id -> parameter-owning module, in network order."""
        ids = self._head_ids()
        return {ids.get(name, name): m for name, m in self.named_modules()
                if isinstance(m, (Conv2d, Linear, GroupNorm)) and any(True for _ in m.parameters())}

    def canonical_blocks(self) -> dict[str, nn.Module]:
        """Block id -> module whose output is the block's output (the head conv for the head)."""
        blocks = {f"{side}.{name}": m for side in ("enc", "dec")
                  for name, m in getattr(self, side).items()}
        blocks[self._head_ids()["out_conv"]] = self.out_conv
        return blocks

    def forward(self, x, noise_labels, class_labels=None):
        emb = self.map_noise(noise_labels.reshape(-1).expand(x.shape[0]))
        emb = F.silu(self.map_layer0(emb.to(x.dtype)))
        emb = self.map_layer1(emb)
        if self.cfg.label_dim:
            emb = emb + self.map_label(drop_labels(self, class_labels, x.shape[0]))
        emb = F.silu(emb)
        skips = []
        for block in self.enc.values():
            x = block(x, emb) if isinstance(block, ADMBlock) else block(x)
            skips.append(x)
        for block in self.dec.values():
            if x.shape[1] != block.in_channels:
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, emb)
        return self.out_conv(F.silu(self.out_norm(x)))
