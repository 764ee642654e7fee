"""Layer attributions (captum) per layer and noise level: which layers carry the denoiser's
output at each sigma.

The attributed function is a scalar per example of the noisy input y = x + sigma n (fixed noise,
`profiles.fixed_noise`):
- `loss`: the per-example EDM denoising loss, w(sigma) mean_pixels (D(y; sigma) - x)^2 with
  w = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 (as `diffusion.edm_loss`, not averaged over
  the batch);
- `projection`: <D(y; sigma), u> for a fixed random unit direction u (`direction(shape, seed)`).
Methods (attributions to every unit of the layer's output):
- `grad_x_act`: captum `LayerGradientXActivation`, d target / d h * h;
- `conductance`: captum `LayerConductance`, the flow of target(y) - target(y0) through the layer
  along the straight path from a baseline y0 to y (`n_steps` points). A layer's conductances
  sum to the part of target(y) - target(y0) that flows through it (all of it when every path
  from y to the output passes the layer; D's c_skip y term never does). Baselines:
  `mean` (default), the mean noisy input over the probed images at that sigma (so it needs
  several images; one image is its own mean and gets zero attribution); `zero`, the all-zero
  noisy input (uniform mid-grey for images in [-1, 1]). With `zero` the path starts where the
  stem output is its bias alone (zero at init), where GroupNorm (scale-invariant, eps 1e-6)
  changes abruptly: most of the change happens within a tiny fraction of the path and the
  `n_steps` sum misses it (on a test network the stem's sums were off by several times the
  flow); prefer `mean`.
Per layer and sigma the table holds mean |attribution| over examples and units
(`metric="attr_<method>"`), plus those values min-max normalized across sigma (`"minmax"`), and
a `target` column.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from captum.attr import LayerConductance, LayerGradientXActivation
from torch import nn
from tqdm.auto import tqdm

from ...errors import UserError
from ...nets.labels import bind, cond_batches
from ...nets.precond import SIGMA_DATA
from ...schema import frame
from ..features.hooks import modules_by_id
from .profiles import ProbeOptions, layer_record, with_minmax

METHODS = ("conductance", "grad_x_act")
TARGETS = ("loss", "projection")
BASELINES = ("zero", "mean")
DIRECTION_STREAM = 2**32  # offset: the direction's generator is independent of the noise's


def _check(value: str, choices: tuple[str, ...], what: str) -> None:
    if value not in choices:
        raise UserError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")


def direction(shape: Sequence[int], seed: int) -> torch.Tensor:
    """A random unit vector shaped like one image, drawn from seed `DIRECTION_STREAM + seed`."""
    g = torch.Generator().manual_seed(DIRECTION_STREAM + int(seed))
    u = torch.randn(tuple(shape), generator=g)
    return u / u.norm()


def target_function(net: nn.Module, sigma: float, target: str,
                    u: torch.Tensor | None = None) -> Callable[[torch.Tensor, torch.Tensor],
                                                               torch.Tensor]:
    """f(y, x, cond=None) -> [N]: the scalar target per example for noisy inputs y and clean
    images x (and one-hot class labels `cond` of a conditional network); `projection` needs the
    unit direction `u` (one image's shape)."""
    _check(target, TARGETS, "attribution target")
    if target == "loss":
        sd = getattr(net, "sigma_data", SIGMA_DATA)
        weight = (sigma**2 + sd**2) / (sigma * sd) ** 2

        def loss(y, x, cond=None):
            return weight * (bind(net, cond)(y, sigma) - x).square().flatten(1).mean(1)
        return loss
    if u is None:
        raise ValueError("the projection target needs a direction u")

    def projection(y, x, cond=None):
        return (bind(net, cond)(y, sigma) * u.to(y.device, y.dtype)).flatten(1).sum(1)
    return projection


def layer_attributions(forward: Callable, noisy: torch.Tensor, clean: torch.Tensor,
                       modules: dict[str, nn.Module], method: str,
                       baseline: torch.Tensor | None = None, n_steps: int = 50,
                       internal_batch_size: int | None = None,
                       cond: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Raw attributions (shaped like each layer's output, detached) of
    `forward(noisy, clean, cond)` to the outputs of `modules` (id -> module). `baseline` (shaped
    like `noisy`) and `n_steps` and `internal_batch_size` (captum's bound on inputs per pass)
    are for conductance; `cond` (one-hot class labels) travels with the examples."""
    _check(method, METHODS, "attribution method")
    extra = (clean,) if cond is None else (clean, cond)
    if method == "grad_x_act":
        attrs = LayerGradientXActivation(forward, list(modules.values())).attribute(
            noisy, additional_forward_args=extra)
        return {i: a.detach() for i, a in zip(modules, attrs)}
    if baseline is None:
        raise ValueError("conductance needs a baseline")
    return {i: LayerConductance(forward, m).attribute(
                noisy, baselines=baseline, additional_forward_args=extra, n_steps=n_steps,
                internal_batch_size=internal_batch_size).detach()
            for i, m in modules.items()}


@dataclass(frozen=True)
class AttributionOptions:
    """What is attributed and how (module docstring): the captum `method`, the per-example
    `target`, and for conductance the `baseline`, the path points `n_steps` and captum's bound
    on inputs per pass `internal_batch_size` (None: no bound)."""

    method: str = "conductance"
    target: str = "loss"
    baseline: str = "mean"
    n_steps: int = 50
    internal_batch_size: int | None = None

    def __post_init__(self):
        _check(self.method, METHODS, "attribution method")
        _check(self.target, TARGETS, "attribution target")
        _check(self.baseline, BASELINES, "baseline")


DEFAULT_PROBE = ProbeOptions(batch=64)  # attribution's default probe: 64 examples per chunk


def attribute(net: nn.Module, images: torch.Tensor, options: ProbeOptions = DEFAULT_PROBE,
              how: AttributionOptions = AttributionOptions(),
              cond: torch.Tensor | None = None) -> pd.DataFrame:
    """Mean |attribution| of each layer at each sigma of `options` for `images` [N, C, H, W]
    on the network's device (one-hot class labels `cond` for a conditional network);
    long-form table, layers in network order.

    Examples go through in chunks of `options.batch`; for conductance a chunk is at most
    `internal_batch_size // 2` examples, so that captum (which needs two path points per
    example in a pass) holds at most `internal_batch_size` inputs per pass.
    """
    modules = modules_by_id(net, options.layer_ids(net))
    batch = options.batch
    if how.method == "conductance" and how.internal_batch_size is not None:
        batch = min(batch, max(1, how.internal_batch_size // 2))
    device = next(net.parameters()).device
    images = images.to(device)
    noise = options.noise(images)
    u = direction(images.shape[1:], options.seed) if how.target == "projection" else None
    metric = f"attr_{how.method}"
    records = []
    for sigma in tqdm(options.grid(), desc="sigma", disable=not options.progress):
        forward = target_function(net, sigma, how.target, u)
        noisy = images + sigma * noise
        y0 = torch.zeros_like(noisy) if how.baseline == "zero" else \
            noisy.mean(0, keepdim=True).expand_as(noisy)
        total = dict.fromkeys(modules, 0.0)
        count = dict.fromkeys(modules, 0)
        for y, x, b, c in zip(noisy.split(batch), images.split(batch), y0.split(batch),
                              cond_batches(cond, batch)):
            attrs = layer_attributions(forward, y, x, modules, how.method, b, how.n_steps,
                                       how.internal_batch_size, c)
            for i, a in attrs.items():
                total[i] += a.abs().double().sum().item()
                count[i] += a.numel()
        records += [layer_record(i, sigma, metric, total[i] / count[i]) for i in modules]
    return with_minmax(frame(records, seed=options.seed, target=how.target), metric)
