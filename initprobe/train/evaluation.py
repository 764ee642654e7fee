"""Evaluation during one-step training: sampling the generator's map on fixed seeds, the sample
quality of the EMA generator against the training images, and when to evaluate.

`cfg` is the trainer's `OneStepConfig` (`data`, `data_path`, `eval_classifier_steps`, `eval_n`,
`eval_every`, `eval_at`, `batch`). A class-conditional run's evaluation sample i carries a label
drawn at the data's class frequencies from seed i alone (`nets.labels.seed_labels`), and the
metrics add per-class quality and the label accuracy (`measure.analyses.quality.class_metrics`).
"""

import contextlib

import torch

from ..data import load_dataset
from ..diffusion import latents
from ..measure.analyses.quality import (
    class_metrics,
    quality_metrics,
    summarize,
    summarize_classes,
    summarize_data,
)
from ..measure.features.extractors import classifier_extractor
from ..nets.labels import bind, class_frequencies, one_hot, seed_labels


def autocast(dev: torch.device):
    if dev.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def sample_batches(sample, net, seeds, shape, dev, labels: torch.Tensor | None = None,
                   batch: int = 256):
    """Generated images for `seeds`, one CPU batch at a time (image i depends on seed i, and
    on its one-hot label `labels[i]` for a conditional generator, only)."""
    seeds = list(seeds)
    for start in range(0, len(seeds), batch):
        z = latents(seeds[start:start + batch], shape, dev)
        y = None if labels is None else labels[start:start + batch].to(dev)
        with autocast(dev):
            yield sample(bind(net, y), z).float().cpu()


def samples(sample, net, seeds, shape, dev, labels: torch.Tensor | None = None) -> torch.Tensor:
    return torch.cat(list(sample_batches(sample, net, seeds, shape, dev, labels)))


class Evaluator:
    """Sample quality of the EMA generator on fixed seeds against the training images, on the
    cached domain classifier trained for `eval_classifier_steps`."""

    def __init__(self, cfg, train, dev, classes: int = 0):
        test = load_dataset(cfg.data, cfg.data_path, "test", size=train.shape[-1])
        self.extractor = classifier_extractor(train, test, cfg.eval_classifier_steps,
                                              progress=False).to(dev)
        self.reference = summarize_data(self.extractor, train)
        self.cfg, self.shape, self.dev = cfg, train.shape, dev
        self.labels = seed_labels(range(cfg.eval_n), class_frequencies(train.labels, classes)) \
            if classes else None
        self.class_refs = summarize_classes(self.extractor, train) if classes else None
        self.classes = classes

    def __call__(self, sample, ema) -> dict:
        """The metrics; `NonFiniteSamples` if a sample is not finite (finite weights can still
        overflow), which would break the Frechet distance's eigendecomposition."""
        def finite(batches):
            for x in batches:
                if not bool(torch.isfinite(x).all()):
                    raise NonFiniteSamples
                yield x
        batches = sample_batches(sample, ema, range(self.cfg.eval_n), self.shape, self.dev,
                                 one_hot(self.labels, self.classes))
        summary = summarize(self.extractor, finite(batches), labels=self.labels)
        metrics = quality_metrics(summary, self.reference, self.extractor)
        if self.labels is not None:
            metrics.update(class_metrics(summary, self.class_refs, self.extractor))
        return metrics


class NonFiniteSamples(Exception):
    """A generated sample is not finite."""


def evaluates(cfg, step: int, total: int) -> bool:
    """Whether step `step` ends with an evaluation: the last step, every `eval_every` images and
    the first step at or past each of `eval_at`."""
    before, now = (step - 1) * cfg.batch, step * cfg.batch
    return (step == total or any(before < b <= now for b in cfg.eval_at)
            or (cfg.eval_every > 0 and now // cfg.eval_every > before // cfg.eval_every))
