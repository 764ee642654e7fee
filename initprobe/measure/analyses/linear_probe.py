"""Linear classifier probes: how well the class label can be read, by a linear map, from each
layer's features at each noise level (Alain and Bengio's probes, as used for diffusion
features, e.g. denoising diffusion autoencoders).

Protocol. Labelled real images x are split once into a train and a test part (stratified by
class, `seed`), noised as y = x + sigma n with one fixed noise draw per image
(`profiles.fixed_noise(seed)`, reused at every sigma) and passed through the denoiser D(y; sigma)
in batches. Each hooked layer's output is average-pooled over its spatial positions inside the
hook (a [N, C] feature matrix per layer; memory bounded by N x channels, not by the activation
maps), then a linear classifier is fitted on the train part: standardized features, then
`ridge` (scikit-learn's RidgeClassifierCV, regularization chosen by efficient leave-one-out
cross-validation over `ALPHAS`) or `logistic` (LogisticRegressionCV, 3-fold stratified
cross-validation over `CS`). It is scored on the test part.

The table (shared schema, `run` = the network's label) has per layer and sigma the metrics
`accuracy` and `balanced_accuracy` (mean per-class recall; its chance level is 1 / classes), and
per run one row `chance` (no layer, no sigma): the test accuracy of always predicting the most
frequent training class. `best_layer_accuracy` condenses a table to one number per run: the
accuracy of its best layer (highest mean accuracy over sigma), averaged over sigma.
"""

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from ...errors import UserError
from ...schema import frame
from ..features.hooks import capture
from .profiles import ProbeOptions, layer_record

CLASSIFIERS = ("ridge", "logistic")
ALPHAS = np.logspace(-3, 3, 13)
CS = np.logspace(-3, 2, 6)


def _pool(h: torch.Tensor) -> torch.Tensor:
    """[N, C, ...] -> [N, C]: the mean over every position (a [N, C] output is kept as is)."""
    return h.flatten(2).mean(2).double() if h.ndim > 2 else h.double()


@torch.no_grad()
def pooled_features(net: nn.Module, images: torch.Tensor, noise: torch.Tensor, sigma: float,
                    layer_ids: Sequence[str], batch: int = 256) -> dict[str, np.ndarray]:
    """Layer id -> [N, C] spatially pooled outputs on `images + sigma * noise`, streamed in
    batches (images and noise on the network's device)."""
    with capture(net, layer_ids, reduce=_pool) as got:
        for x, n in zip(images.split(batch), noise.split(batch)):
            net(x + sigma * n, sigma)
    return {i: torch.cat(got[i]).cpu().numpy() for i in layer_ids}


def split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (train, test) indices; UserError when a class is too rare to be split."""
    from sklearn.model_selection import train_test_split
    if not 0 < test_fraction < 1:
        raise UserError(f"test fraction {test_fraction} is not between 0 and 1; give e.g. 0.5")
    counts = np.bincount(labels)
    present = counts[counts > 0]
    if len(present) < 2 or present.min() < 4:
        raise UserError(f"the probe needs at least 2 classes with at least 4 images each (class "
                        f"sizes {present.tolist()}); give more images")
    try:
        return train_test_split(np.arange(len(labels)), test_size=test_fraction,
                                stratify=labels, random_state=seed)
    except ValueError as e:
        raise UserError(f"cannot split {len(labels)} images into train and test by class "
                        f"({e}); give more images or another test fraction") from None


def make_classifier(kind: str, seed: int):
    """An unfitted standardize-then-classify pipeline with cross-validated regularization."""
    from sklearn.linear_model import LogisticRegressionCV, RidgeClassifierCV
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    if kind == "ridge":
        head = RidgeClassifierCV(alphas=ALPHAS)
    elif kind == "logistic":
        head = LogisticRegressionCV(Cs=CS, cv=StratifiedKFold(3, shuffle=True,
                                                              random_state=seed),
                                    scoring="neg_log_loss", max_iter=2000)
    else:
        raise UserError(f"unknown classifier {kind!r}; choose one of {', '.join(CLASSIFIERS)}")
    return make_pipeline(StandardScaler(), head)


def fit_score(features: np.ndarray, labels: np.ndarray, train: np.ndarray, test: np.ndarray,
              kind: str = "ridge", seed: int = 0) -> dict[str, float]:
    """Fit the probe on the `train` rows and score it on the `test` rows: accuracy and
    balanced accuracy."""
    from sklearn.metrics import balanced_accuracy_score
    clf = make_classifier(kind, seed)
    with warnings.catch_warnings():  # scikit-learn >= 1.8 announces changes of defaults and
        warnings.simplefilter("ignore", FutureWarning)  # attributes that do not affect this fit
        clf.fit(features[train], labels[train])
    predicted = clf.predict(features[test])
    return {"accuracy": float(np.mean(predicted == labels[test])),
            "balanced_accuracy": float(balanced_accuracy_score(labels[test], predicted))}


def chance_accuracy(labels: np.ndarray, train: np.ndarray, test: np.ndarray) -> float:
    """Test accuracy of predicting the most frequent training class for every image."""
    majority = np.bincount(labels[train]).argmax()
    return float(np.mean(labels[test] == majority))


def linear_probe(net: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                 options: ProbeOptions = ProbeOptions(), classifier: str = "ridge",
                 test_fraction: float = 0.5) -> pd.DataFrame:
    """Probe accuracies of `net` on `images` [N, C, H, W] with integer `labels` [N] (module
    docstring) at the sigmas and layers of `options` (whose seed also splits the images and
    seeds the classifier). Long form (schema columns, `seed` filled, `run` empty), layers in
    network order, sigma ascending."""
    if len(images) != len(labels):
        raise UserError(f"{len(images)} images but {len(labels)} labels; give one label per "
                        f"image")
    seed = options.seed
    make_classifier(classifier, seed)  # an unknown classifier fails before any forward pass
    ids = options.layer_ids(net)
    y = labels.cpu().numpy().astype(np.int64)
    train, test = split(y, test_fraction, seed)
    device = next(net.parameters()).device
    images = images.to(device)
    noise = options.noise(images)
    records = [{"metric": "chance", "value": chance_accuracy(y, train, test)}]
    for sigma in tqdm(options.grid(), desc="sigma", disable=not options.progress):
        features = pooled_features(net, images, noise, sigma, ids, options.batch)
        for layer in ids:
            scores = fit_score(features[layer], y, train, test, classifier, seed)
            records += [layer_record(layer, sigma, k, v) for k, v in scores.items()]
    return frame(records, seed=seed)


def probe_many(nets: Mapping[str, nn.Module], images: torch.Tensor, labels: torch.Tensor,
               options: ProbeOptions = ProbeOptions(), classifier: str = "ridge",
               test_fraction: float = 0.5) -> pd.DataFrame:
    """`linear_probe` for each labelled network (same images, split, sigmas and noise), with
    `run` = label."""
    tables = [linear_probe(net, images, labels, options, classifier, test_fraction)
              .assign(run=label) for label, net in nets.items()]
    return pd.concat(tables, ignore_index=True)


def best_layers(df: pd.DataFrame) -> pd.Series:
    """Run -> its best layer: the highest accuracy averaged over sigma."""
    acc = df[df["metric"] == "accuracy"]
    means = acc.groupby(["run", "layer"], sort=False, dropna=False)["value"].mean()
    return means.groupby(level="run", sort=False, dropna=False).idxmax().map(lambda k: k[1])


def best_layer_curves(df: pd.DataFrame) -> pd.DataFrame:
    """The accuracy rows of each run's best layer (one per sigma)."""
    best = best_layers(df)
    acc = df[df["metric"] == "accuracy"]
    return acc[acc["layer"] == acc["run"].map(best)]


def best_layer_accuracy(df: pd.DataFrame) -> pd.Series:
    """Run -> the accuracy of its best layer averaged over sigma."""
    return best_layer_curves(df).groupby("run", sort=False, dropna=False)["value"].mean()
