"""Measurement metric maths: distances, CKA, spectra (no networks, no data)."""
