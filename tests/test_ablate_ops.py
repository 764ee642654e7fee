import math

import pytest
import torch

from initprobe.ablate.ops import (
    UNET_INIT,
    InitSpec,
    build_init,
    freeze,
    interpolate,
    reinit,
    shuffle,
    transfer,
)
from initprobe.ablate.select import select
from initprobe.errors import UserError
from initprobe.nets.layers import named_layers
from initprobe.nets.precond import Denoiser
from initprobe.nets.unet import UNetConfig


def trained(seed=0, **cfg):
    """A tiny Denoiser (a function of `seed`) with every parameter moved off its default init."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = Denoiser(UNetConfig(**cfg))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return net


def values(net):
    """Layer id -> the layer's parameters, cloned."""
    return {i: [p.detach().clone() for p in m.parameters()] for i, m in named_layers(net).items()}


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def changed(before, net):
    now = values(net)
    return [i for i in before if not same(before[i], now[i])]


@pytest.fixture
def teacher():
    return trained()


def test_reinit_changes_exactly_the_selection(teacher):
    before = values(teacher)
    rec = reinit(teacher, "decoder", seed=1)
    assert changed(before, teacher) == select(teacher, "decoder")
    layers = named_layers(teacher)
    for i in select(teacher, "decoder"):
        if i.endswith(".conv1"):
            w = layers[i].weight
            assert 0 < w.abs().max() < 1e-5  # near-zero, as documented
            assert torch.all(layers[i].bias == 0)
        if ".norm" in i:
            assert torch.all(layers[i].weight == 1) and torch.all(layers[i].bias == 0)
    assert rec["op"] == "reinit" and rec["spec"] == "decoder" and rec["seed"] == 1
    assert rec["layers"] == select(teacher, "decoder")
    assert rec["params"] == sum(p.numel() for i in rec["layers"] for p in layers[i].parameters())
    assert rec["restored"] == UNET_INIT and "xavier_uniform" in UNET_INIT


def test_reinit_restores_the_xavier_scale():
    net = trained()
    reinit(net, "dec.8x8_up.conv0", seed=0)
    w = named_layers(net)["dec.8x8_up.conv0"].weight
    bound = math.sqrt(6 / (32 * 9 + 32 * 9))
    assert w.abs().max() <= bound and w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)


def test_reinit_is_deterministic_and_leaves_the_global_rng_alone():
    a, b, c = trained(), trained(), trained()
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    reinit(a, "all", seed=7)
    assert torch.equal(torch.rand(4), expected)
    reinit(b, "all", seed=7)
    reinit(c, "all", seed=8)
    assert changed(values(a), b) == []
    assert changed(values(a), c) != []


def test_reinit_of_a_subset_matches_the_random_network_with_that_seed(teacher):
    random, _ = build_init(teacher, InitSpec("random"), seed=5)
    reinit(teacher, "decoder+stem", seed=5)
    ours, theirs = values(teacher), values(random)
    assert all(same(ours[i], theirs[i]) for i in select(teacher, "decoder+stem"))


def test_shuffle_keeps_the_values_and_destroys_the_order(teacher):
    before = values(teacher)
    rec = shuffle(teacher, "gdd+norm", seed=0)
    assert changed(before, teacher) == select(teacher, "gdd+norm")
    now = values(teacher)
    for i in rec["layers"]:
        for old, new in zip(before[i], now[i], strict=True):
            assert torch.equal(old.flatten().sort().values, new.flatten().sort().values)
            assert not torch.equal(old, new)
    assert rec["op"] == "shuffle" and rec["seed"] == 0


def test_shuffle_is_deterministic():
    a, b, c = trained(), trained(), trained()
    shuffle(a, "conv", seed=3)
    shuffle(b, "conv", seed=3)
    shuffle(c, "conv", seed=4)
    assert changed(values(a), b) == []
    assert changed(values(a), c) == select(a, "conv")


def test_transfer_copies_exactly_the_selection(teacher):
    source = trained(seed=9)
    before = values(teacher)
    rec = transfer(teacher, source, "encoder")
    now, theirs = values(teacher), values(source)
    assert changed(before, teacher) == select(teacher, "encoder")
    assert all(same(now[i], theirs[i]) for i in select(teacher, "encoder"))
    assert rec["op"] == "transfer" and rec["layers"] == select(teacher, "encoder")


def test_transfer_shape_mismatch_names_layer_and_shapes_and_copies_nothing(teacher):
    before = values(teacher)
    with pytest.raises(UserError, match=r"enc\.8x8_conv\.weight is 16x1x3x3 here but "
                                        r"32x1x3x3 in the source"):
        transfer(teacher, Denoiser(UNetConfig(model_channels=32)), "encoder+stem")
    assert changed(before, teacher) == []


def test_transfer_of_a_layer_absent_from_the_source():
    net = trained(num_blocks=2)
    with pytest.raises(UserError, match=r"enc\.8x8_block1\.norm0 is not in the source"):
        transfer(net, trained(), "enc.8x8_block1")


def test_interpolate_endpoints_and_midpoint(teacher):
    before = values(teacher)
    random = values(build_init(teacher, InitSpec("random"), seed=2)[0])
    interpolate(teacher, 0.0, seed=2)
    assert changed(before, teacher) == []
    rec = interpolate(teacher, 0.25, seed=2)
    now = values(teacher)
    for i in before:
        for t, r, x in zip(before[i], random[i], now[i], strict=True):
            assert torch.allclose(x, 0.75 * t + 0.25 * r, atol=1e-6)
    assert rec["op"] == "interpolate" and rec["alpha"] == 0.25 and rec["fraction"] == 1.0
    one = trained()
    interpolate(one, 1.0, seed=2)
    assert changed(random, one) == []


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan")])
def test_interpolate_rejects_alpha_outside_the_unit_interval(teacher, alpha):
    with pytest.raises(UserError, match=r"outside \[0, 1\]"):
        interpolate(teacher, alpha, seed=0)


def test_freeze_stops_exactly_the_selected_gradients(teacher):
    rec = freeze(teacher, "gdd")
    frozen = {id(p) for i in select(teacher, "gdd") for p in named_layers(teacher)[i].parameters()}
    assert all(p.requires_grad == (id(p) not in frozen) for p in teacher.parameters())
    teacher(torch.randn(2, 1, 8, 8), torch.tensor([0.5, 2.0])).square().sum().backward()
    assert all((p.grad is None) == (id(p) in frozen) for p in teacher.parameters())
    total = sum(p.numel() for p in teacher.parameters())
    n_frozen = sum(p.numel() for p in teacher.parameters() if not p.requires_grad)
    assert rec["params"] == n_frozen and rec["fraction"] == n_frozen / total
    assert rec["fraction"] == pytest.approx(0.788, abs=1e-3)  # tiny net: 148832 / 188769


def test_build_init_never_modifies_the_teacher(teacher):
    teacher.requires_grad_(False)  # like an EMA copy
    before = values(teacher)
    spec = InitSpec("teacher", interpolate=0.5, transfer_from="(a trained net)",
                    transfer_layers="head", reinit="stem", shuffle="gdd", freeze="gdd")
    net, records = build_init(teacher, spec, seed=1, source=trained(seed=4))
    assert changed(before, teacher) == []
    assert not any(p.requires_grad for p in teacher.parameters())
    assert [r["op"] for r in records] == ["init", "interpolate", "transfer", "reinit", "shuffle",
                                         "freeze"]
    frozen = sum(p.numel() for p in net.parameters() if not p.requires_grad)
    assert frozen == records[-1]["params"] > 0
    assert all(p.requires_grad for i in select(net, "all-gdd")
               for p in named_layers(net)[i].parameters())


def test_build_init_teacher_is_a_copy(teacher):
    net, records = build_init(teacher)
    assert changed(values(teacher), net) == []
    assert net is not teacher
    assert records == [{"op": "init", "spec": "all", "layers": select(teacher, "all"),
                        "params": sum(p.numel() for p in teacher.parameters()), "fraction": 1.0,
                        "init": "teacher"}]


def test_build_init_random_is_seeded(teacher):
    a, rec = build_init(teacher, InitSpec("random"), seed=3)
    b, _ = build_init(teacher, InitSpec("random"), seed=3)
    c, _ = build_init(teacher, InitSpec("random"), seed=4)
    assert changed(values(a), b) == [] and changed(values(a), c) != []
    assert changed(values(teacher), a) == select(teacher, "all")
    assert rec[0]["init"] == "random" and rec[0]["seed"] == 3 and rec[0]["restored"] == UNET_INIT


def test_build_init_later_ops_win(teacher):
    source = trained(seed=6)
    spec = InitSpec(transfer_from="(source)", transfer_layers="stem", reinit="stem")
    net, _ = build_init(teacher, spec, seed=1, source=source)
    random, _ = build_init(teacher, InitSpec("random"), seed=1)
    assert same(values(net)["enc.8x8_conv"], values(random)["enc.8x8_conv"])


@pytest.mark.parametrize("kwargs, match", [
    ({"init": "zeros"}, "unknown init"),
    ({"init": "random", "interpolate": 0.5}, "interpolate blends the teacher"),
    ({"transfer_layers": "head"}, "go together"),
])
def test_build_init_errors(teacher, kwargs, match):
    with pytest.raises(UserError, match=match):
        build_init(teacher, InitSpec(**kwargs))


def test_init_spec_lists_its_ops_in_the_order_they_are_applied():
    spec = InitSpec(freeze="gdd", reinit="decoder", interpolate=0.25, transfer_from="t",
                    transfer_layers="encoder")
    assert spec.ops() == [("interpolate", 0.25), ("transfer", "encoder"),
                          ("reinit", "decoder"), ("freeze", "gdd")]
    assert InitSpec().ops() == []
