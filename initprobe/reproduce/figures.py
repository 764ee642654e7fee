"""The figures of a study, drawn from its measurement tables (`measures`), one PNG per
measurement that has a figure, named `<study>-<measurement>.png`.

`FIGURES[measurement]` = (draw, caption): `draw(tables, path, first_seed)` writes the PNG from the
study's tables (name -> DataFrame); existing drawing functions of `initprobe.report.figures` are
reused where the table fits them. Sample grids of the runs (first seed) are copied next to them.
"""

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from ..report.figures import _save_png, band_error_figure, layer_sigma_heatmap, relfid_figure
from ..runio import atomic_write_bytes


def _panels(n: int, width: float = 4.6, height: float = 3.6) -> tuple[Figure, list]:
    fig = Figure(figsize=(width * n, height), layout="constrained")
    return fig, list(fig.subplots(1, n, squeeze=False)[0])


def _metric(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    return df[(df["metric"] == metric) & df["x"].isna()]


def _group_order(df: pd.DataFrame) -> list[str]:
    return list(pd.unique(df["run"]))


def _strip(ax, df: pd.DataFrame, order: list[str], log: bool = False) -> None:
    """Mean bar with the per-seed values as points, one column per group."""
    import seaborn as sns
    sns.barplot(df, x="run", y="value", order=order, errorbar=None, color="#bcd", ax=ax)
    sns.stripplot(df, x="run", y="value", order=order, color="k", size=4, ax=ax)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("")
    ax.tick_params(axis="x", labelrotation=40, labelsize=7)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")


def quality_figure(tables: dict, path: Path, first_seed: int) -> Path:
    """Learning curves of fd_classifier and coverage vs images seen at every evaluation budget
    (mean over seeds, band: sd; images seen on a log axis); final fd_classifier per run (teacher
    baselines dashed); final precision, recall and coverage."""
    import seaborn as sns
    final, curves = tables["quality"], tables["curves"]
    order = _group_order(final)
    fig, (ax_c, ax_v, ax_f, ax_p) = _panels(4)
    curves = curves[curves["x"] > 0]  # the untrained start has no place on a log axis
    for ax, metric, label in ((ax_c, "fd_classifier", "fd_classifier (lower is better)"),
                              (ax_v, "coverage", "coverage (higher is better)")):
        c = curves[curves["metric"] == metric]
        sns.lineplot(c, x="x", y="value", hue="run", hue_order=order, errorbar="sd",
                     marker="o", ax=ax, legend=ax is ax_c)
        ax.set_xscale("log")
        ax.set_xlabel("images seen")
        ax.set_ylabel(label)
    ax_c.set_yscale("log")
    ax_c.legend(fontsize=7)
    _strip(ax_f, _metric(final, "fd_classifier"), order, log=True)
    ax_f.set_ylabel("final fd_classifier")
    if "baseline" in tables:
        base = _metric(tables["baseline"], "fd_classifier")
        for (group, v), style in zip(base.groupby("run")["value"].mean().items(), ("--", ":")):
            ax_f.axhline(v, color="firebrick", linestyle=style, label=group)
        ax_f.legend(fontsize=7)
    pr = final[final["metric"].isin(["precision", "recall", "coverage"])]
    sns.barplot(pr, x="run", y="value", hue="metric", order=order, errorbar="sd", ax=ax_p)
    ax_p.set_ylim(0, 1.05)
    ax_p.set_xlabel("")
    ax_p.tick_params(axis="x", labelrotation=40, labelsize=7)
    ax_p.legend(fontsize=7)
    return _save_png(fig, path)


def memory_figure(tables: dict, path: Path, first_seed: int) -> Path:
    """Peak tensor memory of a few training steps per run."""
    d = tables["memory"]
    fig, (ax,) = _panels(1)
    _strip(ax, d, _group_order(d))
    ax.set_ylabel("peak tensor memory (MiB)")
    return _save_png(fig, path)


def _fd_against(ax, tables: dict, x: pd.DataFrame, order: list[str], xlabel: str) -> None:
    """Final fd_classifier against a per-group metric `x` (group means, sd bars)."""
    fd = _metric(tables["quality"], "fd_classifier").groupby("run")["value"]
    xs = x.groupby("run")["value"]
    colors = colormaps["tab10"](np.arange(len(order)) % 10)
    for color, g in zip(colors, order):
        ax.errorbar(xs.mean()[g], fd.mean()[g], xerr=xs.std()[g], yerr=fd.std()[g], fmt="o",
                    color=color, label=g, capsize=2)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("final fd_classifier")


def cka_figure(tables: dict, path: Path, first_seed: int) -> Path:
    """Left: matched-layer CKA to the teacher before and after training per run; right: final
    fd_classifier against CKA after training (group means, sd bars)."""
    import seaborn as sns
    d = tables["cka"]
    order = _group_order(d)
    fig, (ax_b, ax_s) = _panels(2, width=5.5)
    sns.barplot(d, x="run", y="value", hue="metric", order=order, errorbar="sd", ax=ax_b)
    ax_b.set_ylim(0, 1.05)
    ax_b.set_ylabel("matched-layer CKA to the teacher")
    ax_b.set_xlabel("")
    ax_b.tick_params(axis="x", labelrotation=40, labelsize=7)
    if "quality" in tables:
        _fd_against(ax_s, tables, d[d["metric"] == "cka_after"], order,
                    "CKA to the teacher after training")
        ax_s.legend(fontsize=6)
    return _save_png(fig, path)


def _first_seed(df: pd.DataFrame, first_seed: int) -> pd.DataFrame:
    return df[df["seed"].isna() | (df["seed"] == first_seed)]


def activations_figure(tables: dict, path: Path, first_seed: int) -> Path:
    """The activation-vs-sigma heatmap (min-max per layer) of the teacher and of each run."""
    d = _first_seed(tables["activation-profiles"], first_seed)
    return layer_sigma_heatmap(d, path, title=f"mean |activation|, min-max per layer "
                                              f"(runs: seed {first_seed})")


def probe_figure(tables: dict, path: Path, first_seed: int) -> Path:
    d = _first_seed(tables["probe-profiles"], first_seed)
    return layer_sigma_heatmap(d, path, title=f"teacher: mean |activation| vs sigma, min-max "
                                              f"per layer (noise seed {first_seed})")


def relfid_study_figure(tables: dict, path: Path, first_seed: int) -> Path:
    return relfid_figure(tables["relfid-sweep"], path)


def spectra_figure(tables: dict, path: Path, first_seed: int) -> Path:
    """Left: radial power spectra of the data and of each run's one-step samples at init and
    after training (first seed); right: the teacher's denoiser output per sigma."""
    d = tables["spectra-detail"]
    power = d[d["metric"] == "power"]
    data = power[power["run"] == "data"]
    fig, (ax_s, ax_d) = _panels(2, width=5.2)
    ax_s.plot(data["freq"], data["value"], "k--", label="data")
    samples = power[(power["source"] == "one-step") & (power["seed"] == first_seed)]
    for run, g in samples.groupby("run", sort=False):
        ax_s.plot(g["freq"], g["value"], marker=".", label=run,
                  linestyle=":" if run.endswith("@init") else "-")
    ax_s.set_title("one-step samples")
    ax_s.legend(fontsize=7)
    den = power[(power["run"] == "teacher") & (power["source"] == "denoised")]
    norm = LogNorm(den["sigma"].min(), den["sigma"].max())
    for sigma, g in den.groupby("sigma"):
        ax_d.plot(g["freq"], g["value"], color=colormaps["viridis"](norm(sigma)), linewidth=1)
    ax_d.plot(data["freq"], data["value"], "k--", label="data")
    ax_d.set_title("teacher: D(x + sigma n; sigma), color = sigma")
    fig.colorbar(ScalarMappable(norm, "viridis"), ax=ax_d, label="sigma")
    for ax in (ax_s, ax_d):
        ax.set_yscale("log")
        ax.set_xlabel("frequency (cycles / pixel)")
    ax_s.set_ylabel("power per pixel")
    return _save_png(fig, path)


def bands_figure(tables: dict, path: Path, first_seed: int) -> Path:
    d = tables["spectra-detail"]
    return band_error_figure(d[d["metric"].isin(["rel_error", "band_mismatch"])], path)


def best_of_k_figure(tables: dict, path: Path, first_seed: int) -> Path:
    """fd_classifier and coverage against K for best-of-K and importance resampling (mean and
    sd over the runs' seeds)."""
    import seaborn as sns
    d = tables["best_of_k"]
    fig, axes = _panels(2)
    for ax, metric in zip(axes, ("fd_classifier", "coverage")):
        sns.lineplot(d[d["metric"] == metric], x="x", y="value", hue="run", errorbar="sd",
                     marker="o", ax=ax)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("K (candidates per output / pool factor)")
        ax.set_ylabel(metric)
    return _save_png(fig, path)


def _seed_curves(detail: pd.DataFrame) -> pd.DataFrame:
    """Best-layer accuracy curves of every (run, seed) of a linear-probe detail table."""
    from ..measure.analyses.linear_probe import best_layer_curves
    return pd.concat([best_layer_curves(d) for _, d in detail.groupby("seed", sort=False)],
                     ignore_index=True)


def linear_probe_figure(tables: dict, path: Path, first_seed: int) -> Path:
    """Best layer's probe accuracy vs sigma at init and after training (mean and sd over
    seeds, chance dashed); decodability at init against final fd_classifier."""
    import seaborn as sns

    from ..report.probe_figures import chance_level
    detail = tables["linear-probe-layers"]
    curves = _seed_curves(detail)
    order = _group_order(tables["linear_probe"])
    fig, (ax_i, ax_a, ax_s) = _panels(3, width=5.0)
    for ax, at_init, name in ((ax_i, True, "at init"), (ax_a, False, "after training")):
        d = curves[curves["run"].str.endswith("@init") == at_init]
        d = d.assign(run=d["run"].str.removesuffix("@init"))   # the study's run label
        sns.lineplot(d, x="sigma", y="value", hue="run", hue_order=order, errorbar="sd",
                     marker="o", ax=ax, legend=at_init)
        ax.axhline(chance_level(detail), color="gray", linestyle="--")
        ax.set_xscale("log")
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("test accuracy of the best layer")
        ax.set_title(name)
    ax_i.legend(fontsize=6)
    if "quality" in tables:
        _fd_against(ax_s, tables, _metric(tables["linear_probe"], "probe_acc_init"), order,
                    "probe accuracy at init (best layer, mean over sigma)")
    return _save_png(fig, path)


def linear_probe_layers_figure(tables: dict, path: Path, first_seed: int) -> Path:
    from ..report.probe_figures import accuracy_heatmaps
    d = tables["linear-probe-layers"]
    return accuracy_heatmaps(d[d["seed"] == first_seed], path, ncols=4,
                             title=f"linear probe test accuracy per layer and sigma, at init "
                                   f"and after training (seed {first_seed})")


# measurement -> [(file suffix, draw, caption)]
FIGURES = {
    "quality": [("quality", quality_figure, "learning curves (fd_classifier and coverage vs "
                 "images seen at every evaluation budget, log axis; mean and sd band over "
                 "seeds), final fd_classifier per run with the teacher's own "
                 "one-step and Heun outputs as dashed lines where measured, and final "
                 "precision / recall / coverage")],
    "memory": [("memory", memory_figure, "peak tensor memory of a few training steps per run")],
    "cka": [("cka", cka_figure, "matched-layer CKA to the teacher before and after training, "
             "and final fd_classifier against CKA after training")],
    "activations": [("activations", activations_figure, "activation-vs-sigma profiles "
                     "(min-max per layer) of the teacher and of each trained run")],
    "relfid": [("relfid", relfid_study_figure, "abs (to data) and rel (to the one-step "
                "student) Frechet distance of the teacher's N-step and two-step samplers")],
    "probe": [("probe", probe_figure, "the teacher's layer activation vs noise level heatmap")],
    "spectra": [("spectra", spectra_figure, "radial power spectra of data, of one-step samples "
                 "at init and after training, and of the teacher's denoiser per sigma"),
                ("bands", bands_figure, "the teacher denoiser's error per frequency band vs "
                 "sigma, and the samples' spectral mismatch per band")],
    "best_of_k": [("best_of_k", best_of_k_figure, "quality against K for best-of-K and "
                   "importance resampling with the ratio estimator")],
    "linear_probe": [("linear_probe", linear_probe_figure, "linear-probe accuracy of each "
                      "run's best layer against sigma at init and after training, and "
                      "decodability at init against final fd_classifier"),
                     ("linear_probe_layers", linear_probe_layers_figure, "linear-probe "
                      "accuracy heatmaps, layers x sigma, of every run at init and after "
                      "training (first seed)")],
}


def figure_files(study) -> list[tuple[str, str]]:
    """(file name, caption) of every figure of a study."""
    return [(f"{study.stem}-{suffix}.png", caption) for name in study.measure
            for suffix, _, caption in FIGURES.get(name, [])]


def draw_study(study, tables: dict, folder: Path, only_missing: bool) -> list[Path]:
    """Draw the study's figures into `folder` (skipping existing files if `only_missing`)."""
    written = []
    for name in study.measure:
        for suffix, draw, _ in FIGURES.get(name, []):
            path = Path(folder) / f"{study.stem}-{suffix}.png"
            if not (only_missing and path.exists()):
                written.append(draw(tables, path, study.seeds[0]))
    return written


def short(images: int) -> str:
    """1000 -> 1k, 100000 -> 100k, 1500 -> 1.5k."""
    return f"{images / 1000:g}k" if images >= 1000 else str(images)


def copy_samples(grids: dict[str, Path], folder: Path) -> None:
    """Copy sample grids (name -> PNG) into `folder/samples/<name>.png`."""
    for name, src in grids.items():
        if src.exists():
            atomic_write_bytes(Path(folder) / "samples" / f"{name}.png", src.read_bytes())
