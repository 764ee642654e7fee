import copy

import pytest
import torch

from initprobe.ablate.select import block_layer_ids
from initprobe.errors import UserError
from initprobe.measure.analyses.profiles import ProbeOptions, default_sigmas
from initprobe.measure.analyses.similarity import _minibatches, cka_diagonal, cka_matrix
from initprobe.nets.precond import Denoiser
from initprobe.nets.unet import UNetConfig
from initprobe.schema import COLUMNS


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return Denoiser(UNetConfig()).eval()


@pytest.fixture(scope="module")
def images():
    return torch.rand(48, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_identical_networks_have_unit_diagonal(net, images):
    m = cka_matrix(net, copy.deepcopy(net), images, 0.5, ProbeOptions(batch=16))
    matched = m[m["layer"] == m["layer_b"]]
    assert len(matched) == len(block_layer_ids(net))
    assert matched["value"].sub(1).abs().max() < 1e-9
    d = cka_diagonal(net, copy.deepcopy(net), images, ProbeOptions([0.01, 1.0, 80.0], batch=16))
    assert d["value"].sub(1).abs().max() < 1e-9
    assert sorted(d["sigma"].unique()) == [0.01, 1.0, 80.0]


def test_matrix_shape_and_layer_order(net, images):
    ids = block_layer_ids(net)
    m = cka_matrix(net, net, images, options=ProbeOptions(batch=24))
    assert list(m.columns[:len(COLUMNS)]) == COLUMNS and m["run"].isna().all()
    m = m.assign(run="a vs b")
    assert list(m.columns[:len(COLUMNS)]) == COLUMNS
    assert len(m) == len(ids) ** 2
    assert list(dict.fromkeys(m["layer"])) == ids
    assert list(m["layer_b"][:len(ids)]) == ids
    assert set(m["metric"]) == {"cka_linear"} and set(m["run"]) == {"a vs b"}
    grid = m.pivot(index="layer", columns="layer_b", values="value")
    torch.testing.assert_close(torch.tensor(grid.values), torch.tensor(grid.values.T))
    assert m[m["layer"] == "enc.8x8_conv"]["res"].iloc[0] == 8


def test_reinitialized_layer_drops_and_earlier_layers_stay(net, images):
    other = copy.deepcopy(net)
    torch.manual_seed(123)
    other.model.dec["8x8_block0"].conv0.reset_parameters()  # feeds dec.8x8_block0.conv1
    d = cka_diagonal(net, other, images, ProbeOptions([0.5, 5.0], batch=16))
    by_layer = d.groupby("layer", sort=False)["value"].min()
    assert by_layer["dec.8x8_block0.conv1"] < 0.9
    upstream = list(by_layer.index[:list(by_layer.index).index("dec.8x8_block0.conv1")])
    assert (by_layer[upstream] > 1 - 1e-9).all()


def test_rbf_kernel_and_default_grid(net, images):
    d = cka_diagonal(net, net, images[:16], ProbeOptions(layers=["enc.8x8_conv"], batch=8), "rbf")
    assert set(d["metric"]) == {"cka_rbf"} and len(d) == len(default_sigmas()) == 18
    assert d["value"].sub(1).abs().max() < 1e-9


def test_minibatches_are_even_and_large_enough():
    sizes = [b - a for a, b in _minibatches(torch.zeros(10), 8)]
    assert sizes == [5, 5]
    with pytest.raises(UserError, match="at least 4 images"):
        _minibatches(torch.zeros(3), 8)


def test_bad_input(net, images):
    wider = Denoiser(UNetConfig(channel_mult=[1, 2, 2], attn_resolutions=[])).eval()
    with pytest.raises(UserError, match="same architecture"):
        cka_diagonal(net, wider, images[:8], ProbeOptions([1.0]))
    with pytest.raises(UserError, match="unknown CKA kernel"):
        cka_matrix(net, net, images[:8], kernel="cosine")
    with pytest.raises(UserError, match="unknown layer ids"):
        cka_matrix(net, net, images[:8], options=ProbeOptions(layers=["enc.nope"]))
