"""Figures drawn from long-form tables (`initprobe.schema`), saved as PNG files atomically.

Figures are built on `matplotlib.figure.Figure` directly (no pyplot state), so drawing is safe in
scripts, tests and worker processes alike.
"""

import io
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..errors import UserError
from ..runio import atomic_write_bytes

MAX_LAYER_LABELS = 60


def _save_png(fig: Figure, path: str | Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=150, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def _log_edges(centers: np.ndarray) -> np.ndarray:
    """Cell edges around ascending positive centers: geometric midpoints, and half a log step
    beyond each end."""
    if len(centers) == 1:
        return np.array([centers[0] / 1.5, centers[0] * 1.5])
    logs = np.log(centers)
    mids = (logs[1:] + logs[:-1]) / 2
    return np.exp(np.concatenate([[2 * logs[0] - mids[0]], mids, [2 * logs[-1] - mids[-1]]]))


def layer_sigma_heatmap(df: pd.DataFrame, path: str | Path, metric: str = "minmax",
                        title: str | None = None) -> Path:
    """Heatmap of layers (rows, top to bottom in the order they first appear in `df`, i.e.
    network order: encoder, bottleneck, decoder) by sigma (columns, log axis) of the `metric`
    rows, one panel per `run`, a shared color scale; white lines separate the sections
    (embedding, encoder, bottleneck `dec.*_in*`, decoder).
    Cells with no value (e.g. min-max of a layer constant in sigma) are left blank."""
    d = df[df["metric"] == metric].assign(run=lambda t: t["run"].astype("string").fillna(""))
    if d.empty:
        raise UserError(f"no rows with metric {metric!r} to plot "
                        f"(has {sorted(df.metric.unique())})")
    layers = list(pd.unique(d["layer"]))
    first = d.drop_duplicates("layer").set_index("layer").reindex(layers)
    sections = np.where((first["side"] == "dec") & first["block"].str.fullmatch(r"in\d+"),
                        "bottleneck", first["side"]).tolist()
    sigmas = np.sort(pd.unique(d["sigma"].astype(float)))
    runs = list(pd.unique(d["run"]))
    lo, hi = (0.0, 1.0) if metric == "minmax" else (np.nanmin(d["value"]), np.nanmax(d["value"]))

    fig = Figure(figsize=(1.5 + 3.2 * len(runs), 1.5 + 0.2 * min(len(layers), 150)))
    axes = fig.subplots(1, len(runs), sharey=True, squeeze=False)[0]
    x_edges, y_edges = _log_edges(sigmas), np.arange(len(layers) + 1)
    for ax, run in zip(axes, runs):
        grid = (d[d["run"] == run].pivot_table(index="layer", columns="sigma", values="value")
                .reindex(index=layers, columns=sigmas))
        mesh = ax.pcolormesh(x_edges, y_edges, grid.to_numpy(dtype=float), cmap="viridis",
                             vmin=lo, vmax=hi)
        for k in range(1, len(layers)):
            if sections[k] != sections[k - 1]:
                ax.axhline(k, color="white", linewidth=1.5)
        ax.set_xscale("log")
        ax.set_xlabel("sigma")
        ax.set_title(run)
    step = max(1, int(np.ceil(len(layers) / MAX_LAYER_LABELS)))
    axes[0].set_yticks(np.arange(0, len(layers), step) + 0.5, layers[::step], fontsize=7)
    axes[0].set_ylim(len(layers), 0)
    axes[0].set_ylabel("layer")
    fig.colorbar(mesh, ax=list(axes), label=metric)
    if title:
        fig.suptitle(title)
    return _save_png(fig, path)
