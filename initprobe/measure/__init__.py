"""Measurements, in three tiers that import only downward:

- `metrics/`: the maths on feature vectors, Gram matrices and images (Frechet distance, KID,
  precision/recall, CKA, power spectra); no networks, no data sets;
- `features/`: the feature networks (the domain classifier, Inception-v3) behind `Extractor`,
  and `hooks`, which captures a network's layer outputs by canonical id;
- `analyses/`: what a study measures of denoisers and their samples (sample quality, rel-FID,
  activation and attribution profiles, CKA, linear probes, spectra), each a long-form table in
  the shared schema (`initprobe.schema`).
"""
