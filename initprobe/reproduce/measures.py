"""The measurements a study can ask for (`[measure.<name>]`), each built on the library's own
analysis functions and returning long-form tables.

Each measurement returns `{name: main table, ...details}`, every table in the shared long-form
schema (`initprobe.schema`). The main table, under the measurement's own name, is what verdict
rules read: its rows fill `run` (the group a rule names: a run label, a teacher sampler, a sweep),
`seed` (empty: none), `metric` and `value`, and an extra column `x` after the shared ones (the
sweep position, images seen or K; empty: none). Details (other names) keep the full analysis
tables for figures.

Measurements (main-table groups, the `run` column: metrics):
- `quality` (each run label: the last evaluation of each run: fd_classifier, precision, recall,
  coverage, classes_covered, ...); detail `curves`: every evaluation against images seen;
- `baseline` (`teacher one-step`, `teacher heun`: the same metrics for the teacher's own
  D(80 z; 80) and its Heun sampler, same seeds and classifier as the runs);
- `cka` (each run label: `cka_before`, `cka_after`, matched-layer linear CKA to the teacher,
  mean over the blocks' last convs and `sigmas`, of the run's initial and trained network);
- `activations` (each run label: `act_profile_corr`, the Pearson correlation across sigma of
  the run's min-max activation profile with the teacher's, mean over layers);
- `relfid` (`<sampler> steps` at x = N, `two-step sigma_mid` at x = sigma_mid, `student
  one-step`, `teacher one-step`: `abs_fd`, `rel_fd` of `relfid_sweep` against each seed's
  student of run `arm`);
- `probe` (`teacher`: `peak_range_decades`, log10 of the largest over the smallest sigma at
  which a layer's activation peaks, and `distinct_peaks`; the study's seeds are noise seeds);
- `spectra` (each run label and `<label>@init`: `band_mismatch_{low,mid,high,mean}` of its
  one-step samples against the data spectrum);
- `memory` (each run label: `peak_memory_mib` of a few training steps, `memory.peak_bytes` in
  the trainer's `TRAINING` range: objective, auxiliary networks, EMA, optimizer and steps, not
  the teacher, the generator's weights or the data loaded before it);
- `best_of_k` (`best-of-K`, `resample-K` at x = K: quality of best-of-K and importance-resampled
  samples scored by run `arm`'s ratio estimator);
- `linear_probe` (each run label: `probe_acc_init`, `probe_acc_after`, the linear-probe test
  accuracy of the best layer averaged over `sigmas` (`measure.analyses.linear_probe`) of the run's
  initial and trained network on the first `n_images` training images, split and noise seeded
  by the run's seed, and `probe_acc_kept` = after / init); detail `linear-probe-layers`.
"""

import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch

from ..diffusion import generate, latents
from ..errors import UserError
from ..measure.analyses.activations import probe_activations, probe_many
from ..measure.analyses.frequency import denoiser_spectra, mean_spectrum
from ..measure.analyses.linear_probe import best_layer_accuracy
from ..measure.analyses.linear_probe import probe_many as linear_probe_many
from ..measure.analyses.profiles import ProbeOptions
from ..measure.analyses.quality import quality_metrics, sample_batches, summarize, summarize_samples
from ..measure.analyses.relfid import RelFidOptions, relfid_sweep
from ..measure.analyses.similarity import cka_diagonal
from ..measure.metrics.spectrum import band_edges, band_error
from ..runio import read_jsonl
from ..schema import COLUMNS, conform, frame
from ..train.onestep import TRAINING, train_onestep
from ..train.ratio import run_estimator
from ..train.verifier import choose_best, importance_resample, ratio_logits
from .memory import peak_bytes

QUALITY = ("fd_classifier", "kid_classifier", "precision", "recall", "density", "coverage",
           "classes_covered", "class_entropy", "class_kl_uniform", "mean_confidence",
           "label_accuracy")   # label_accuracy: class-conditional runs only
BANDS = ("low", "mid", "high")
LAYOUT = [*COLUMNS, "x"]   # a main table's columns (also in a study folder's cache key)


def rows(run: str, seed, values: dict, x: float = math.nan) -> list[dict]:
    return [{"run": run, "seed": seed, "x": x, "metric": k, "value": float(v)}
            for k, v in values.items()]


def table(records: list[dict]) -> pd.DataFrame:
    """A main table (or `curves`) from `rows` records; every LAYOUT column even when empty."""
    return frame(records).reindex(columns=LAYOUT)


def _quality_values(record: dict) -> dict:
    return {k: record[k] for k in QUALITY if k in record}


def quality(sr, opts) -> dict[str, pd.DataFrame]:
    finals, curves = [], []
    for label, seed, cfg in sr.items():
        last = -(-cfg.images // cfg.batch) * cfg.batch   # the study's budget in a longer run
        evals = {r["images_seen"]: r for r in read_jsonl(sr.dir(label, seed) / "metrics.jsonl")
                 if r.get("kind") == "eval" and r["images_seen"] <= last}
        if last not in evals:
            raise UserError(f"{sr.dir(label, seed)}: the run has no evaluation at {cfg.images} "
                            f"images; set the profile's student.eval_n > 0")
        for seen, r in sorted(evals.items()):
            curves += rows(label, seed, _quality_values(r), x=seen)
        finals += rows(label, seed, _quality_values(evals[max(evals)]))
    return {"quality": table(finals), "curves": table(curves)}


def baseline(sr, opts) -> dict[str, pd.DataFrame]:
    ws = sr.ws
    extractor, reference = ws.quality_reference
    n = ws.profile.measure["n"]
    records = []
    for group, sampler in (("teacher one-step", "one-step"), ("teacher heun", "heun")):
        s = summarize_samples(extractor, ws.teacher_net, n, sampler, int(opts["heun_steps"]))
        records += rows(group, math.nan, _quality_values(quality_metrics(s, reference,
                                                                         extractor)))
    return {"baseline": table(records)}


def cka(sr, opts) -> dict[str, pd.DataFrame]:
    ws = sr.ws
    images, records, detail = ws.real_images(), [], []
    for label, seed, cfg in sr.items():
        for stage, net in (("before", ws.init_network(cfg)),
                           ("after", sr.network(label, seed))):
            df = cka_diagonal(ws.teacher_net, net, images, ProbeOptions(opts["sigmas"], batch=128),
                              opts["kernel"]).assign(run=label)
            detail.append(df.assign(seed=seed, stage=stage))
            records += rows(label, seed, {f"cka_{stage}": df["value"].mean()})
    return {"cka": table(records), "cka-layers": pd.concat(detail, ignore_index=True)}


def profile_correlation(profiles: pd.DataFrame, run: str, reference: str) -> float:
    """Mean over layers of the Pearson correlation across sigma of two runs' min-max profiles
    (layers whose profile is constant in either run are left out)."""
    d = profiles[profiles["metric"] == "minmax"]
    wide = d.pivot_table(index=["layer", "sigma"], columns="run", values="value")
    corrs = [g[run].corr(g[reference]) for _, g in wide.groupby(level="layer")]
    return float(np.nanmean(corrs)) if not all(np.isnan(corrs)) else math.nan


def activations(sr, opts) -> dict[str, pd.DataFrame]:
    ws = sr.ws
    images, records, detail = ws.real_images(), [], []
    teacher = probe_many({"teacher": ws.teacher_net}, images, stat=opts["stat"])
    detail.append(teacher.assign(seed=math.nan))
    for label, seed, _ in sr.items():
        df = probe_many({label: sr.network(label, seed)}, images, stat=opts["stat"])
        both = pd.concat([teacher, df], ignore_index=True)
        records += rows(label, seed, {"act_profile_corr": profile_correlation(both, label,
                                                                              "teacher")})
        detail.append(df.assign(seed=seed))
    return {"activations": table(records),
            "activation-profiles": pd.concat(detail, ignore_index=True)}


def relfid(sr, opts) -> dict[str, pd.DataFrame]:
    ws = sr.ws
    extractor, _ = ws.quality_reference
    steps, mids = [int(s) for s in opts["steps"]], [float(m) for m in opts["sigma_mid"]]
    records, detail = [], []
    for seed in sr.study.seeds:
        student = sr.generator(opts["arm"], seed)
        df = relfid_sweep(ws.teacher_net, student, ws.data, extractor,
                          RelFidOptions(steps, mids, ws.profile.measure["n"],
                                        step_sampler=opts["sampler"]))
        detail.append(df.assign(seed=seed))
        for r in df.itertuples():
            group = {"steps": f"{opts['sampler']} steps", "sigma_mid": "two-step sigma_mid",
                     "baseline": r.run}[r.sweep]
            x = {"steps": r.steps, "sigma_mid": r.sigma_mid}.get(r.sweep, math.nan)
            records += rows(group, seed, {r.metric: r.value}, x=float(x))
    return {"relfid": table(records), "relfid-sweep": pd.concat(detail, ignore_index=True)}


def peak_sigmas(profile: pd.DataFrame, stat: str) -> pd.Series:
    """The sigma at which each layer's `stat` is largest."""
    d = profile[profile["metric"] == stat]
    return d.loc[d.groupby("layer", sort=False)["value"].idxmax()].set_index("layer")["sigma"]


def probe(sr, opts) -> dict[str, pd.DataFrame]:
    ws = sr.ws
    records, detail = [], []
    for seed in sr.study.seeds:
        df = probe_activations(ws.teacher_net, ws.real_images(), ProbeOptions(seed=seed),
                               opts["stat"])
        detail.append(df.assign(run="teacher"))
        peaks = peak_sigmas(df, opts["stat"]).astype(float)
        records += rows("teacher", seed, {
            "peak_range_decades": math.log10(peaks.max() / peaks.min()),
            "distinct_peaks": peaks.nunique()})
    return {"probe": table(records), "probe-profiles": pd.concat(detail, ignore_index=True)}


def spectra(sr, opts) -> dict[str, pd.DataFrame]:
    ws = sr.ws
    images, n = ws.real_images(), ws.profile.measure["n"]
    freqs, data_power = mean_spectrum(images.split(256))
    edges = band_edges(len(freqs))
    detail = [pd.DataFrame({"run": "data", "source": "data", "freq": freqs.numpy(),
                            "metric": "power", "value": data_power.numpy()}),
              denoiser_spectra(ws.teacher_net, images, run="teacher")]
    records = []
    for label, seed, cfg in sr.items():
        for group, net in ((f"{label}@init", ws.init_network(cfg)),
                           (label, sr.network(label, seed))):
            _, power = mean_spectrum(sample_batches(net, n, cfg.gen_map))
            mismatch = band_error(power, data_power, edges)
            values = {f"band_mismatch_{b}": mismatch[b] for b in BANDS}
            records += rows(group, seed, {**values, "band_mismatch_mean":
                                          float(np.mean(list(values.values())))})
            detail.append(pd.DataFrame({"run": group, "seed": seed, "source": "one-step",
                                        "freq": freqs.numpy(), "metric": "power",
                                        "value": power.numpy()}))
            detail.append(pd.DataFrame({"run": group, "seed": seed, "source": "one-step",
                                        "band": list(mismatch), "metric": "band_mismatch",
                                        "value": list(mismatch.values())}))
    return {"spectra": table(records),
            "spectra-detail": conform(pd.concat(detail, ignore_index=True))}


def memory(sr, opts) -> dict[str, pd.DataFrame]:
    ws = sr.ws
    records = []
    for label, run in sr.study.runs.items():
        cfg = ws.student_config(run, images=1, seed=sr.study.seeds[0])
        cfg = replace(cfg, images=cfg.batch * int(opts["steps"]), eval_n=0, ckpt_every=10**9,
                      log_every=10**9)
        with tempfile.TemporaryDirectory(dir=ws.root) as out:
            peak = peak_bytes(lambda c=cfg, o=out: train_onestep(c, o, str(ws.device), False),
                              ws.device, TRAINING)
        records += rows(label, math.nan, {"peak_memory_mib": peak / 2**20})
    return {"memory": table(records)}


def best_of_k(sr, opts) -> dict[str, pd.DataFrame]:
    ws = sr.ws
    extractor, reference = ws.quality_reference
    ks, n, sigma = sorted({int(k) for k in opts["k"]}), ws.profile.measure["n"], opts["sigma"]
    records = []
    for seed in sr.study.seeds:
        gen, gen_map = sr.generator(opts["arm"], seed)
        estimator = run_estimator(sr.checkpoint(opts["arm"], seed)).to(ws.device)
        shape = ws.data.shape
        x = generate(gen, latents(range(n * ks[-1]), shape, ws.device), gen_map)
        d = ratio_logits(estimator, x, sigma).reshape(n, ks[-1])
        x = x.reshape(n, ks[-1], *shape)

        def score(images):
            return _quality_values(quality_metrics(summarize(extractor, images.split(256)),
                                                   reference, extractor))
        for k in ks:
            best = choose_best(x, d, k)
            pool = x[:, :k].reshape(n * k, *shape)
            chosen, _, _ = importance_resample(pool, estimator, sigma, n,
                                               torch.Generator().manual_seed(seed))
            records += rows("best-of-K", seed, score(best), x=k)
            records += rows("resample-K", seed, score(chosen), x=k)
    return {"best_of_k": table(records)}


def linear_probe(sr, opts) -> dict[str, pd.DataFrame]:
    ws = sr.ws
    n = int(opts["n_images"])
    images, labels = ws.data.images[:n].to(ws.device), ws.data.labels[:n]
    records, detail = [], []
    for label, seed, cfg in sr.items():
        nets = {f"{label}@init": ws.init_network(cfg), label: sr.network(label, seed)}
        df = linear_probe_many(nets, images, labels, ProbeOptions(opts["sigmas"], seed=seed),
                               opts["classifier"], opts["test_fraction"])
        acc = best_layer_accuracy(df)
        init, after = acc[f"{label}@init"], acc[label]
        records += rows(label, seed, {"probe_acc_init": init, "probe_acc_after": after,
                                      "probe_acc_kept": after / init})
        detail.append(df)
    return {"linear_probe": table(records),
            "linear-probe-layers": pd.concat(detail, ignore_index=True)}


def _labels(study, opts) -> set[str]:
    return set(study.runs)


@dataclass(frozen=True)
class Measurement:
    compute: Callable   # (StudyRuns, options) -> {name: table}
    options: dict       # option -> default (its type is the option's type)
    metrics: tuple[str, ...]
    groups: Callable    # (Study, options) -> the main table's groups (its `run` values)
    needs_runs: bool = True


MEASUREMENTS = {
    "quality": Measurement(quality, {}, QUALITY, _labels),
    "baseline": Measurement(baseline, {"heun_steps": 18}, QUALITY,
                            lambda s, o: {"teacher one-step", "teacher heun"}, False),
    "cka": Measurement(cka, {"sigmas": [0.05, 0.5, 5.0], "kernel": "linear"},
                       ("cka_before", "cka_after"), _labels),
    "activations": Measurement(activations, {"stat": "mean_abs"}, ("act_profile_corr",),
                               _labels),
    "relfid": Measurement(relfid, {"arm": "", "steps": [3, 4, 6, 8, 10],
                                   "sigma_mid": [0.2, 0.5, 0.8, 2.0, 5.0], "sampler": "heun"},
                          ("abs_fd", "rel_fd"),
                          lambda s, o: {f"{o['sampler']} steps", "two-step sigma_mid",
                                        "student one-step", "teacher one-step"}),
    "probe": Measurement(probe, {"stat": "mean_abs"}, ("peak_range_decades", "distinct_peaks"),
                         lambda s, o: {"teacher"}, False),
    "spectra": Measurement(spectra, {}, tuple(f"band_mismatch_{b}" for b in BANDS + ("mean",)),
                           lambda s, o: set(s.runs) | {f"{r}@init" for r in s.runs}),
    "memory": Measurement(memory, {"steps": 4}, ("peak_memory_mib",), _labels, False),
    "best_of_k": Measurement(best_of_k, {"arm": "", "k": [1, 2, 4, 8], "sigma": 0.05}, QUALITY,
                             lambda s, o: {"best-of-K", "resample-K"}),
    "linear_probe": Measurement(linear_probe, {"sigmas": [0.05, 0.2, 0.5, 1.0, 2.0, 5.0],
                                               "n_images": 1000, "classifier": "ridge",
                                               "test_fraction": 0.5},
                                ("probe_acc_init", "probe_acc_after", "probe_acc_kept"),
                                _labels),
}
