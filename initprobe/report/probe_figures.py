"""Figures of linear-probe tables (`measure.analyses.linear_probe`): test accuracy as a seaborn
heatmap of layers x sigma, one panel per run; and each run's best layer's accuracy against sigma
with the chance level."""

import math
from pathlib import Path

import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from ..errors import UserError
from ..measure.analyses.linear_probe import best_layer_curves, best_layers
from .figures import _save_png

ANNOTATE_CELLS = 120   # write the accuracy into the cells of panels up to this size


def _accuracy(df: pd.DataFrame) -> pd.DataFrame:
    acc = df[df["metric"] == "accuracy"].assign(
        run=lambda t: t["run"].astype("string").fillna(""))
    if acc.empty:
        raise UserError("the table has no accuracy rows; pass a linear-probe table")
    return acc


def chance_level(df: pd.DataFrame) -> float:
    """The mean of the table's `chance` rows (the majority-class test accuracy)."""
    return float(df.loc[df["metric"] == "chance", "value"].mean())


def accuracy_heatmaps(df: pd.DataFrame, path: str | Path, title: str | None = None,
                      ncols: int | None = None) -> Path:
    """Test accuracy, layers (rows, network order) x sigma (columns), one panel per run in the
    order runs appear, `ncols` panels per row (default: all in one row), colors 0 to 1."""
    import seaborn as sns
    acc = _accuracy(df)
    runs, layers = list(pd.unique(acc["run"])), list(pd.unique(acc["layer"]))
    sigmas = sorted(pd.unique(acc["sigma"].astype(float)))
    ncols = min(ncols or len(runs), len(runs))
    nrows = math.ceil(len(runs) / ncols)
    annotate = len(layers) * len(sigmas) <= ANNOTATE_CELLS
    fig = Figure(figsize=(2.5 + (0.35 + 0.3 * len(sigmas)) * ncols,
                          1.0 + (0.8 + 0.22 * len(layers)) * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True)
    for ax, run in zip(axes.flat, runs):
        grid = (acc[acc["run"] == run].pivot_table(index="layer", columns="sigma", values="value")
                .reindex(index=layers, columns=sigmas))
        grid.columns = [f"{s:.2g}" for s in sigmas]
        sns.heatmap(grid, vmin=0.0, vmax=1.0, cmap="viridis", cbar=False, annot=annotate,
                    fmt=".2f", annot_kws={"fontsize": 5}, ax=ax)
        ax.set_title(run, fontsize=9)
        ax.set_xlabel("sigma")
        ax.set_ylabel("")
        ax.tick_params(labelsize=6)
    for ax in axes.flat[len(runs):]:
        ax.set_visible(False)
    fig.colorbar(ScalarMappable(Normalize(0.0, 1.0), "viridis"), ax=axes, label="test accuracy",
                 shrink=0.8)
    if title:
        fig.suptitle(title)
    return _save_png(fig, path)


def best_layer_figure(df: pd.DataFrame, path: str | Path, title: str | None = None) -> Path:
    """Each run's best layer (highest accuracy averaged over sigma): its test accuracy against
    sigma (log axis), with the chance level dashed."""
    import seaborn as sns
    acc = _accuracy(df)
    curves = best_layer_curves(acc)
    best = best_layers(acc)
    curves = curves.assign(run=curves["run"].map(lambda r: f"{r} ({best[r]})"))
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.subplots()
    sns.lineplot(curves, x="sigma", y="value", hue="run", marker="o", ax=ax)
    ax.axhline(chance_level(df), color="gray", linestyle="--", label="chance")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("sigma")
    ax.set_ylabel("test accuracy of the best layer")
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title)
    return _save_png(fig, path)
