"""Inference-time scaling with a trained ratio estimator as verifier (DiffRatio; *reconstructed*).

A trained estimator d(x, sigma) ~ log p_student_sigma(x) - log p_data_sigma(x), so
w(x) = exp(-d(x, sigma_small)) ~ p_data / p_student is an importance weight that moves student
samples toward the data. It is evaluated on the clean sample x with the noise label sigma_small
(no noise is added, so a choice is deterministic given the candidates); pick sigma_small inside
the range of noise levels the estimator was trained on.

- `best_of_k`: every output draws K candidates and keeps the one with the largest weight
  (the smallest d, the most data-like; `choose_best` picks among candidates already drawn);
- `importance_resample`: draws n of a pool of samples with replacement, with probabilities
  proportional to exp(-d) (self-normalized importance resampling: where the estimator is exact,
  the resampled set tends to p_student * w, i.e. to p_data, as the pool grows).
"""

import torch


@torch.no_grad()
def ratio_logits(ratio_net, x: torch.Tensor, sigma_small: float, batch: int = 256) -> torch.Tensor:
    """d(x, sigma_small) for every sample, evaluated in batches."""
    return torch.cat([ratio_net(xb, sigma_small).float() for xb in x.split(batch)])


def choose_best(candidates: torch.Tensor, d: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """`candidates` [N, K, ...] with their d [N, K]: per output the candidate with the smallest d
    among its first `k` (all K by default), [N, ...]."""
    k = d.shape[1] if k is None else k
    best = d[:, :k].argmin(dim=1).to(candidates.device)
    return candidates[torch.arange(len(d), device=candidates.device), best]


@torch.no_grad()
def best_of_k(gen_fn, ratio_net, z_groups: torch.Tensor, sigma_small: float,
              batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """`z_groups` [N, K, *latent]: output i is the candidate gen_fn(z_groups[i, k]) with the
    smallest d. Returns (chosen [N, ...], d of all candidates [N, K])."""
    n, k = z_groups.shape[:2]
    x = torch.cat([gen_fn(zb) for zb in z_groups.flatten(0, 1).split(batch)])
    d = ratio_logits(ratio_net, x, sigma_small, batch).reshape(n, k)
    return choose_best(x.reshape(n, k, *x.shape[1:]), d), d


@torch.no_grad()
def importance_resample(samples: torch.Tensor, ratio_net, sigma_small: float, n: int,
                        generator: torch.Generator | None = None, batch: int = 256):
    """Draw `n` of `samples` with replacement, P(i) = softmax(-d)_i.
    Returns (resampled [n, ...], chosen indices [n], probabilities [len(samples)])."""
    d = ratio_logits(ratio_net, samples, sigma_small, batch)
    p = torch.softmax(-d.double(), dim=0).cpu()
    idx = torch.multinomial(p, n, replacement=True, generator=generator)
    return samples[idx.to(samples.device)], idx, p
