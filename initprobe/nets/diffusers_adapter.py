"""A diffusers `UNet2DModel` folder as a teacher: a denoiser D(x; sigma) with initprobe layer ids.

Needs the optional extra: `pip install initprobe[diffusers]`. A folder is `config.json`
(`_class_name: UNet2DModel`) plus `diffusion_pytorch_model.safetensors` (pickled `.bin` weights
are not loaded). The noise schedule comes from `scheduler_config.json` in the folder, or from
`../scheduler/scheduler_config.json` when the folder is a pipeline's `unet/`; it must be a
discrete VP (beta) schedule. Without one the model is ASSUMED to be DDPM's: epsilon-prediction,
1000 steps, linear betas from 1e-4 to 0.02 (diffusers' DDPMScheduler defaults).

Sigma <-> timestep (EDM's x = x0 + sigma n versus DDPM's x_t = sqrt(abar_t) x0 + sqrt(1-abar_t) n):
  sigma_t = sqrt((1 - abar_t) / abar_t), x_t = x / sqrt(1 + sigma^2),
  t(sigma) = piecewise-linear interpolation of t against ln sigma_t over t = 0..T-1, clamped to
  [0, T-1] (outside the trained range the nearest trained timestep is used).
With c = 1 / sqrt(1 + sigma^2) and F = unet(c x, t(sigma)):
  epsilon: D = x - sigma F;  sample: D = F;  v_prediction: D = c^2 x - sigma c F.

Layer ids (same vocabulary as EDM's SongUNet, `initprobe.nets.layers`); R = sample_size, a down
block i and up block i of n work at R >> i and R >> (n - 1 - i):
  time_embedding.linear_1/2 -> map_layer0/1;  conv_in -> enc.RxR_conv;
  down_blocks.i.resnets.j -> enc.rxr_blockj, sublayers norm1 conv1 time_emb_proj norm2 conv2
  conv_shortcut -> norm0 conv0 affine norm1 conv1 skip; down_blocks.i.attentions.j -> the same
  block, group_norm to_q to_k to_v to_out.0 -> norm2 q k v proj;
  down_blocks.i.downsamplers.0 -> enc.(r/2)x(r/2)_down (a conv, or a resnet with sublayers);
  mid_block.resnets.0 + attentions.0 -> dec.rxr_in0, mid_block.resnets.1 -> dec.rxr_in1;
  up_blocks.i.resnets.j (+ attentions.j) -> dec.rxr_blockj; up_blocks.i.upsamplers.0 ->
  dec.(2r)x(2r)_up; conv_norm_out / conv_out -> dec.RxR_aux_norm / dec.RxR_aux_conv.
A block's module (`canonical_blocks`) is the one whose output is the block's output: the
attention when the block has one, else the resnet; the sampler; conv_in; conv_out.
Refused with a UserError: class conditioning, fourier or learned time embeddings, out_channels
!= in_channels (learned variance), non-square sizes, and any layer the mapping does not cover.
"""

import json
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from ..errors import UserError
from .precond import per_image

RESNET = {"norm1": "norm0", "conv1": "conv0", "time_emb_proj": "affine", "norm2": "norm1",
          "conv2": "conv1", "conv_shortcut": "skip"}
ATTENTION = {"group_norm": "norm2", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj"}
PREDICTIONS = ("epsilon", "sample", "v_prediction")
WEIGHTS = "diffusion_pytorch_model.safetensors"  # or sharded: WEIGHTS + ".index.json"
DDPM_ASSUMED = {"_class_name": "DDPMScheduler", "beta_schedule": "linear", "beta_start": 1e-4,
                "beta_end": 0.02, "num_train_timesteps": 1000, "prediction_type": "epsilon"}


def diffusers_dir(path: str | Path) -> Path | None:
    """The diffusers model folder at `path` (or its `unet/`), or None if it is not one."""
    p = Path(path)
    for d in (p, p / "unet"):
        cfg = d / "config.json"
        if cfg.is_file():
            try:
                if "_class_name" in json.loads(cfg.read_text()):
                    return d
            except (json.JSONDecodeError, UnicodeDecodeError):
                return None
    return None


def scheduler_config(folder: Path) -> tuple[dict, str]:
    """(scheduler config, where it came from) for a model folder; DDPM_ASSUMED if none."""
    for f in (folder / "scheduler_config.json", folder.parent / "scheduler" /
              "scheduler_config.json"):
        if f.is_file():
            return json.loads(f.read_text()), str(f)
    return dict(DDPM_ASSUMED), "assumed: DDPM, epsilon-prediction, linear betas 1e-4..0.02"


def _block_ids(unet) -> tuple[dict[str, str], dict[str, str]]:
    """(canonical layer id -> module path, block id -> module path), in network order."""
    res = unet.config.sample_size
    n = len(unet.down_blocks)
    layers, blocks = {"map_layer0": "time_embedding.linear_1",
                      "map_layer1": "time_embedding.linear_2",
                      f"enc.{res}x{res}_conv": "conv_in"}, {f"enc.{res}x{res}_conv": "conv_in"}
    modules = dict(unet.named_modules())

    def owns_params(path):
        return path in modules and any(True for _ in modules[path].parameters(recurse=False))

    def add(block_id, path, sublayers):
        if path not in modules:
            return
        blocks[block_id] = path
        for name, sub in sublayers.items():
            if owns_params(f"{path}.{name}"):
                layers[f"{block_id}.{sub}" if sub else block_id] = f"{path}.{name}"

    def sampler(block_id, path):
        resnet = type(modules.get(path)).__name__ == "ResnetBlock2D"
        add(block_id, path, RESNET if resnet else {"conv": ""})

    def level(side, r, prefix, count):
        for j in range(count):
            add(f"{side}.{r}x{r}_block{j}", f"{prefix}.resnets.{j}", RESNET)
            add(f"{side}.{r}x{r}_block{j}", f"{prefix}.attentions.{j}", ATTENTION)

    for i, blk in enumerate(unet.down_blocks):
        r = res >> i
        level("enc", r, f"down_blocks.{i}", len(blk.resnets))
        sampler(f"enc.{r // 2}x{r // 2}_down", f"down_blocks.{i}.downsamplers.0")
    low = res >> (n - 1)
    if unet.mid_block is not None:
        add(f"dec.{low}x{low}_in0", "mid_block.resnets.0", RESNET)
        add(f"dec.{low}x{low}_in0", "mid_block.attentions.0", ATTENTION)
        add(f"dec.{low}x{low}_in1", "mid_block.resnets.1", RESNET)
    for i, blk in enumerate(unet.up_blocks):
        r = res >> (n - 1 - i)
        level("dec", r, f"up_blocks.{i}", len(blk.resnets))
        sampler(f"dec.{2 * r}x{2 * r}_up", f"up_blocks.{i}.upsamplers.0")
    layers[f"dec.{res}x{res}_aux_norm"] = "conv_norm_out"
    layers[f"dec.{res}x{res}_aux_conv"] = blocks[f"dec.{res}x{res}_aux_conv"] = "conv_out"
    return layers, blocks


class DiffusersDenoiser(nn.Module):
    """D(x; sigma) around a diffusers UNet2DModel `unet` (module docstring for the conversion).
    `cfg` has the input fields of `UNetConfig` (img_resolution, in_channels, out_channels) for
    callers that size inputs from it; `schedule_source` records where the noise schedule came
    from (a file, or the assumption)."""

    def __init__(self, unet, alphas_cumprod: torch.Tensor, prediction_type: str,
                 schedule_source: str = ""):
        super().__init__()
        if prediction_type not in PREDICTIONS:
            raise UserError(f"prediction_type {prediction_type!r} is not supported (supported: "
                            f"{', '.join(PREDICTIONS)})")
        self.unet, self.prediction_type = unet, prediction_type
        self.schedule_source = schedule_source
        ac = alphas_cumprod.double()
        self.register_buffer("log_sigmas", ((1 - ac) / ac).sqrt().log().float(), persistent=False)
        c = unet.config
        self.cfg = SimpleNamespace(img_resolution=c.sample_size, in_channels=c.in_channels,
                                   out_channels=c.out_channels)
        self.layer_paths, self.block_paths = _block_ids(unet)

    @property
    def lowest_resolution(self) -> int:
        return self.cfg.img_resolution >> (len(self.unet.down_blocks) - 1)

    def canonical_layers(self) -> dict[str, nn.Module]:
        return {k: self.unet.get_submodule(p) for k, p in self.layer_paths.items()}

    def canonical_blocks(self) -> dict[str, nn.Module]:
        return {k: self.unet.get_submodule(p) for k, p in self.block_paths.items()}

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """Fractional DDPM timestep whose sigma_t is `sigma` (clamped to the trained range)."""
        ls = self.log_sigmas
        x = sigma.float().log().clamp(ls[0], ls[-1])
        hi = torch.searchsorted(ls, x).clamp(1, len(ls) - 1)
        w = (x - ls[hi - 1]) / (ls[hi] - ls[hi - 1])
        return (hi - 1 + w).float()

    def forward(self, x: torch.Tensor, sigma) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
        sigma = sigma.reshape(-1).expand(x.shape[0])
        s = per_image(sigma)
        c = 1 / (1 + s**2).sqrt()
        f = self.unet(c * x, self.timestep(sigma), return_dict=False)[0]
        if self.prediction_type == "epsilon":
            return x - s * f
        if self.prediction_type == "sample":
            return f
        return c**2 * x - s * c * f


def _check_config(cfg: dict):
    refuse = {"class conditioning": cfg.get("class_embed_type") or cfg.get("num_class_embeds"),
              f"time_embedding_type {cfg.get('time_embedding_type')!r}":
                  cfg.get("time_embedding_type", "positional") != "positional",
              f"out_channels {cfg.get('out_channels')} != in_channels {cfg.get('in_channels')}":
                  cfg.get("out_channels", 3) != cfg.get("in_channels", 3),
              f"sample_size {cfg.get('sample_size')!r} (need one square size)":
                  not isinstance(cfg.get("sample_size"), int)}
    for what, bad in refuse.items():
        if bad:
            raise UserError(f"UNet2DModel with {what} is not supported")


def describe(net: DiffusersDenoiser) -> dict:
    """What a checkpoint records to rebuild `net` without its source folder."""
    return {"unet": dict(net.unet.config), "scheduler": net.scheduler_config,
            "schedule_source": net.schedule_source}


def from_description(desc: dict) -> DiffusersDenoiser:
    """A freshly initialized adapter with a recorded architecture and schedule (`describe`)."""
    try:
        from diffusers import DDPMScheduler, UNet2DModel
    except ImportError:
        raise UserError("this checkpoint holds a diffusers network; pip install "
                        "'initprobe[diffusers]'") from None
    sched = desc["scheduler"]
    unet = UNet2DModel.from_config({k: v for k, v in desc["unet"].items()
                                    if not k.startswith("_")})
    net = DiffusersDenoiser(unet.float(), DDPMScheduler.from_config(sched).alphas_cumprod,
                            sched.get("prediction_type", "epsilon"), desc["schedule_source"])
    net.scheduler_config = sched
    return net


def load_diffusers_unet(path: str | Path) -> DiffusersDenoiser:
    """Load a UNet2DModel folder (or a pipeline folder with `unet/`) as a teacher denoiser."""
    folder = diffusers_dir(path)
    if folder is None:
        raise UserError(f"{path}: no diffusers config.json here; pass a UNet2DModel folder")
    try:
        from diffusers import DDPMScheduler, UNet2DModel
    except ImportError:
        raise UserError("loading diffusers models needs the extra: pip install "
                        "'initprobe[diffusers]'") from None
    cfg = json.loads((folder / "config.json").read_text())
    if cfg.get("_class_name") != "UNet2DModel":
        raise UserError(f"{folder}: a {cfg.get('_class_name')}, not a UNet2DModel")
    try:
        _check_config(cfg)
    except UserError as e:
        raise UserError(f"{folder}: {e}") from None
    if not any((folder / name).is_file() for name in (WEIGHTS, WEIGHTS + ".index.json")):
        found = sorted(p.name for p in folder.glob("*.bin"))
        held = f"only pickled weights ({', '.join(found)}), which are not loaded (unpickling " \
               f"can run code)" if found else "no weights"
        raise UserError(f"{folder}: holds {held}; need {WEIGHTS} (re-save a trusted copy with "
                        f"diffusers' save_pretrained, which writes safetensors)")
    sched, source = scheduler_config(folder)
    if "beta_schedule" not in sched and "trained_betas" not in sched:
        raise UserError(f"{folder}: scheduler {sched.get('_class_name')} is not a discrete VP "
                        f"(beta) schedule; only those are supported")
    try:
        unet = UNet2DModel.from_pretrained(folder, use_safetensors=True, low_cpu_mem_usage=False)
    except (OSError, ValueError) as e:
        why = (str(e).splitlines() or [""])[0]
        raise UserError(f"{folder}: cannot load the UNet2DModel ({why}); need config.json and "
                        f"diffusion_pytorch_model.safetensors") from None
    alphas = DDPMScheduler.from_config(sched).alphas_cumprod
    try:
        net = DiffusersDenoiser(unet.float().eval(), alphas,
                                sched.get("prediction_type", "epsilon"), source)
    except UserError as e:
        raise UserError(f"{folder}: {e}") from None
    net.scheduler_config = sched
    covered = set(net.layer_paths.values())
    for name, m in unet.named_modules():
        if any(True for _ in m.parameters(recurse=False)) and name not in covered:
            raise UserError(f"{folder}: unsupported UNet2DModel layout: layer {name} has no "
                            f"initprobe layer id")
    return net.eval()
