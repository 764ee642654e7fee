"""Feature-extraction throughput: the quality pipeline's streaming path (`quality.summarize`:
features, labels, float64 streaming mean/covariance, kept subset, class histogram) vs a bare
forward of the same feature network over the same batches. Target: throughput ratio >= 0.9x.

Usage: OMP_NUM_THREADS=1 python benchmarks/feature_throughput.py [--size 32] [--n 4096]
"""

import argparse
import statistics
import time

import torch

from initprobe.measure.analyses.quality import summarize
from initprobe.measure.features.classifier import FeatureNet
from initprobe.measure.features.extractors import Extractor, weights_hash


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=32, help="image side (MNIST-sized by default)")
    ap.add_argument("--n", type=int, default=4096, help="images per timing")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=5, help="alternating timings (median taken)")
    args = ap.parse_args()
    torch.manual_seed(0)
    fnet = FeatureNet(1, 10).eval()  # throughput does not depend on training
    extractor = Extractor("classifier", fnet.body, weights_hash(fnet), fnet.head, 10)
    batches = torch.rand(args.n, 1, args.size, args.size).mul(2).sub(1).split(args.batch)

    @torch.no_grad()
    def bare():
        for b in batches:
            fnet.body(b)

    def streamed():
        summarize(extractor, batches)

    bare(), streamed()  # warm-up
    ratios, rates = [], []
    for _ in range(args.rounds):  # alternate, so drifting machine load hits both alike
        t0 = time.perf_counter()
        bare()
        t1 = time.perf_counter()
        streamed()
        t2 = time.perf_counter()
        ratios.append((t1 - t0) / (t2 - t1))  # throughput ratio = inverse time ratio
        rates.append(args.n / (t2 - t1))
    print(f"classifier features on {args.size}x{args.size} images, {args.n} images in batches "
          f"of {args.batch}, {torch.get_num_threads()} thread(s); streamed "
          f"{statistics.median(rates):.0f} images/s")
    print(f"feature throughput vs bare forward: {statistics.median(ratios):.3f}x "
          f"(target >= 0.9x)")


if __name__ == "__main__":
    main()
