"""Layer x layer CKA: `MinibatchCKA` (one stacked pass over all layers) vs a loop over layer
pairs of plain unbiased `cka` calls. Both compute the same unbiased estimator, so the script also
checks that the two matrices agree. Target: speedup >= 10x.

Usage: OMP_NUM_THREADS=1 python benchmarks/cka_bench.py [--layers 16] [--n 2048] [--dim 64]
"""

import argparse
import time

import torch

from initprobe.measure.metrics.cka import MinibatchCKA, cka


def activations(layers: int, n: int, dim: int) -> list[torch.Tensor]:
    """Random layer activations that drift from layer to layer, so CKA values are spread out."""
    g = torch.Generator().manual_seed(0)
    h = torch.randn(n, dim, generator=g)
    acts = []
    for _ in range(layers):
        h = torch.tanh(h @ torch.randn(dim, dim, generator=g) / dim ** 0.5) + 0.3 * h
        acts.append(h.clone())
    return acts


def stacked(acts):
    mb = MinibatchCKA("linear")
    mb.update(acts)
    return mb.compute()


def per_pair(acts):
    return torch.tensor([[cka(x, y, unbiased=True) for y in acts] for x in acts],
                        dtype=torch.float64)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--dim", type=int, default=64)
    args = ap.parse_args()
    acts = activations(args.layers, args.n, args.dim)
    stacked(acts[:2])  # warm-up
    t0 = time.perf_counter()
    fast = stacked(acts)
    t1 = time.perf_counter()
    slow = per_pair(acts)
    t2 = time.perf_counter()
    diff = (fast - slow).abs().max().item()
    print(f"{args.layers} layers, n = {args.n}, dim = {args.dim}, "
          f"{torch.get_num_threads()} thread(s); max |difference| {diff:.1e}")
    print(f"MinibatchCKA stacked pass: {t1 - t0:.2f} s; per-pair cka loop: {t2 - t1:.2f} s")
    print(f"speedup: {(t2 - t1) / (t1 - t0):.1f}x (target >= 10x)")


if __name__ == "__main__":
    main()
