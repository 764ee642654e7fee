"""Measurements on generated samples and network activations: distances, CKA, spectra."""
