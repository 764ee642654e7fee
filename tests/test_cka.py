import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist

from initprobe.errors import UserError
from initprobe.measure.metrics.cka import MinibatchCKA, cka, gram, hsic


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def numpy_hsic_biased(kx, ky):
    n = kx.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return np.trace(kx @ h @ ky @ h) / (n - 1) ** 2


def numpy_hsic_unbiased(kx, ky):
    """Song et al. (2012), eq. 5, written directly."""
    n = kx.shape[0]
    kx, ky = kx - np.diag(np.diag(kx)), ky - np.diag(np.diag(ky))
    one = np.ones(n)
    return (np.trace(kx @ ky) + (one @ kx @ one) * (one @ ky @ one) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * one @ kx @ ky @ one) / (n * (n - 3))


def numpy_linear_cka(x, y, hsic_fn):
    kx, ky = x @ x.T, y @ y.T
    return hsic_fn(kx, ky) / np.sqrt(hsic_fn(kx, kx) * hsic_fn(ky, ky))


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("unbiased", [False, True])
def test_self_similarity_is_one(kernel, unbiased):
    x = randn(40, 3, 4, 4)  # examples are flattened
    assert cka(x, x, kernel, unbiased) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_invariant_to_orthogonal_maps_and_isotropic_scaling(kernel):
    x, y = randn(60, 20, seed=1), randn(60, 15, seed=2)
    y = y + x[:, :15]  # related, so the value is far from 0 and from 1
    q, _ = torch.linalg.qr(randn(20, 20, seed=3))
    base = cka(x, y, kernel)
    assert 0.2 < base < 0.95
    assert cka(x @ q, y, kernel) == pytest.approx(base, abs=1e-10)
    assert cka(3.7 * x, y, kernel) == pytest.approx(base, abs=1e-10)
    assert cka(x @ q * 0.01, 50 * y, kernel, unbiased=True) == pytest.approx(
        cka(x, y, kernel, unbiased=True), abs=1e-10)


def test_linear_cka_not_invariant_to_ill_conditioned_linear_map():
    x = randn(200, 50, seed=4) * torch.linspace(0.1, 3, 50, dtype=torch.float64)
    u, _, vt = torch.linalg.svd(randn(50, 50, seed=5))
    m = u @ torch.diag(torch.logspace(0, -3, 50, dtype=torch.float64)) @ vt  # invertible
    assert cka(x, x @ m) < 0.8


def test_unbiased_near_zero_for_independent_data_biased_is_not():
    x, y = randn(200, 50, seed=6), randn(200, 50, seed=7)
    unbiased, biased = cka(x, y, unbiased=True), cka(x, y)
    assert abs(unbiased) < 0.03
    assert biased > 0.1  # the bias of the plug-in HSIC for d comparable to n


@pytest.mark.parametrize("unbiased", [False, True])
def test_matches_direct_numpy_formulas(unbiased):
    x, y = randn(30, 7, seed=8), randn(30, 5, seed=9)
    fn = numpy_hsic_unbiased if unbiased else numpy_hsic_biased
    expected_hsic = fn(gram(x).numpy(), gram(y).numpy())
    assert hsic(gram(x), gram(y), unbiased) == pytest.approx(expected_hsic, rel=1e-10)
    expected = numpy_linear_cka(x.numpy(), y.numpy(), fn)
    assert cka(x, y, unbiased=unbiased) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("n", [9, 10])     # 36 pairs (even: two middle values) and 45
def test_rbf_gram_uses_median_heuristic(n):
    x = randn(n, 3, seed=10).double()
    d2 = torch.cdist(x, x) ** 2
    sigma = 2.0 * np.median(pdist(x.numpy()))
    torch.testing.assert_close(gram(x, "rbf", rbf_factor=2.0), torch.exp(-d2 / (2 * sigma ** 2)))


def layers(x):
    """Three 'layers' of different widths derived from the same inputs."""
    return [x, torch.tanh(x @ randn(x.shape[1], 12, seed=11)), x[:, :4] ** 2]


def other_layers(x):
    """Two 'layers' of a second network on the same inputs."""
    return [x[:, :5], x.sin()]


def test_minibatch_equals_ratio_of_batch_averaged_unbiased_hsic():
    batches = [randn(16, 8, seed=s) for s in range(3)]
    acc = MinibatchCKA()
    for b in batches:
        acc.update(layers(b), other_layers(b))
    got = acc.compute()
    assert got.shape == (3, 2) and acc.batches == 3

    def mean_hsic(i, j, left, right):
        return np.mean([numpy_hsic_unbiased(gram(left(b)[i]).numpy(), gram(right(b)[j]).numpy())
                        for b in batches])

    for i in range(3):
        for j in range(2):
            expected = mean_hsic(i, j, layers, other_layers) / np.sqrt(
                mean_hsic(i, i, layers, layers) * mean_hsic(j, j, other_layers, other_layers))
            assert got[i, j].item() == pytest.approx(expected, rel=1e-9)
    # not the mean of per-batch CKAs
    per_batch = np.mean([cka(layers(b)[1], b.sin(), unbiased=True) for b in batches])
    assert abs(got[1, 1].item() - per_batch) > 1e-6


def test_minibatch_single_batch_equals_unbiased_cka_and_self_mode():
    x = randn(32, 8, seed=12)
    acc = MinibatchCKA(kernel="rbf")
    acc.update(layers(x))  # ys omitted: all pairs among xs
    got = acc.compute()
    for i, a in enumerate(layers(x)):
        for j, b in enumerate(layers(x)):
            assert got[i, j].item() == pytest.approx(cka(a, b, "rbf", unbiased=True), rel=1e-9)
    torch.testing.assert_close(got, got.T)


def test_minibatch_approaches_full_batch_cka():
    x = randn(2000, 10, seed=13)
    y = torch.tanh(x @ randn(10, 10, seed=14)) + 0.5 * randn(2000, 10, seed=15)
    acc = MinibatchCKA()
    for xb, yb in zip(x.split(100), y.split(100)):
        acc.update([xb], [yb])
    full = cka(x, y, unbiased=True)
    assert 0.3 < full < 0.9
    assert acc.compute()[0, 0].item() == pytest.approx(full, abs=0.02)


def test_minibatch_errors():
    acc = MinibatchCKA()
    with pytest.raises(UserError, match="no batches"):
        acc.compute()
    with pytest.raises(UserError, match="at least 4"):
        acc.update([randn(3, 2)])
    acc.update([randn(8, 2), randn(8, 3)])
    with pytest.raises(UserError, match="same layers"):
        acc.update([randn(8, 2)])
    with pytest.raises(UserError, match="unknown CKA kernel"):
        MinibatchCKA(kernel="cosine")
