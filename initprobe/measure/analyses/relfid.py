"""GDD's rel-FID vs abs-FID analysis (claim C5): how far multi-step teachers are from the data
and from the one-step student.

For each teacher sampler configuration c, with the same seeds 0 .. n-1 everywhere:
- `abs_fd` = FD(teacher_c samples, data);
- `rel_fd` = FD(teacher_c samples, student one-step samples) (the Frechet distance is symmetric,
  so "A against B's statistics" and "B against A's" are the same number).
Configurations: the step sweep runs `step_sampler` with N levels of the Karras grid for N in
`steps`: `heun` (EDM's sampler, 2N - 1 network evaluations; with N = 2 its one trapezoid step
from 80 to sigma_min keeps half the initial noise, so expect a huge distance there) or `euler`
(N evaluations; N = 2 is nearly the one-step map, its middle level being sigma_min); the
sigma_mid sweep runs GDD's two-step map (= Euler on the levels 80, sigma_mid, 0) for each
`sigma_mid`. Two baselines: the student's one-step samples (abs only) and the teacher's own
one-step output D(80 z; 80).

The FD is on the chosen feature network (`fd_classifier` or `fid`), recorded in the `network`
column. Long-form table: run (sampler config), sweep (`steps`, `sigma_mid`, `baseline`), sampler,
steps, sigma_mid, nfe, n, network, metric (`abs_fd` or `rel_fd`), value.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from ...data import Dataset
from ...diffusion import Generator
from ...errors import UserError
from ...schema import frame
from ..features.extractors import Extractor
from ..metrics.distances import frechet_distance
from .quality import FeatureSummary, summarize_data, summarize_samples

STEP_SAMPLERS = ("heun", "euler")


def distance(a: FeatureSummary, b: FeatureSummary) -> float:
    """Frechet distance between the Gaussians of two feature summaries."""
    return frechet_distance(a.stats.mean, a.stats.cov, b.stats.mean, b.stats.cov)


def _configs(steps: Sequence[int], sigma_mids: Sequence[float], step_sampler: str) -> list[dict]:
    if step_sampler not in STEP_SAMPLERS:
        raise UserError(f"unknown step sampler {step_sampler!r}; choose one of "
                        f"{', '.join(STEP_SAMPLERS)}")
    if any(s < 2 for s in steps) or any(s <= 0 for s in sigma_mids):
        raise UserError(f"steps must be >= 2 and sigma_mid > 0, got steps {list(steps)}, "
                        f"sigma_mid {list(sigma_mids)}")
    nfe = (lambda s: 2 * s - 1) if step_sampler == "heun" else (lambda s: s)
    stepped = [dict(run=f"{step_sampler}-{s}", sweep="steps", sampler=step_sampler, steps=int(s),
                 sigma_mid=float("nan"), nfe=nfe(int(s))) for s in steps]
    two = [dict(run=f"two-step-{m:g}", sweep="sigma_mid", sampler="two-step", steps=2,
                sigma_mid=float(m), nfe=2) for m in sigma_mids]
    return stepped + two


@dataclass(frozen=True)
class RelFidOptions:
    """The teacher's sampler configurations (module docstring): the Karras-grid levels `steps`
    of `step_sampler`, the two-step map's `sigma_mids`; `n` samples per configuration (seeds
    0 .. n-1), `batch` images per pass."""

    steps: Sequence[int] = (2, 4, 6, 8, 10)
    sigma_mids: Sequence[float] = (0.2, 0.5, 0.8, 2, 5)
    n: int = 1000
    batch: int = 256
    step_sampler: str = "heun"


def relfid_sweep(teacher, student: Generator, data: Dataset, feature_net: Extractor,
                 options: RelFidOptions = RelFidOptions()) -> pd.DataFrame:
    """abs and rel Frechet distances of the teacher's sampler configurations (module docstring).

    `teacher` is a denoiser D(x; sigma) and `student` a `Generator` (network and map, as
    `nets.io.load_generator` returns it), both on the same device as `feature_net`."""
    n, batch = options.n, options.batch
    for name, net in (("teacher", teacher), ("student", student.net)):
        if (net.cfg.in_channels, net.cfg.img_resolution, net.cfg.img_resolution) != data.shape:
            raise UserError(f"the {name} makes {net.cfg.in_channels}x{net.cfg.img_resolution}^2 "
                            f"images but {data.name} has shape {data.shape}; pick matching data")
    reference = summarize_data(feature_net, data, batch=batch)
    student_s = summarize_samples(feature_net, student.net, n, student.map, batch=batch)
    records = [dict(run="student one-step", sweep="baseline", sampler="one-step", steps=1,
                    sigma_mid=float("nan"), nfe=1, metric="abs_fd",
                    value=distance(student_s, reference))]
    teacher_one = dict(run="teacher one-step", sweep="baseline", sampler="one-step", steps=1,
                       sigma_mid=float("nan"), nfe=1)
    for cfg in [teacher_one] + _configs(options.steps, options.sigma_mids, options.step_sampler):
        s = summarize_samples(feature_net, teacher, n, cfg["sampler"], cfg["steps"],
                              cfg["sigma_mid"], batch)
        records.append({**cfg, "metric": "abs_fd", "value": distance(s, reference)})
        records.append({**cfg, "metric": "rel_fd", "value": distance(s, student_s)})
    return frame(records, n=n, network=feature_net.name)
