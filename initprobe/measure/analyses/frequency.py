"""Frequency-domain view of a denoiser and its samples (claim C7), as long-form tables.

Radially averaged power spectra (`spectrum.radial_power_spectrum`: power per pixel, bins of
1 / size cycles per pixel) of these sources, each averaged over all its images:
- `data`: the real images;
- `one-step` and `heun` samples of each network, seeds 0 .. n-1 (Heun with N grid steps);
- `denoised` D(x + sigma n; sigma) and `error` D(x + sigma n; sigma) - x on the real images at
  every sigma of the grid (one fixed noise draw per image, the same for every network).

Band summaries (`spectrum.band_edges`: low / mid / high thirds of the frequency range, the DC
bin excluded):
- `rel_error` per band and sigma: summed error power / summed data power over the band's bins,
  i.e. the fraction of the band's signal energy the denoiser gets wrong (0: exact; 1: as wrong as
  an output of zeros);
- `band_mismatch` per band for samples: `spectrum.band_error(P_samples, P_data)`, the relative
  misplacement of power (0: the samples' spectrum matches the data's in that band).

Tables follow the shared schema (run = network label or `data`, sigma, metric, value, seed) with
the extra columns `source`, `freq` (power rows) and `band` (band rows).
"""

from collections.abc import Iterable, Mapping

import pandas as pd
import torch

from ...diffusion import Generator
from ...errors import UserError
from ...nets.labels import bind, class_labels, cond_batches
from ...schema import frame
from ..metrics.spectrum import band_edges, band_error, band_power, radial_power_spectrum
from .profiles import ProbeOptions
from .quality import sample_batches


class SpectrumMean:
    """Radial power spectrum averaged over images added batch by batch (memory O(bins))."""

    def __init__(self):
        self.freqs, self._total, self.count = None, None, 0

    def add(self, images: torch.Tensor) -> None:
        self.freqs, power = radial_power_spectrum(images)
        weighted = power * len(images)
        self._total = weighted if self._total is None else self._total + weighted
        self.count += len(images)

    @property
    def power(self) -> torch.Tensor:
        if self.count == 0:
            raise UserError("no images to take a spectrum of; give at least one image")
        return self._total / self.count


def mean_spectrum(batches: Iterable[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(frequencies, radial power averaged over every image of every batch), float64, CPU."""
    acc = SpectrumMean()
    for images in batches:
        acc.add(images)
    return acc.freqs, acc.power


def _power_rows(freqs, power, **cols) -> list[dict]:
    return [{**cols, "freq": float(f), "metric": "power", "value": float(p)}
            for f, p in zip(freqs, power)]


@torch.no_grad()
def denoiser_spectra(net, images: torch.Tensor, options: ProbeOptions = ProbeOptions(),
                     run: str = "", cond: torch.Tensor | None = None) -> pd.DataFrame:
    """Spectra of D(x + sigma n; sigma) and of its error D - x on `images` at each sigma of
    `options` (its layers are not used), and the per-band relative error; `net(y, sigma)` runs
    on the images' device (with the one-hot class labels `cond` for a conditional network)."""
    noise, batch = options.noise(images), options.batch
    freqs, data_power = mean_spectrum(images.split(batch))
    edges = band_edges(len(freqs))
    data_bands = band_power(data_power, edges)
    records = []
    for sigma in options.grid():
        out, err = SpectrumMean(), SpectrumMean()
        for x, n, y in zip(images.split(batch), noise.split(batch), cond_batches(cond, batch)):
            d = bind(net, y)(x + sigma * n, sigma).float()
            out.add(d)
            err.add(d - x)
        records += _power_rows(freqs, out.power, source="denoised", sigma=sigma)
        records += _power_rows(freqs, err.power, source="error", sigma=sigma)
        for band, value in band_power(err.power, edges).items():
            records.append({"source": "error", "sigma": sigma, "band": band,
                            "metric": "rel_error", "value": value / data_bands[band]})
    return frame(records, run=run, seed=options.seed)


def sample_spectra(gen: Generator, data_power: torch.Tensor, n: int = 512, heun_steps: int = 18,
                   batch: int = 256, run: str = "") -> pd.DataFrame:
    """Spectra of the `one-step` samples of `gen` (its network through its map) and of its
    network's `heun` samples (seeds 0 .. n-1; a conditional network's classes drawn uniformly
    per seed), and their per-band mismatch to `data_power`."""
    net, edges = gen.net, band_edges(len(data_power))
    records = []
    y = class_labels(net, None, range(n))
    for source, sampler, steps in (("one-step", gen.map, 1), ("heun", "heun", heun_steps)):
        freqs, power = mean_spectrum(sample_batches(net, n, sampler, steps, batch=batch,
                                                    labels=y))
        records += _power_rows(freqs, power, source=source)
        records += [{"source": source, "band": band, "metric": "band_mismatch", "value": v}
                    for band, v in band_error(power, data_power, edges).items()]
    return frame(records, run=run)


def spectrum_analysis(gens: Mapping[str, Generator], images: torch.Tensor,
                      options: ProbeOptions = ProbeOptions(), n_samples: int = 512,
                      heun_steps: int = 18,
                      cond: Mapping[str, torch.Tensor | None] | None = None) -> pd.DataFrame:
    """The data spectrum, then for each labelled generator (`nets.io.load_generator`) its
    sample spectra and its network's denoiser spectra (module docstring; `options.batch` images
    per pass for both), in one long-form table; `images` on the networks' device; `cond`:
    label -> one-hot class labels of the images for a conditional network."""
    batch = options.batch
    freqs, data_power = mean_spectrum(images.split(batch))
    tables = [frame(_power_rows(freqs, data_power, source="data"), run="data",
                    seed=options.seed)]
    for label, gen in gens.items():
        tables.append(sample_spectra(gen, data_power, n_samples, heun_steps, batch, label))
        tables.append(denoiser_spectra(gen.net, images, options, label,
                                       (cond or {}).get(label)))
    return pd.concat(tables, ignore_index=True)
