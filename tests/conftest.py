"""Test-wide settings: one torch thread (tiny models are slower with more on 2 shared cores),
and a private feature-network cache so tests never touch the user's."""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("INITPROBE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
