"""Linear-probe cost per checkpoint: `linear_probe` (hooked, pooled forward passes at every sigma,
then one cross-validated classifier per layer and sigma) vs plain forward passes of the same
network over the same images at the same sigmas, timed in this process (CPU seconds of the
process, `time.process_time`, so that other jobs on a shared machine do not skew the ratios; run
it with one thread). Prints the total ratio
and its two parts: feature extraction (`pooled_features`) and classifier fitting. The extraction
part is the probe's own overhead on the network (target <= 1.15x of the plain forward); the
fitting part grows with layers x sigmas and does not depend on the network's size.

Usage: OMP_NUM_THREADS=1 python benchmarks/linear_probe_cost.py [--preset tiny] [--n 1000]
       [--sigmas 6] [--classifier ridge]
"""

import argparse
import statistics
import time

import numpy as np
import torch

from initprobe.data import NATIVE_SIZE, load_dataset
from initprobe.measure.analyses.linear_probe import (
    fit_score,
    linear_probe,
    pooled_features,
    split,
)
from initprobe.measure.analyses.profiles import (
    DEFAULT_LAYERS,
    ProbeOptions,
    fixed_noise,
    select_layers,
)
from initprobe.nets.precond import Denoiser
from initprobe.nets.unet import PRESETS, UNetConfig


def seconds(fn) -> float:
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    ap.add_argument("--n", type=int, default=1000, help="labelled images")
    ap.add_argument("--sigmas", type=int, default=6, help="noise levels, log-spaced 0.05..5")
    ap.add_argument("--classifier", default="ridge", choices=["ridge", "logistic"])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3, help="alternating timings (median taken)")
    args = ap.parse_args()
    size = NATIVE_SIZE["digits"] if args.preset == "tiny" else NATIVE_SIZE["mnist"]
    ds = load_dataset("digits", split="train", size=size)
    reps = -(-args.n // len(ds))  # digits has 1437 training images: repeat for larger n
    images, labels = ds.images.repeat(reps, 1, 1, 1)[:args.n], ds.labels.repeat(reps)[:args.n]
    torch.manual_seed(0)
    net = Denoiser(UNetConfig(img_resolution=size, **PRESETS[args.preset])).eval()
    sigmas = np.geomspace(0.05, 5.0, args.sigmas).tolist()
    ids = select_layers(net, DEFAULT_LAYERS)
    noise = fixed_noise(images, 0)
    y = labels.numpy()
    train, test = split(y, 0.5, 0)

    @torch.no_grad()
    def plain():
        for s in sigmas:
            for x, n in zip(images.split(args.batch), noise.split(args.batch)):
                net(x + s * n, s)

    def extract():
        return [pooled_features(net, images, noise, s, ids, args.batch) for s in sigmas]

    def fit(features):
        for per_layer in features:
            for layer in ids:
                fit_score(per_layer[layer], y, train, test, args.classifier)

    def probe():
        linear_probe(net, images, labels, ProbeOptions(sigmas, batch=args.batch),
                     args.classifier)

    plain(), extract()  # warm-up
    feats = extract()
    t_plain, t_extract, t_fit, t_probe = [], [], [], []
    for _ in range(args.rounds):  # alternate, so drifting machine load hits all alike
        t_plain.append(seconds(plain))
        t_extract.append(seconds(extract))
        t_fit.append(seconds(lambda: fit(feats)))
        t_probe.append(seconds(probe))
    base = statistics.median(t_plain)
    print(f"preset {args.preset} ({size}x{size}), {args.n} images x {len(sigmas)} sigmas, "
          f"{len(ids)} layers, {args.classifier}, {torch.get_num_threads()} thread(s); plain "
          f"forward {base:.3f} CPU s per checkpoint")
    print(f"feature extraction: {statistics.median(t_extract) / base:.2f}x the plain forward "
          f"(target <= 1.15x)")
    print(f"classifier fitting: {statistics.median(t_fit) / base:.2f}x "
          f"({statistics.median(t_fit) / (len(ids) * len(sigmas)) * 1e3:.1f} ms per fit)")
    print(f"linear probe per checkpoint: {statistics.median(t_probe):.2f} CPU s = "
          f"{statistics.median(t_probe) / base:.2f}x the plain forward")


if __name__ == "__main__":
    main()
