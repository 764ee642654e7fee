"""Sample quality on a domain feature network: fidelity and coverage kept apart.

`sample_quality` returns, for a batch of generated images against reference images:
- `fd_classifier`: Frechet distance on the classifier's penultimate features (not FID);
- `kid_classifier`: unbiased KID on the same features;
- `precision`, `recall`, `density`, `coverage`: k-NN manifold estimates (fidelity vs coverage);
- `class_entropy`, `classes_covered`, `class_kl_uniform`: from the classifier's labels, where
  mode collapse shows first.
"""

import numpy as np
import torch

from .distances import (FeatureStats, class_histogram_stats, frechet_distance, kid,
                        precision_recall_coverage)
from .features import FeatureNet, extract

PRC_MAX = 2000  # k-NN estimates use at most this many points per side (memory is n^2)


def stats_of(features: np.ndarray) -> FeatureStats:
    s = FeatureStats()
    s.update(features)
    return s


def sample_quality(feature_net: FeatureNet, samples: torch.Tensor, reference: torch.Tensor,
                   num_classes: int, k: int = 5, seed: int = 0) -> dict[str, float]:
    fs, labels = extract(feature_net, samples)
    fr, _ = extract(feature_net, reference)
    a, b = stats_of(fs), stats_of(fr)
    out = {"fd_classifier": frechet_distance(a.mean, a.cov, b.mean, b.cov)}
    out["kid_classifier"], _ = kid(fs, fr, subsets=50, subset_size=min(len(fs), len(fr), 1000),
                                   seed=seed)
    rng = np.random.default_rng(seed)
    sub = lambda x: x[rng.permutation(len(x))[:PRC_MAX]]  # noqa: E731
    out.update(precision_recall_coverage(sub(fr), sub(fs), k=k))
    cls = class_histogram_stats(labels, num_classes)
    out.update(class_entropy=cls["entropy"], classes_covered=cls["classes_covered"],
               class_kl_uniform=cls["kl_to_uniform"])
    out["n_samples"] = len(fs)
    out["n_reference"] = len(fr)
    return {k: float(v) for k, v in out.items()}
