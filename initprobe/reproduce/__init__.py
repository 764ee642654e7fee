"""Reproducing the claims C1-C11 (docs/science.md) and C12 (C1 class-conditional) from configs in
`experiments/`.

- `config`: profiles.toml and one validated TOML file per study (runs, budget, seeds,
  measurements, verdict rules);
- `workspace`: the profile's teachers and one-step runs, trained through the library;
- `measures`: the measurements a study can ask for, as long-form tables;
- `memory`: peak tensor memory of a call (CPU and CUDA);
- `rules`: the named verdict rules (holds / does not hold / inconclusive);
- `runner`: one study brought up to date, resumable, its tables cached as CSV;
- `figures`: the study figures; `findings`: findings.csv / findings.md / figure README.
The command is `initprobe reproduce` (`initprobe.cli.reproduce`).
"""
