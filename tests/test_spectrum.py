import math

import pytest
import torch

from initprobe.errors import UserError
from initprobe.measure.metrics.spectrum import (
    band_edges,
    band_error,
    band_power,
    power_spectrum_2d,
    radial_power_spectrum,
)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_frequencies_and_bin_count():
    freqs, power = radial_power_spectrum(torch.zeros(1, 1, 32, 48))
    assert freqs.shape == power.shape == (17,)  # floor(min(32, 48) / 2) + 1
    assert freqs[1].item() == pytest.approx(1 / 32)
    assert freqs[-1].item() == pytest.approx(0.5)
    assert freqs.dtype == power.dtype == torch.float64


def test_white_noise_is_flat_at_its_variance():
    _, power = radial_power_spectrum(2.0 * randn(64, 3, 32, 32))
    assert power[1:].sub(4.0).abs().max().item() < 0.15 * 4.0


def test_sinusoid_lands_in_its_bin():
    i, j = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    wave = torch.cos(2 * math.pi * (3 * i + 4 * j) / 32)  # radius 5 cycles per image
    _, power = radial_power_spectrum(wave.expand(2, 3, 32, 32))
    assert power.argmax().item() == 5
    assert power[5].item() > 1e6 * power[torch.arange(17) != 5].max().item()


def test_axis_aligned_sinusoid_non_square():
    i, _ = torch.meshgrid(torch.arange(16.0), torch.arange(64.0), indexing="ij")
    wave = torch.sin(2 * math.pi * 0.25 * i)  # 0.25 cycles/pixel along H
    freqs, power = radial_power_spectrum(wave[None, None])
    assert freqs[power.argmax()].item() == pytest.approx(0.25)


def test_parseval():
    x = randn(4, 3, 24, 40, seed=1) + 0.3
    assert power_spectrum_2d(x).sum().item() == pytest.approx(
        x.double().square().sum(dim=(2, 3)).mean().item(), rel=1e-5)


def test_dc_bin_is_mean_squared_times_pixels():
    x = randn(1, 1, 20, 20, seed=2) + 1.5
    _, power = radial_power_spectrum(x)
    assert power[0].item() == pytest.approx(x.double().mean().item() ** 2 * 400, rel=1e-9)
    _, const = radial_power_spectrum(torch.full((2, 3, 8, 8), 0.5))
    assert const[0].item() == pytest.approx(0.25 * 64)
    assert const[1:].abs().max().item() < 1e-20


def test_rejects_non_image_batches():
    with pytest.raises(UserError, match=r"\[N, C, H, W\]"):
        radial_power_spectrum(torch.zeros(8, 8))


def test_band_edges_partition_non_dc_bins():
    edges = band_edges(17)  # 16 non-DC bins
    assert edges == {"low": (1, 6), "mid": (6, 11), "high": (11, 17)}
    assert band_edges(17, {"all": (0.0, 1.0)}) == {"all": (1, 17)}
    with pytest.raises(UserError, match="no frequency bin"):
        band_edges(3, {"narrow": (0.1, 0.2)})
    with pytest.raises(UserError, match="lo < hi"):
        band_edges(17, {"bad": (0.5, 0.4)})


def test_band_power_and_error():
    edges = {"low": (1, 3), "high": (3, 5)}
    reference = torch.tensor([9.0, 4.0, 2.0, 1.0, 1.0], dtype=torch.float64)
    assert band_power(reference, edges) == {"low": 6.0, "high": 2.0}
    other = reference.clone()
    other[0] = 100.0  # DC is in no band
    other[3:] = torch.tensor([1.5, 0.5], dtype=torch.float64)  # errors of opposite sign add up
    assert band_error(other, reference, edges) == {"low": 0.0, "high": pytest.approx(0.5)}
    with pytest.raises(UserError, match="same resolution"):
        band_error(other[:3], reference, edges)
