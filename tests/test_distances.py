import numpy as np
import pytest
import scipy.linalg
import torch

from initprobe.errors import UserError
from initprobe.measure.metrics.distances import (
    FeatureStats,
    class_histogram_stats,
    frechet_distance,
    kid,
    precision_recall_coverage,
)


def rng(seed=0):
    return np.random.default_rng(seed)


def test_feature_stats_streaming_matches_numpy():
    x = rng().normal(loc=1e4, size=(1000, 6))  # large mean: naive sums would lose precision
    stats = FeatureStats()
    for chunk in np.array_split(x, [1, 7, 300, 301]):
        stats.update(chunk)
    stats.update(torch.empty(0, 6))  # empty batches are a no-op
    assert stats.n == 1000
    np.testing.assert_allclose(stats.mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.cov, np.cov(x, rowvar=False), rtol=1e-8, atol=1e-10)


def test_feature_stats_accepts_torch_and_rejects_dimension_change():
    stats = FeatureStats()
    stats.update(torch.ones(3, 4, dtype=torch.float16))
    assert stats.mean.dtype == np.float64
    with pytest.raises(UserError, match="dimension"):
        stats.update(np.ones((2, 5)))
    with pytest.raises(UserError, match="at least 2"):
        _ = FeatureStats().cov


def test_feature_stats_save_load_roundtrip(tmp_path):
    x = rng().normal(size=(50, 3))
    stats = FeatureStats()
    stats.update(x)
    path = tmp_path / "ref.stats"  # no .npz suffix: the file must land at exactly this path
    stats.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref.stats"]
    back = FeatureStats.load(path)
    assert back.n == 50
    np.testing.assert_array_equal(back.mean, stats.mean)
    np.testing.assert_array_equal(back.cov, stats.cov)
    back.update(x)  # a loaded accumulator keeps accumulating
    np.testing.assert_allclose(back.cov, np.cov(np.vstack([x, x]), rowvar=False), rtol=1e-12)


def test_feature_stats_load_errors(tmp_path):
    with pytest.raises(UserError, match="no feature statistics"):
        FeatureStats.load(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    np.savez(bad, other=np.zeros(2))
    with pytest.raises(UserError, match="not a FeatureStats"):
        FeatureStats.load(bad)


def test_frechet_diagonal_closed_form():
    r = rng()
    a, b = r.uniform(0.1, 3, 8), r.uniform(0.1, 3, 8)
    mu1, mu2 = r.normal(size=8), r.normal(size=8)
    expected = ((np.sqrt(a) - np.sqrt(b)) ** 2).sum() + ((mu1 - mu2) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_frechet_rotated_matches_scipy_and_is_symmetric():
    r = rng(1)
    m1, m2 = r.normal(size=(10, 10)), r.normal(size=(10, 10))
    c1, c2 = m1 @ m1.T, m2 @ m2.T
    mu1, mu2 = r.normal(size=10), r.normal(size=10)
    expected = (((mu1 - mu2) ** 2).sum() + np.trace(c1) + np.trace(c2)
                - 2 * np.trace(scipy.linalg.sqrtm(c1 @ c2)).real)
    d12 = frechet_distance(mu1, c1, mu2, c2)
    assert d12 == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(mu2, c2, mu1, c1) == pytest.approx(d12, rel=1e-10)


def test_frechet_zero_for_identical_stats():
    m = rng(2).normal(size=(12, 12))
    cov = m @ m.T
    mu = np.arange(12.0)
    assert abs(frechet_distance(mu, cov, mu, cov)) < 1e-10 * np.trace(cov)


def test_frechet_rank_deficient_is_finite_and_near_zero():
    m = rng(2).normal(size=(12, 3))
    cov = m @ m.T  # rank 3: roundoff makes some eigenvalues slightly negative (NaN unless clipped)
    mu = np.arange(12.0)
    d = frechet_distance(mu, cov, mu, cov)
    assert np.isfinite(d)
    assert abs(d) < 1e-6 * np.trace(cov)  # square roots of roundoff-sized eigenvalues: ~sqrt(eps)


def test_frechet_rejects_mismatched_shapes():
    with pytest.raises(UserError, match="mismatched"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_kid_same_distribution_near_zero_shifted_positive():
    r = rng(3)
    a, b = r.normal(size=(600, 16)), r.normal(size=(600, 16))
    same_mean, same_std = kid(a, b, subsets=20, subset_size=200)
    shifted_mean, _ = kid(a, b + 0.5, subsets=20, subset_size=200)
    assert abs(same_mean) < 0.02
    assert same_std > 0
    assert shifted_mean > 0.5
    assert kid(a, b, subsets=20, subset_size=200, seed=7) != (same_mean, same_std)


def test_kid_matches_direct_unbiased_mmd_on_full_sets():
    r = rng(4)
    x, y = r.normal(size=(30, 5)), r.normal(loc=0.3, size=(30, 5))

    def k(p, q):
        return (p @ q.T / 5 + 1) ** 3

    m = 30
    kxx, kyy = k(x, x), k(y, y)
    direct = ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy))
              / (m * (m - 1)) - 2 * k(x, y).mean())
    mean, std = kid(x, y, subsets=3, subset_size=1000)  # subset is the whole set, permuted
    assert mean == pytest.approx(direct, rel=1e-10)
    assert std == pytest.approx(0, abs=1e-12)


def test_prc_identical_sets():
    real = rng(5).normal(size=(200, 8))
    out = precision_recall_coverage(real, real.copy(), k=5)
    assert out["precision"] == out["recall"] == out["coverage"] == 1.0
    assert out["density"] >= 1.0  # each point lies in its own ball and its k neighbours' balls


def test_prc_collapsed_fake():
    real = rng(6).normal(size=(300, 8))
    fake = np.repeat(real[:1], 300, axis=0)
    out = precision_recall_coverage(real, fake, k=5)
    assert out["precision"] == 1.0  # every fake sample sits on a real one
    assert out["recall"] == pytest.approx(1 / 300)  # fake balls have radius 0
    assert out["coverage"] < 0.05


def test_prc_far_fake():
    r = rng(7)
    real, fake = r.normal(size=(100, 4)), r.normal(loc=100.0, size=(100, 4))
    out = precision_recall_coverage(real, fake, k=3)
    assert out == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_prc_rejects_k_too_large():
    with pytest.raises(UserError, match="k=5"):
        precision_recall_coverage(np.zeros((5, 2)), np.zeros((10, 2)), k=5)


def test_class_histogram_uniform_and_collapsed():
    uniform = class_histogram_stats(np.tile(np.arange(10), 5), 10)
    np.testing.assert_array_equal(uniform["histogram"], np.full(10, 5))
    assert uniform["entropy"] == pytest.approx(np.log(10))
    assert uniform["classes_covered"] == 10
    assert uniform["kl_to_uniform"] == pytest.approx(0, abs=1e-12)

    collapsed = class_histogram_stats(torch.tensor([3] * 48 + [7] * 2), 10)
    p = np.array([0.96, 0.04])
    assert collapsed["classes_covered"] == 2
    assert collapsed["entropy"] == pytest.approx(-(p * np.log(p)).sum())
    assert collapsed["kl_to_uniform"] == pytest.approx(np.log(10) + (p * np.log(p)).sum())


def test_class_histogram_rejects_out_of_range():
    with pytest.raises(UserError, match="num_classes"):
        class_histogram_stats(np.array([0, 10]), 10)
    with pytest.raises(UserError, match="integer"):
        class_histogram_stats(np.array([0.5]), 10)
