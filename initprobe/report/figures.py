"""Figures drawn from long-form tables (`initprobe.schema`), saved as PNG files atomically.

Figures are built on `matplotlib.figure.Figure` directly (no pyplot state), so drawing is safe in
scripts, tests and worker processes alike.
"""

import io
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

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


def _panels(n: int, width: float = 4.2, height: float = 3.4, sharey: bool = False):
    fig = Figure(figsize=(width * n, height), layout="constrained")
    return fig, fig.subplots(1, n, sharey=sharey, squeeze=False)[0]


def relfid_figure(df: pd.DataFrame, path: str | Path) -> Path:
    """GDD's rel- vs abs-FD figure from a `relfid_sweep` table: left, the teacher's step sweep;
    right, the two-step sigma_mid sweep; in each, abs_fd (to the data) and rel_fd (to the
    student's one-step samples) side by side, and the student's own abs_fd as a dotted line.
    Log axes: distances span orders of magnitude across sampler configurations."""
    import seaborn as sns
    network = df["network"].iloc[0]
    ylabel = "FID" if network == "inception" else f"Frechet distance ({network} features)"
    student = df[(df["run"] == "student one-step") & (df["metric"] == "abs_fd")]["value"]
    fig, axes = _panels(2)
    for ax, sweep in zip(axes, ["steps", "sigma_mid"]):
        d = df[df["sweep"] == sweep]
        if d.empty:
            raise UserError(f"no {sweep} rows to plot; the sweep needs at least one value")
        sns.lineplot(d, x=sweep, y="value", hue="metric", hue_order=["abs_fd", "rel_fd"],
                     marker="o", ax=ax)
        if not student.empty:
            ax.axhline(student.iloc[0], color="gray", linestyle=":", label="student abs_fd")
        if sweep == "steps":
            ax.set_xticks(sorted(d["steps"].unique()))
            ax.set_xlabel(f"teacher {d['sampler'].iloc[0]} steps")
        else:
            ax.set_xscale("log")
            mids = sorted(d["sigma_mid"].unique())
            ax.set_xticks(mids, [f"{m:g}" for m in mids])
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("two-step sigma_mid")
        ax.set_yscale("log")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
    fig.suptitle(f"abs (to data) and rel (to the one-step student) Frechet distance, "
                 f"n={int(df['n'].iloc[0])}")
    return _save_png(fig, path)


def cka_matrix_heatmap(df: pd.DataFrame, path: str | Path) -> Path:
    """Layer x layer CKA (rows: the first network's layers, columns: the second's, both in
    network order) on a fixed 0..1 color scale, from a `similarity.cka_matrix` table."""
    metric = df["metric"].iloc[0]
    rows, cols = list(pd.unique(df["layer"])), list(pd.unique(df["layer_b"]))
    grid = df.pivot_table(index="layer", columns="layer_b", values="value").reindex(
        index=rows, columns=cols)
    side = 2.5 + 0.3 * max(len(rows), len(cols))
    fig = Figure(figsize=(side + 1, side), layout="constrained")
    ax = fig.subplots()
    mesh = ax.pcolormesh(grid.to_numpy(dtype=float), cmap="magma", vmin=0, vmax=1)
    ax.set_xticks(np.arange(len(cols)) + 0.5, cols, rotation=90, fontsize=7)
    ax.set_yticks(np.arange(len(rows)) + 0.5, rows, fontsize=7)
    ax.set_ylim(len(rows), 0)
    run = str(df["run"].iloc[0])
    first, _, second = run.partition(" vs ")
    ax.set_ylabel(first or "A")
    ax.set_xlabel(second or "B")
    ax.set_title(f"{metric}, sigma = {df['sigma'].iloc[0]:g}")
    fig.colorbar(mesh, ax=ax, label=metric)
    return _save_png(fig, path)


def cka_diagonal_figure(df: pd.DataFrame, path: str | Path) -> Path:
    """Matched-layer CKA across sigma from a `similarity.cka_diagonal` table: left, a layers x
    sigma heatmap (0..1 scale, layers in network order); right, one line per layer (colored by
    network order, encoder light to decoder dark)."""
    metric = df["metric"].iloc[0]
    layers = list(pd.unique(df["layer"]))
    sigmas = np.sort(pd.unique(df["sigma"].astype(float)))
    grid = df.pivot_table(index="layer", columns="sigma", values="value").reindex(
        index=layers, columns=sigmas)
    fig = Figure(figsize=(11, 1.5 + 0.22 * max(len(layers), 12)), layout="constrained")
    heat, lines = fig.subplots(1, 2, width_ratios=[1.2, 1])
    mesh = heat.pcolormesh(_log_edges(sigmas), np.arange(len(layers) + 1),
                           grid.to_numpy(dtype=float), cmap="magma", vmin=0, vmax=1)
    heat.set_xscale("log")
    heat.set_yticks(np.arange(len(layers)) + 0.5, layers, fontsize=7)
    heat.set_ylim(len(layers), 0)
    heat.set_xlabel("sigma")
    fig.colorbar(mesh, ax=heat, label=metric)
    colors = colormaps["viridis"](np.linspace(0.9, 0.1, len(layers)))
    for color, layer in zip(colors, layers):
        lines.plot(sigmas, grid.loc[layer].to_numpy(dtype=float), color=color, label=layer,
                   linewidth=1.2)
    lines.set_xscale("log")
    lines.set_xlabel("sigma")
    lines.set_ylabel(metric)
    lines.legend(fontsize=6, ncol=2)
    fig.suptitle(f"{df['run'].iloc[0]}: matched-layer {metric} across noise levels")
    return _save_png(fig, path)


def spectra_figure(df: pd.DataFrame, path: str | Path) -> Path:
    """Radially averaged power spectra (log power vs frequency) from a
    `frequency.spectrum_analysis` table: first panel, the data and every network's one-step and
    Heun samples (one line per source); then, per network, its denoiser outputs
    D(x + sigma n; sigma) at each sigma (color = log sigma) with the data dashed."""
    power = df[df["metric"] == "power"]
    data = power[power["source"] == "data"]
    nets = [r for r in pd.unique(power["run"]) if r != "data"]
    fig, axes = _panels(1 + len(nets), sharey=True)
    axes[0].plot(data["freq"], data["value"], "k--", label="data")
    samples = power[power["source"].isin(["one-step", "heun"])]
    for (run, source), d in samples.groupby(["run", "source"], sort=False):
        axes[0].plot(d["freq"], d["value"], marker=".", label=f"{run} {source}")
    axes[0].set_title("samples")
    axes[0].legend(fontsize=7)
    norm = LogNorm(*_sigma_range(power))
    for ax, run in zip(axes[1:], nets):
        d = power[(power["run"] == run) & (power["source"] == "denoised")]
        for sigma, ds in d.groupby("sigma"):
            ax.plot(ds["freq"], ds["value"], color=colormaps["viridis"](norm(sigma)),
                    linewidth=1)
        ax.plot(data["freq"], data["value"], "k--", label="data")
        ax.set_title(f"{run}: D(x + sigma n; sigma)")
        ax.legend(fontsize=7)
        fig.colorbar(ScalarMappable(norm, "viridis"), ax=ax, label="sigma")
    for ax in axes:
        ax.set_yscale("log")
        ax.set_xlabel("frequency (cycles / pixel)")
    axes[0].set_ylabel("power per pixel")
    return _save_png(fig, path)


def _sigma_range(df: pd.DataFrame) -> tuple[float, float]:
    s = df["sigma"].dropna().astype(float)
    if s.empty:
        raise UserError("no denoiser rows with a sigma to plot; run the denoiser spectra first")
    return float(s.min()), float(s.max())


def band_error_figure(df: pd.DataFrame, path: str | Path) -> Path:
    """Per network: the denoiser's relative error per frequency band vs sigma (log-log, one line
    per band); last panel: the samples' band mismatch to the data spectrum (grouped bars)."""
    import seaborn as sns
    err = df[df["metric"] == "rel_error"]
    mismatch = df[df["metric"] == "band_mismatch"]
    nets = list(pd.unique(err["run"]))
    bands = list(pd.unique(err["band"]))
    fig, axes = _panels(len(nets) + 1)
    for ax, run in zip(axes, nets):
        sns.lineplot(err[err["run"] == run], x="sigma", y="value", hue="band", hue_order=bands,
                     marker="o", ax=ax)
        ax.axhline(1.0, color="gray", linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylabel("error power / data power in band")
        ax.set_title(f"{run}: denoiser error by band")
    bars = mismatch.assign(sample=mismatch["run"].astype(str) + " " + mismatch["source"])
    sns.barplot(bars, x="sample", y="value", hue="band", hue_order=bands, ax=axes[-1])
    axes[-1].set_ylabel("|P_samples - P_data| / P_data in band")
    axes[-1].set_xlabel("")
    axes[-1].tick_params(axis="x", labelrotation=30, labelsize=7)
    axes[-1].legend(fontsize=7, title="band")
    axes[-1].set_title("samples: spectral mismatch by band")
    return _save_png(fig, path)
