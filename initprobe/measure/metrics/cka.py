"""Centered kernel alignment (CKA) between representations, in float64.

CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) for Gram matrices K, L over the same n
examples. Two HSIC estimators are provided:

- biased: tr(K H L H) / (n - 1)^2 with the centering matrix H = I - 11^T / n;
- unbiased (Song et al. 2012): <U(K), U(L)> / (n (n - 3)), where U is "U-centering"
  (Szekely & Rizzo 2014), which equals Song et al.'s closed form and needs n >= 4.

Because both estimators are inner products of (U-)centered Grams, the HSICs of all layer pairs
come out of one matrix product of stacked, flattened Grams; `MinibatchCKA` uses this to
accumulate the minibatch CKA of Nguyen, Raghu & Kornblith (2021) for every pair of layers.
"""

from collections.abc import Sequence

import torch

from ...errors import UserError

KERNELS = ("linear", "rbf")


def gram(x: torch.Tensor, kernel: str = "linear", rbf_factor: float = 1.0) -> torch.Tensor:
    """Gram matrix [n, n] of `x` [n, ...] (each example flattened), in float64.

    linear: X X^T. rbf: exp(-||xi - xj||^2 / (2 sigma^2)) with sigma = rbf_factor times the
    median distance between distinct examples (median heuristic).
    """
    if kernel not in KERNELS:
        raise UserError(f"unknown CKA kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
    x = x.reshape(x.shape[0], -1).double()
    dots = x @ x.T
    if kernel == "linear":
        return dots
    sq_norms = dots.diagonal()
    sq_dist = (sq_norms[:, None] + sq_norms[None, :] - 2 * dots).clamp_min(0)
    sigma_sq = (rbf_factor * _median(_pair_values(sq_dist).sqrt())) ** 2
    return torch.exp(-sq_dist / (2 * sigma_sq))


def _pair_values(k: torch.Tensor) -> torch.Tensor:
    """The entries above the diagonal of [n, n] `k`: one per pair of distinct examples."""
    i, j = torch.triu_indices(k.shape[0], k.shape[0], 1, device=k.device)
    return k[i, j]


def _median(v: torch.Tensor) -> torch.Tensor:
    """The median of a 1-d tensor, the mean of the two middle values when their count is even
    (torch's `median` takes the lower one)."""
    s = v.sort().values
    return (s[(len(s) - 1) // 2] + s[len(s) // 2]) / 2


def center(k: torch.Tensor) -> torch.Tensor:
    """H K H for Gram matrices [..., n, n]: subtract row and column means, add the grand mean."""
    row = k.mean(-1, keepdim=True)
    col = k.mean(-2, keepdim=True)
    return k - row - col + row.mean(-2, keepdim=True)


def u_center(k: torch.Tensor) -> torch.Tensor:
    """U-centering of symmetric Gram matrices [..., n, n] (n >= 4); the diagonal becomes 0.

    U(K)_ij = K_ij - r_i / (n-2) - r_j / (n-2) + s / ((n-1)(n-2)) for i != j, where r are the
    row sums and s the total sum of K with its diagonal zeroed. Works on one copy of `k`, in
    place (full-size temporaries would dominate the cost of large stacked Grams).
    """
    n = k.shape[-1]
    u = k.clone()
    u.diagonal(dim1=-2, dim2=-1).zero_()
    rows = u.sum(-1, keepdim=True)
    total = rows.sum(-2, keepdim=True)
    u.sub_(rows / (n - 2)).sub_(rows.transpose(-1, -2) / (n - 2))
    u.add_(total / ((n - 1) * (n - 2)))
    u.diagonal(dim1=-2, dim2=-1).zero_()
    return u


def _check_n(n: int, unbiased: bool) -> None:
    if unbiased and n < 4:
        raise UserError(f"unbiased HSIC needs at least 4 examples per batch, got {n}; "
                        "raise the batch size")
    if n < 2:
        raise UserError(f"HSIC needs at least 2 examples, got {n}; raise the batch size")


def _centered(k: torch.Tensor, unbiased: bool) -> torch.Tensor:
    return u_center(k) if unbiased else center(k)


def _norm(n: int, unbiased: bool) -> int:
    return n * (n - 3) if unbiased else (n - 1) ** 2


def hsic(k_x: torch.Tensor, k_y: torch.Tensor, unbiased: bool = False) -> float:
    """HSIC of two Gram matrices [n, n]: biased tr(KHLH)/(n-1)^2 or unbiased (Song et al.)."""
    n = k_x.shape[0]
    _check_n(n, unbiased)
    inner = (_centered(k_x.double(), unbiased) * _centered(k_y.double(), unbiased)).sum()
    return float(inner / _norm(n, unbiased))


def cka(x: torch.Tensor, y: torch.Tensor, kernel: str = "linear", unbiased: bool = False,
        rbf_factor: float = 1.0) -> float:
    """CKA between representations x [n, ...] and y [n, ...] of the same n examples.

    Returns NaN when either representation is constant across examples.
    """
    if x.shape[0] != y.shape[0]:
        raise UserError(f"CKA compares the same examples, got {x.shape[0]} and {y.shape[0]}")
    _check_n(x.shape[0], unbiased)
    kc = _centered(gram(x, kernel, rbf_factor), unbiased)
    lc = _centered(gram(y, kernel, rbf_factor), unbiased)
    return float((kc * lc).sum() / ((kc * kc).sum() * (lc * lc).sum()).sqrt())


class MinibatchCKA:
    """Minibatch CKA (Nguyen, Raghu & Kornblith 2021) for all pairs of layers at once.

    Each `update` receives the activations of L layers (`xs`) and M layers (`ys`, or `xs` again
    when omitted) for one batch of the same examples. It adds, for every pair, the unbiased
    HSICs of that batch. `compute` returns the L x M matrix

        CKA_ij = S(K_i, L_j) / sqrt(S(K_i, K_i) S(L_j, L_j)),  S(A, B) = sum_b HSIC_u(A^b, B^b)

    i.e. the ratio of per-batch unbiased HSICs averaged over batches (not the average of
    per-batch CKAs). Because the estimator is unbiased, this converges to the full-data CKA as
    batches accumulate. Memory is O((L + M) n^2) per update.
    """

    def __init__(self, kernel: str = "linear", rbf_factor: float = 1.0):
        if kernel not in KERNELS:
            raise UserError(f"unknown CKA kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
        self.kernel = kernel
        self.rbf_factor = rbf_factor
        self.batches = 0
        self._xy: torch.Tensor | None = None
        self._xx: torch.Tensor | None = None
        self._yy: torch.Tensor | None = None

    def _stacked(self, acts: Sequence[torch.Tensor]) -> torch.Tensor:
        """U-centered Grams of all layers, flattened to [layers, n * n]."""
        if not acts:
            raise UserError("got no layer activations; pass at least one layer per batch")
        n = acts[0].shape[0]
        if any(a.shape[0] != n for a in acts):
            raise UserError("all layer activations of a batch must cover the same examples; "
                            f"got batch sizes {[a.shape[0] for a in acts]}")
        _check_n(n, unbiased=True)
        grams = torch.stack([gram(a, self.kernel, self.rbf_factor) for a in acts])
        return u_center(grams).flatten(1)

    def update(self, xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor] | None = None):
        """Accumulate one batch: `xs` and `ys` are lists of per-layer activations [n, ...]."""
        fx = self._stacked(xs)
        fy = fx if ys is None else self._stacked(ys)
        if fx.shape[1] != fy.shape[1]:
            raise UserError("xs and ys must hold activations of the same examples; got batch "
                            f"sizes {xs[0].shape[0]} and {ys[0].shape[0]}")
        n = xs[0].shape[0]
        norm = n * (n - 3)
        xy, xx, yy = fx @ fy.T / norm, (fx * fx).sum(1) / norm, (fy * fy).sum(1) / norm
        if self._xy is None:
            self._xy, self._xx, self._yy = xy, xx, yy
        elif self._xy.shape != xy.shape:
            raise UserError(f"got {tuple(xy.shape)} layer pairs, expected "
                            f"{tuple(self._xy.shape)}; pass the same layers every batch")
        else:
            self._xy += xy
            self._xx += xx
            self._yy += yy
        self.batches += 1

    def compute(self) -> torch.Tensor:
        """The L x M CKA matrix (float64, on the CPU) from all batches so far."""
        if self._xy is None:
            raise UserError("no batches accumulated yet; call update() first")
        return (self._xy / torch.sqrt(self._xx[:, None] * self._yy[None, :])).cpu()
