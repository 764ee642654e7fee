import numpy as np
import pytest
import torch
from PIL import Image

from initprobe.ablate.select import block_layer_ids
from initprobe.errors import UserError
from initprobe.measure.analyses.activations import probe_activations, probe_many
from initprobe.measure.analyses.profiles import ProbeOptions, default_sigmas, fixed_noise
from initprobe.nets.layers import named_layers
from initprobe.nets.precond import Denoiser, coefficients
from initprobe.nets.unet import UNetConfig
from initprobe.report.figures import layer_sigma_heatmap
from initprobe.schema import COLUMNS

torch.set_num_threads(1)
SIGMAS = [0.01, 0.3, 2.0, 80.0]


def make_net(seed=0):
    torch.manual_seed(seed)
    return Denoiser(UNetConfig()).eval()


@pytest.fixture(scope="module")
def images():
    return torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1


@pytest.fixture(scope="module")
def table(images):
    return probe_activations(make_net(), images, ProbeOptions(SIGMAS, batch=5))


def test_default_sigmas_are_the_edm_grid_with_80_once():
    s = default_sigmas()
    assert len(s) == 18 and s == sorted(s)
    assert s[0] == pytest.approx(0.002) and s[-1] == pytest.approx(80.0)
    assert sum(abs(v - 80.0) < 1e-6 for v in s) == 1


@pytest.mark.parametrize("stat", ["mean_abs", "rms"])
def test_stem_with_identity_taps_matches_the_closed_form(images, stat):
    """Stem conv with every output channel = its input's centre pixel: h = c_in (x + sigma n)."""
    net = make_net()
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.model.enc["8x8_conv"].weight[:, 0, 1, 1] = 1.0
    df = probe_activations(net, images, ProbeOptions(SIGMAS, ["enc.8x8_conv"], seed=3), stat)
    noise = fixed_noise(images, 3)
    got = df[df.metric == stat].set_index("sigma")["value"]
    for sigma in SIGMAS:
        h = coefficients(torch.tensor(sigma))[2] * (images + sigma * noise)
        per_image = h.abs().mean((1, 2, 3)) if stat == "mean_abs" else \
            h.square().mean((1, 2, 3)).sqrt()
        assert got[sigma] == pytest.approx(per_image.mean().item(), rel=1e-5)
    if stat == "rms":  # E (x + sigma n)^2 c_in^2 ~ (x^2 + sigma^2) / (0.25 + sigma^2): O(1)
        assert got[80.0] == pytest.approx(1.0, abs=0.1)


def test_minmax_has_one_zero_and_one_one_per_layer(table):
    mm = table[table.metric == "minmax"]
    assert mm["value"].between(0, 1).all()
    for _, g in mm.groupby("layer"):
        assert len(g) == len(SIGMAS)
        assert (g["value"] == 0).sum() == 1 and (g["value"] == 1).sum() == 1


def test_table_schema_and_network_order(table):
    net = make_net()
    assert list(table.columns[:len(COLUMNS)]) == COLUMNS
    ids = block_layer_ids(net)
    assert ids[0] == "enc.8x8_conv" and ids[-1] == "dec.8x8_aux_conv"
    assert "enc.4x4_block0.proj" in ids  # attention block -> its output projection
    for metric in ("mean_abs", "minmax"):
        rows = table[table.metric == metric]
        assert list(dict.fromkeys(rows["layer"])) == ids
        assert rows.groupby("layer", sort=False)["sigma"].apply(list).map(
            lambda s: s == SIGMAS).all()
    low_first = table[table.layer == "dec.4x4_in0.proj"].iloc[0]
    assert (low_first.side, low_first.res, low_first.block, low_first.sublayer) == \
        ("dec", 4, "in0", "proj")


def test_layer_list_is_returned_in_network_order(images):
    net = make_net()
    df = probe_activations(net, images,
                           ProbeOptions([1.0, 2.0], ["dec.8x8_aux_conv", "map_layer0"]))
    assert list(dict.fromkeys(df["layer"])) == ["map_layer0", "dec.8x8_aux_conv"]
    everything = probe_activations(net, images, ProbeOptions([1.0], "all"))
    assert list(dict.fromkeys(everything["layer"])) == list(named_layers(net))


def test_seeded_noise_is_deterministic_and_hooks_are_removed(images, table):
    net = make_net()
    again = probe_activations(net, images, ProbeOptions(SIGMAS, batch=5))
    np.testing.assert_array_equal(again["value"], table["value"])
    one_batch = probe_activations(net, images, ProbeOptions(SIGMAS, batch=12))
    raw = table.metric == "mean_abs"
    np.testing.assert_allclose(one_batch["value"][raw], table["value"][raw], rtol=1e-4)
    other = probe_activations(net, images, ProbeOptions(SIGMAS, seed=1))
    assert not np.allclose(other["value"], table["value"])
    assert sum(len(m._forward_hooks) for m in net.modules()) == 0


def test_probe_many_labels_runs_and_shares_noise(images):
    a, b = make_net(0), make_net(0)
    df = probe_many({"a": a, "b": b, "c": make_net(5)}, images, ProbeOptions([0.5, 5.0]))
    assert list(dict.fromkeys(df["run"])) == ["a", "b", "c"]
    va, vb, vc = (df[df.run == r]["value"].to_numpy() for r in "abc")
    np.testing.assert_array_equal(va, vb)
    assert not np.allclose(va, vc)


def test_block_without_a_named_last_conv_is_a_user_error(monkeypatch):
    net = make_net()
    monkeypatch.setattr(net, "canonical_blocks", lambda: {"enc.8x8_odd": torch.nn.Identity()},
                        raising=False)
    with pytest.raises(UserError, match="enc.8x8_odd"):
        block_layer_ids(net)


def test_unknown_stat_or_layer_selector_is_a_user_error(images):
    with pytest.raises(UserError, match="statistic"):
        probe_activations(make_net(), images, ProbeOptions([1.0]), "max")
    with pytest.raises(UserError, match="selector 'convs'.*matches no layer.*initprobe layers"):
        probe_activations(make_net(), images, ProbeOptions([1.0], "convs"))
    with pytest.raises(UserError, match="no layers"):
        probe_activations(make_net(), images, ProbeOptions([1.0], []))


def test_heatmap_writes_one_panel_per_run(images, tmp_path):
    df = probe_many({"a": make_net(0), "b": make_net(1)}, images, ProbeOptions(SIGMAS))
    two = Image.open(layer_sigma_heatmap(df, tmp_path / "two.png"))
    one = Image.open(layer_sigma_heatmap(df[df.run == "a"], tmp_path / "one.png"))
    assert two.format == "PNG" and two.width > one.width * 1.3
    assert not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(UserError, match="attr_conductance"):
        layer_sigma_heatmap(df, tmp_path / "x.png", metric="attr_conductance")
