"""Ablations of a network's initialization: which layers (`select`) and what to do to them (`ops`).

`select` turns a selector spec such as `decoder-attention` or `gdd` into canonical layer ids;
`ops` re-initializes, shuffles, transfers, interpolates or freezes those layers of a `Denoiser`
and returns the records that a training run stores in its config.
"""
