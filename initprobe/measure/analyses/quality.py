"""Sample quality on a feature network, streamed batch by batch: fidelity and coverage kept apart.

Images (samples generated batch by batch, or real data) pass through an `Extractor` one batch at
a time into a `FeatureSummary`, whose memory does not grow with the number of images:
- float64 streaming mean and covariance (`FeatureStats`) for the Frechet distance;
- the first `KEEP` feature vectors (in seed / data order) for KID and the k-NN estimates;
- the class histogram of the classifier's labels (classifier only).

`quality_metrics(samples, reference, extractor)` then gives:
- `fd_<network>` (`fid` for Inception): Frechet distance of the two Gaussians;
- `kid_<network>` (`kid` for Inception): unbiased KID on the kept features;
- `precision`, `recall`, `density`, `coverage`: k-NN manifold estimates on the kept features;
- `class_entropy`, `classes_covered`, `class_kl_uniform`, `mean_confidence` (classifier only):
  of the samples' labels, and the classifier's mean confidence in them (largest softmax
  probability; real digits score near 1, scribbles lower).
The reference is the data (abs) or another generator's samples (rel).

Class-conditional samples (`summarize(..., labels=)`, each image with the class it was generated
for) also keep one summary per class, and `class_metrics` gives, against the real images of
the same class (`summarize_classes`): `<fd>[c]`, `precision[c]`, `recall[c]` per class c (the
class in brackets; `report.tables.learning_curves` moves it to a `label` column of the long
form); `quality_metrics` adds `label_accuracy`, the share of samples the classifier assigns to
the class they were generated for (per class: `label_accuracy[c]`). `summarize_samples` of a
conditional network labels seed i by `--labels` (default: drawn uniformly per seed,
`nets.labels`).

Data summaries are cached under `$INITPROBE_CACHE/stats/<key>.npz`, key = sha256 of the images
used, the network's weights hash and the number of images, so a reference is computed once.
"""

import hashlib
from collections.abc import Iterable, Iterator

import numpy as np
import torch

from ...data import Dataset
from ...diffusion import NAMED_SAMPLERS, GeneratorMap, generate, latents
from ...errors import UserError
from ...nets.labels import class_labels, label_dim, one_hot
from ...runio import atomic_save_npz
from ..features.classifier import cache_dir
from ..features.extractors import Extractor
from ..metrics.distances import (
    FeatureStats,
    class_histogram_stats,
    frechet_distance,
    kid,
    precision_recall_coverage,
)

KEEP = 2000  # feature vectors kept per side for KID and the k-NN estimates (memory is KEEP^2)
STATS_VERSION = 2


class FeatureSummary:
    """Streaming feature statistics of a set of images (see the module docstring)."""

    def __init__(self, keep: int = KEEP):
        self.stats = FeatureStats()
        self.keep = keep
        self._kept: list[np.ndarray] = []
        self.histogram: np.ndarray | None = None
        self.confidence_sum = 0.0       # sum of the classifier's confidence (classifier only)
        self.by_class: dict[int, FeatureSummary] = {}   # labelled samples: one per class
        self.label_hits = 0             # labelled samples the classifier put in their class

    @property
    def n(self) -> int:
        return self.stats.n

    @property
    def kept(self) -> np.ndarray:
        return np.concatenate(self._kept)

    def update(self, features: torch.Tensor, labels: torch.Tensor | None = None,
               num_classes: int | None = None, confidence: torch.Tensor | None = None) -> None:
        """Add one batch of features [b, d] (and predicted labels [b] of `num_classes` with
        the classifier's confidence [b] in them)."""
        f = features.double().cpu().numpy()
        room = self.keep - sum(len(k) for k in self._kept)
        if room > 0:
            self._kept.append(f[:room].copy())
        self.stats.update(f)
        if labels is not None:
            counts = np.bincount(labels.cpu().numpy(), minlength=num_classes)
            self.histogram = counts if self.histogram is None else self.histogram + counts
        if confidence is not None:
            self.confidence_sum += float(confidence.sum())

    @property
    def mean_confidence(self) -> float:
        """The classifier's mean confidence in its labels (largest softmax probability)."""
        return self.confidence_sum / max(self.n, 1)

    def save(self, path) -> None:
        """One atomic `.npz`; its `n`, `mean`, `m2` entries are also `FeatureStats.load`'s."""
        m2 = self.stats.cov * (self.n - 1)
        arrays = dict(n=np.int64(self.n), mean=self.stats.mean, m2=m2, kept=self.kept,
                      keep=np.int64(self.keep), confidence_sum=np.float64(self.confidence_sum))
        if self.histogram is not None:
            arrays["histogram"] = self.histogram
        atomic_save_npz(path, **arrays)

    @classmethod
    def load(cls, path) -> "FeatureSummary":
        with np.load(path) as z:
            s = cls(int(z["keep"]))
            s._kept = [z["kept"]]
            s.histogram = z["histogram"] if "histogram" in z.files else None
            s.confidence_sum = float(z["confidence_sum"])
        s.stats = FeatureStats.load(path)
        return s


def summarize(extractor: Extractor, batches: Iterable[torch.Tensor], keep: int = KEEP,
              labels: torch.Tensor | None = None) -> FeatureSummary:
    """Stream image batches through the feature network into a `FeatureSummary`; `labels`:
    the class each image was generated for (per-class summaries and label hits)."""
    summary = FeatureSummary(keep)
    for images in batches:
        feats, predicted, confidence = extractor(images)
        if labels is not None:
            y = labels[summary.n:summary.n + len(images)].to(feats.device)
            hits = None if predicted is None else predicted == y
            for c in y.unique().tolist():
                part = summary.by_class.setdefault(c, FeatureSummary(keep))
                part.update(feats[y == c])
                part.label_hits += 0 if hits is None else int(hits[y == c].sum())
            summary.label_hits += 0 if hits is None else int(hits.sum())
        summary.update(feats, predicted, extractor.num_classes, confidence)
    if summary.n < 2:
        raise UserError(f"quality needs at least 2 images, got {summary.n}; raise --n")
    return summary


def sample_batches(net, n: int, sampler: str | GeneratorMap = "heun", steps: int = 18,
                   sigma_mid: float = 2.0, batch: int = 256, first_seed: int = 0,
                   labels: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
    """Generate images for seeds first_seed .. first_seed + n - 1, `batch` at a time, on the
    network's device, with a named sampler or a generator map (`diffusion.generate`). Image i
    depends only on its seed (and class `labels[i]` of a conditional network), so two networks
    see the same latents."""
    if not isinstance(sampler, GeneratorMap) and sampler not in NAMED_SAMPLERS:
        raise UserError(f"unknown sampler {sampler!r}; choose one of "
                        f"{', '.join(NAMED_SAMPLERS)} or the checkpoint's generator map")
    if n < 2 or batch < 1:
        raise UserError(f"need n >= 2 samples and batch >= 1, got n={n}, batch={batch}")
    device = next(net.parameters()).device
    shape = (net.cfg.in_channels, net.cfg.img_resolution, net.cfg.img_resolution)
    for start in range(first_seed, first_seed + n, batch):
        seeds = range(start, min(start + batch, first_seed + n))
        y = None if labels is None else one_hot(labels[start - first_seed:][:len(seeds)],
                                                label_dim(net), device)
        yield generate(net, latents(seeds, shape, device), sampler, steps, sigma_mid, batch, y)


def summarize_samples(extractor: Extractor, net, n: int, sampler: str | GeneratorMap = "heun",
                      steps: int = 18, sigma_mid: float = 2.0, batch: int = 256,
                      labels: str | None = None) -> FeatureSummary:
    """Feature summary of `n` samples of `net` (seeds 0 .. n-1; `labels`: a labels spec for a
    conditional network, see `nets.labels`)."""
    y = class_labels(net, labels, range(n))
    return summarize(extractor, sample_batches(net, n, sampler, steps, sigma_mid, batch,
                                               labels=y), labels=y)


def _data_key(extractor: Extractor, images: torch.Tensor, keep: int) -> str:
    h = hashlib.sha256()
    h.update(images.contiguous().numpy().tobytes())
    h.update(f"v{STATS_VERSION}/{extractor.name}/{extractor.key}/{len(images)}/{keep}".encode())
    return h.hexdigest()[:16]


def summarize_data(extractor: Extractor, data: Dataset, n: int | None = None, batch: int = 512,
                   keep: int = KEEP) -> FeatureSummary:
    """Feature summary of the first `n` images of `data` (all by default), cached."""
    images = data.images if n is None else data.images[:n]
    path = cache_dir() / "stats" / f"{_data_key(extractor, images, keep)}.npz"
    if path.exists():
        return FeatureSummary.load(path)
    summary = summarize(extractor, images.split(batch), keep)
    summary.save(path)
    return summary


def summarize_classes(extractor: Extractor, data: Dataset) -> dict[int, FeatureSummary]:
    """Feature summaries of the real images of each class with at least 2 (cached like
    `summarize_data`)."""
    classes, counts = data.labels.unique(return_counts=True)
    return {c: summarize_data(extractor, Dataset(data.name, data.images[data.labels == c],
                                                 data.labels[data.labels == c], data.num_classes))
            for c, k in zip(classes.tolist(), counts.tolist()) if k >= 2}


def class_metrics(samples: FeatureSummary, references: dict[int, FeatureSummary],
                  extractor: Extractor, k: int = 5) -> dict[str, float]:
    """Per-class quality of labelled samples against the real images of their class;
    classes with fewer than 2 samples or images are left out."""
    out = {}
    for c, s in sorted(samples.by_class.items()):
        ref = references.get(c)
        if ref is None or s.n < 2 or ref.n < 2:
            continue
        out[f"{extractor.fd_metric}[{c}]"] = frechet_distance(s.stats.mean, s.stats.cov,
                                                              ref.stats.mean, ref.stats.cov)
        pr = precision_recall_coverage(ref.kept, s.kept, k=min(k, s.n - 1, ref.n - 1))
        out.update({f"{m}[{c}]": pr[m] for m in ("precision", "recall")})
        if extractor.num_classes is not None:
            out[f"label_accuracy[{c}]"] = s.label_hits / s.n
    return {key: float(v) for key, v in out.items()}


def quality_metrics(samples: FeatureSummary, reference: FeatureSummary, extractor: Extractor,
                    k: int = 5, seed: int = 0) -> dict[str, float]:
    """Metrics of `samples` against `reference` (see the module docstring), plus the counts
    `n_samples` and `n_reference`."""
    a, b = samples.stats, reference.stats
    out = {extractor.fd_metric: frechet_distance(a.mean, a.cov, b.mean, b.cov)}
    fs, fr = samples.kept, reference.kept
    out[extractor.kid_metric], _ = kid(fs, fr, subsets=50, subset_size=1000, seed=seed)
    out.update(precision_recall_coverage(fr, fs, k=min(k, len(fs) - 1, len(fr) - 1)))
    if samples.histogram is not None:
        labels = np.repeat(np.arange(len(samples.histogram)), samples.histogram)
        cls = class_histogram_stats(labels, len(samples.histogram))
        out.update(class_entropy=cls["entropy"], classes_covered=cls["classes_covered"],
                   class_kl_uniform=cls["kl_to_uniform"],
                   mean_confidence=samples.mean_confidence)
        if samples.by_class:
            out["label_accuracy"] = samples.label_hits / samples.n
    out.update(n_samples=samples.n, n_reference=reference.n)
    return {key: float(v) for key, v in out.items()}
