"""Frequency-domain analysis of image batches [N, C, H, W], in float64.

Normalization: the power at 2-D frequency k of a single-channel image x is |F(x)_k|^2 / (H W),
where F is the unnormalized DFT. Parseval then reads: the sum of the power over all H W
frequencies equals sum(x^2). Consequences: the zero-frequency (DC) power is mean(x)^2 H W, and
white noise of variance s^2 has expected power s^2 at every frequency.

Radial binning: after fftshift, each frequency (fy, fx) in cycles/pixel gets the integer bin
round(sqrt(fy^2 + fx^2) * min(H, W)), for bins 0 .. floor(min(H, W) / 2); bin b is frequency
b / min(H, W) cycles/pixel (the last bin is Nyquist for even sizes). Corner frequencies
beyond the last bin are dropped. A bin's value is the mean power of the frequencies in it.
"""

import torch

from ...errors import UserError

DEFAULT_BANDS = {"low": (0.0, 1 / 3), "mid": (1 / 3, 2 / 3), "high": (2 / 3, 1.0)}


def power_spectrum_2d(images: torch.Tensor) -> torch.Tensor:
    """Power |F|^2 / (H W) [H, W], zero frequency centred (fftshift), mean over images, channels."""
    if images.ndim != 4:
        raise UserError(f"expected images of shape [N, C, H, W], got {tuple(images.shape)}; "
                        "pass a batch of images")
    h, w = images.shape[-2:]
    spectrum = torch.fft.fft2(images.double())
    power = spectrum.abs().square().mean(dim=(0, 1)) / (h * w)
    return torch.fft.fftshift(power)


def radial_power_spectrum(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Radially averaged power spectrum of `images` [N, C, H, W].

    Returns (frequencies in cycles/pixel, mean power per bin), both float64 on the CPU, with
    floor(min(H, W) / 2) + 1 bins; see the module docstring for the normalization and binning.
    """
    power = power_spectrum_2d(images).cpu()
    h, w = power.shape
    size = min(h, w)
    fy = torch.fft.fftshift(torch.fft.fftfreq(h, dtype=torch.float64))
    fx = torch.fft.fftshift(torch.fft.fftfreq(w, dtype=torch.float64))
    radius = torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)
    bins = torch.round(radius * size).long().flatten()
    n_bins = size // 2 + 1
    keep = bins < n_bins
    sums = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, bins[keep], power.flatten()[keep])
    counts = torch.bincount(bins[keep], minlength=n_bins)
    freqs = torch.arange(n_bins, dtype=torch.float64) / size
    return freqs, sums / counts


def band_edges(n_bins: int, bands: dict[str, tuple[float, float]] = DEFAULT_BANDS
               ) -> dict[str, tuple[int, int]]:
    """Bin ranges [start, stop) of frequency bands given as fractions (lo, hi] of the last bin.

    Bin b (1 .. n_bins - 1) sits at fraction b / (n_bins - 1) and joins every band with
    lo < fraction <= hi. The DC bin 0 (mean brightness) belongs to no band.
    """
    edges = {}
    for name, (lo, hi) in bands.items():
        if not 0 <= lo < hi <= 1:
            raise UserError(f"band {name!r} = ({lo}, {hi}) must satisfy 0 <= lo < hi <= 1; "
                            "give fractions of the highest frequency")
        members = [b for b in range(1, n_bins) if lo < b / (n_bins - 1) <= hi]
        if not members:
            raise UserError(f"band {name!r} holds no frequency bin out of {n_bins}; "
                            "widen the band or use larger images")
        edges[name] = (members[0], members[-1] + 1)
    return edges


def band_power(power: torch.Tensor, edges: dict[str, tuple[int, int]]) -> dict[str, float]:
    """Sum of a radial spectrum's bins within each band."""
    return {name: float(power[start:stop].sum()) for name, (start, stop) in edges.items()}


def band_error(power: torch.Tensor, reference: torch.Tensor,
               edges: dict[str, tuple[int, int]]) -> dict[str, float]:
    """Relative error per band: sum |P - P_ref| / sum P_ref over the band's bins.

    0 means a perfect match; 1 means the misplaced power equals the reference band's power.
    Bins count with the reference power they carry, so a band is dominated by its stronger bins.
    """
    if power.shape != reference.shape:
        raise UserError(f"spectra have {power.shape[0]} and {reference.shape[0]} bins; "
                        "compare images of the same resolution")
    diff = band_power((power - reference).abs(), edges)
    ref = band_power(reference, edges)
    return {name: diff[name] / ref[name] for name in edges}
