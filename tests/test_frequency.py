import pytest
import torch

from initprobe.diffusion import Generator
from initprobe.errors import UserError
from initprobe.measure.analyses.frequency import (
    denoiser_spectra,
    mean_spectrum,
    sample_spectra,
    spectrum_analysis,
)
from initprobe.measure.analyses.profiles import ProbeOptions
from initprobe.measure.metrics.spectrum import radial_power_spectrum
from initprobe.nets.precond import Denoiser
from initprobe.nets.unet import UNetConfig
from initprobe.schema import COLUMNS

SIGMAS = [0.05, 1.0, 20.0]


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return (torch.rand(32, 1, 8, 8, generator=g) * 2 - 1).cumsum(-1).clamp(-1, 1)


class Oracle:
    """Returns the clean images exactly, whatever the noise (needs batch >= len(images))."""

    def __init__(self, clean):
        self.clean = clean

    def __call__(self, y, sigma):
        assert y.shape == self.clean.shape
        return self.clean.clone()


def test_exact_denoiser_has_zero_error_in_every_band(images):
    df = denoiser_spectra(Oracle(images), images, ProbeOptions(SIGMAS, batch=len(images)))
    rel = df[df["metric"] == "rel_error"]
    assert set(rel["band"]) == {"low", "mid", "high"} and len(rel) == 3 * len(SIGMAS)
    assert (rel["value"] == 0).all()
    err = df[(df["metric"] == "power") & (df["source"] == "error")]
    assert (err["value"] == 0).all()
    out = df[(df["metric"] == "power") & (df["source"] == "denoised")]
    _, data_power = radial_power_spectrum(images)
    for _, d in out.groupby("sigma"):
        torch.testing.assert_close(torch.tensor(d["value"].to_numpy()), data_power)


def test_zero_output_misses_all_of_every_band(images):
    df = denoiser_spectra(lambda y, s: torch.zeros_like(y), images,
                          ProbeOptions(SIGMAS, batch=10))
    rel = df[df["metric"] == "rel_error"]["value"]
    assert rel.sub(1).abs().max() < 1e-12


def test_identity_output_error_is_white_noise_of_variance_sigma_squared(images):
    many = images.repeat(16, 1, 1, 1)  # more noise draws for a tight average
    df = denoiser_spectra(lambda y, s: y, many, ProbeOptions([0.5, 3.0], batch=128))
    err = df[(df["metric"] == "power") & (df["source"] == "error")]
    for sigma, d in err.groupby("sigma"):
        flat = torch.tensor(d["value"].to_numpy()) / sigma ** 2
        assert flat.sub(1).abs().max() < 0.15


def test_batched_mean_spectrum_equals_one_pass(images):
    freqs, batched = mean_spectrum(images.split(5))
    ref_freqs, whole = radial_power_spectrum(images)
    torch.testing.assert_close(batched, whole)
    torch.testing.assert_close(freqs, ref_freqs)
    with pytest.raises(UserError, match="no images"):
        mean_spectrum([])


def test_sample_spectra_of_data_like_power_match(images):
    torch.manual_seed(0)
    net = Denoiser(UNetConfig()).eval()
    _, data_power = radial_power_spectrum(images)
    df = sample_spectra(Generator(net), data_power, n=8, heun_steps=2, batch=4, run="tiny")
    mismatch = df[df["metric"] == "band_mismatch"]
    assert set(mismatch["source"]) == {"one-step", "heun"} and len(mismatch) == 6
    # an untrained net's one-step output is ~0 (EDM's near-zero output layer): all power missing
    one = mismatch[mismatch["source"] == "one-step"]["value"]
    assert one.sub(1).abs().max() < 1e-3


def test_analysis_table_follows_the_schema(images):
    torch.manual_seed(0)
    net = Denoiser(UNetConfig()).eval()
    df = spectrum_analysis({"tiny": Generator(net)}, images[:8], ProbeOptions([1.0], batch=8),
                           n_samples=4, heun_steps=2)
    assert list(df.columns[:len(COLUMNS)]) == COLUMNS
    assert {"source", "freq", "band"} <= set(df.columns)
    sources = set(zip(df["run"], df["source"]))
    assert sources == {("data", "data"), ("tiny", "one-step"), ("tiny", "heun"),
                       ("tiny", "denoised"), ("tiny", "error")}
    assert set(df["metric"]) == {"power", "band_mismatch", "rel_error"}
    assert df[df["run"] == "data"]["freq"].tolist() == [0, 0.125, 0.25, 0.375, 0.5]
