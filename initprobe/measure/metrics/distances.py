"""Sample-quality statistics on feature matrices of shape [n, d].

Everything is computed in float64 numpy. Inputs may be numpy arrays or torch tensors.

- `FeatureStats`: streaming mean and covariance, saved to and loaded from `.npz` files.
- `frechet_distance`: the Frechet distance between two Gaussians (FID on Inception features).
- `kid`: kernel inception distance, an unbiased MMD^2 with a cubic polynomial kernel.
- `precision_recall_coverage`: k-NN manifold precision/recall and density/coverage.
- `class_histogram_stats`: class histogram summaries for spotting mode collapse.
"""

import os

import numpy as np
import torch

from ...errors import UserError
from ...runio import atomic_save_npz


def _features(x, name: str = "features") -> np.ndarray:
    """Return `x` as a float64 numpy matrix [n, d]."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise UserError(f"{name} must have shape [n, d], got {x.shape}; flatten each sample")
    return x


class FeatureStats:
    """Running mean and covariance of feature vectors, accumulated batch by batch.

    Keeps the count, the mean and the sum of outer products of deviations from the mean
    (merged per batch with Chan et al.'s parallel update), so memory is O(d^2) whatever the
    number of samples, and there is no catastrophic cancellation when the mean is large.
    """

    def __init__(self):
        self.n = 0
        self._mean: np.ndarray | None = None
        self._m2: np.ndarray | None = None

    def update(self, batch) -> None:
        """Add a batch of feature vectors of shape [n, d]."""
        x = _features(batch)
        if x.shape[0] == 0:
            return
        if self._mean is None:
            self._mean = np.zeros(x.shape[1])
            self._m2 = np.zeros((x.shape[1], x.shape[1]))
        elif x.shape[1] != self._mean.shape[0]:
            raise UserError(f"feature dimension {x.shape[1]} does not match the accumulated "
                            f"{self._mean.shape[0]}; use the same feature extractor throughout")
        nb = x.shape[0]
        batch_mean = x.mean(axis=0)
        dev = x - batch_mean
        delta = batch_mean - self._mean
        total = self.n + nb
        self._m2 += dev.T @ dev + np.outer(delta, delta) * (self.n * nb / total)
        self._mean += delta * (nb / total)
        self.n = total

    @property
    def mean(self) -> np.ndarray:
        if self.n < 1:
            raise UserError("no features accumulated yet; call update() with at least one batch")
        return self._mean.copy()

    @property
    def cov(self) -> np.ndarray:
        """Unbiased covariance (divides by n - 1)."""
        if self.n < 2:
            raise UserError(f"covariance needs at least 2 samples, got {self.n}; use more samples")
        return self._m2 / (self.n - 1)

    def save(self, path: str | os.PathLike) -> None:
        """Write the statistics atomically to an `.npz` file at exactly `path`."""
        mean, m2 = self.mean, self._m2  # `mean` raises if nothing was accumulated
        atomic_save_npz(path, n=np.int64(self.n), mean=mean, m2=m2)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FeatureStats":
        """Read statistics written by `save`."""
        try:
            with np.load(path) as z:
                data = {k: z[k] for k in ("n", "mean", "m2")}
        except FileNotFoundError:
            raise UserError(f"no feature statistics file at {path}; check the path") from None
        except (KeyError, ValueError, OSError):
            raise UserError(f"{path} is not a FeatureStats .npz file; recompute the statistics"
                            ) from None
        stats = cls()
        stats.n = int(data["n"])
        stats._mean = data["mean"].astype(np.float64)
        stats._m2 = data["m2"].astype(np.float64)
        return stats


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix; tiny negative eigenvalues become 0."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """Frechet (2-Wasserstein) distance squared between N(mu1, cov1) and N(mu2, cov2).

    ||mu1 - mu2||^2 + tr(cov1) + tr(cov2) - 2 tr((cov1 cov2)^(1/2)). The last trace equals
    tr((s cov2 s)^(1/2)) with s = cov1^(1/2); s cov2 s is symmetric PSD, so the trace is the sum
    of square roots of its eigenvalues (clipped at 0), computed with a symmetric
    eigendecomposition instead of a general, unstable matrix square root. For two nearly equal
    distributions the result can come out slightly below zero (float rounding of the traces,
    about 1e-12 of their size); it is returned as computed, not clipped, so a negative value
    near zero reads as "equal to rounding".
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or cov1.shape != (d, d) or cov2.shape != (d, d):
        raise UserError(f"mismatched statistics: means {mu1.shape}, {mu2.shape}, covariances "
                        f"{cov1.shape}, {cov2.shape}; compare features of the same dimension")
    s = _sqrt_psd(cov1)
    middle = s @ cov2 @ s
    eig = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = np.sqrt(np.clip(eig, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * trace_sqrt)


def _poly_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a @ b.T / a.shape[1] + 1) ** 3


def kid(feats_a, feats_b, subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    """Kernel inception distance: (mean, std) over random subsets of the unbiased MMD^2.

    Each subset draws `m = min(subset_size, n_a, n_b)` rows of each set without replacement and
    uses the kernel k(x, y) = (x.y / d + 1)^3. The estimator is unbiased, so it can be slightly
    negative when both sets come from the same distribution. The std is over subsets (ddof 0).
    """
    a, b = _features(feats_a, "feats_a"), _features(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise UserError(f"feature dimensions differ ({a.shape[1]} vs {b.shape[1]}); "
                        "extract both sets with the same network")
    m = min(subset_size, a.shape[0], b.shape[0])
    if m < 2 or subsets < 1:
        raise UserError(f"KID needs subsets >= 1 and at least 2 samples per set, got "
                        f"subsets={subsets}, {a.shape[0]} and {b.shape[0]} samples")
    rng = np.random.default_rng(seed)
    values = np.empty(subsets)
    for i in range(subsets):
        x = a[rng.choice(a.shape[0], m, replace=False)]
        y = b[rng.choice(b.shape[0], m, replace=False)]
        kxx, kyy, kxy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
        within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        values[i] = within - 2 * kxy.mean()
    return float(values.mean()), float(values.std())


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distance matrix [len(a), len(b)]."""
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.clip(sq, 0, None))


def _knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    """Distance from each row of `x` to its k-th nearest other row."""
    return np.partition(_distances(x, x), k, axis=1)[:, k]  # index 0 is the point itself


def precision_recall_coverage(real, fake, k: int = 5) -> dict[str, float]:
    """Manifold precision and recall (Kynkaanniemi et al. 2019), density and coverage
    (Naeem et al. 2020).

    Each sample's ball has the radius of its k-th nearest neighbour within its own set.
    precision: fraction of fake samples inside some real ball; recall: fraction of real samples
    inside some fake ball; density: mean number of real balls containing a fake sample, divided
    by k; coverage: fraction of real balls that contain at least one fake sample.
    Memory is O(n_real * n_fake): use a few thousand samples per set.
    """
    real, fake = _features(real, "real"), _features(fake, "fake")
    if real.shape[1] != fake.shape[1]:
        raise UserError(f"feature dimensions differ ({real.shape[1]} vs {fake.shape[1]}); "
                        "extract both sets with the same network")
    if not 1 <= k < min(real.shape[0], fake.shape[0]):
        raise UserError(f"k={k} needs more than k samples in each set (got {real.shape[0]} real,"
                        f" {fake.shape[0]} fake); lower k or use more samples")
    real_radii, fake_radii = _knn_radii(real, k), _knn_radii(fake, k)
    dist = _distances(real, fake)  # [n_real, n_fake]
    in_real_ball = dist <= real_radii[:, None]
    in_fake_ball = dist <= fake_radii[None, :]
    return {
        "precision": float(in_real_ball.any(axis=0).mean()),
        "recall": float(in_fake_ball.any(axis=1).mean()),
        "density": float(in_real_ball.sum(axis=0).mean() / k),
        "coverage": float(in_real_ball.any(axis=1).mean()),
    }


def class_histogram_stats(labels, num_classes: int) -> dict:
    """Summaries of predicted class labels for mode-collapse detection.

    Returns `histogram` (counts per class), `entropy` of the empirical class distribution in
    nats, `classes_covered` (classes with at least one sample) and `kl_to_uniform`
    (= log(num_classes) - entropy, 0 for a perfectly balanced set).
    """
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels).reshape(-1)
    if labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"labels must be a non-empty integer array, got dtype {labels.dtype} "
                        f"with {labels.size} entries; pass predicted class indices")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise UserError(f"labels must lie in [0, {num_classes}), got range "
                        f"[{labels.min()}, {labels.max()}]; check num_classes")
    hist = np.bincount(labels, minlength=num_classes)
    p = hist[hist > 0] / labels.size
    entropy = float(-(p * np.log(p)).sum())
    return {
        "histogram": hist,
        "entropy": entropy,
        "classes_covered": int((hist > 0).sum()),
        "kl_to_uniform": float(np.log(num_classes) - entropy),
    }
