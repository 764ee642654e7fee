import pytest

from initprobe.ablate.select import count_params, select, selection_table
from initprobe.errors import UserError
from initprobe.nets.layers import GROUPS, last_conv_id, layer_table, named_blocks, named_layers
from initprobe.nets.precond import Denoiser
from initprobe.nets.unet import UNetConfig


@pytest.fixture(scope="module")
def net():
    return Denoiser(UNetConfig())


@pytest.fixture(scope="module")
def ids(net):
    return list(named_layers(net))


def in_group(net, group):
    table = layer_table(net)
    return [r.layer for r in table.itertuples() if group in r.groups.split(",")]


@pytest.mark.parametrize("group", GROUPS)
def test_group_selects_its_layers_in_network_order(net, group):
    expected = in_group(net, group)
    assert expected and select(net, group) == expected


def test_groups_pin_down_the_small_ones(net):
    assert select(net, "stem") == ["enc.8x8_conv"]
    assert select(net, "head") == ["dec.8x8_aux_norm", "dec.8x8_aux_conv"]
    assert select(net, "embedding") == ["map_layer0", "map_layer1"]
    assert {i.split(".")[1] for i in select(net, "bottleneck")} == {"4x4_in0", "4x4_in1"}


def test_all_is_every_layer(net, ids):
    assert select(net, "all") == ids


def test_resolution(net, ids):
    low = select(net, "res:4")
    assert low and all("4x4" in i for i in low)
    assert "enc.4x4_down.conv0" in low and "dec.8x8_up.conv0" not in low
    high = select(net, "res:8")
    assert set(low) | set(high) | {"map_layer0", "map_layer1"} == set(ids)


def test_globs(net, ids):
    assert select(net, "enc.4x4_*") == [i for i in ids if i.startswith("enc.4x4_")]
    conv1 = select(net, "*.conv1")
    assert conv1 == [i for i in ids if i.endswith(".conv1")]
    assert len(conv1) == 10  # residual blocks: 3 encoder, 2 bottleneck, 5 decoder


def test_bare_block_id_selects_its_sublayers(net):
    assert select(net, "dec.8x8_up") == [f"dec.8x8_up.{s}" for s in
                                         ("norm0", "conv0", "affine", "norm1", "conv1", "skip")]
    assert select(net, "dec.*_up") == select(net, "dec.8x8_up")  # a glob over block ids
    assert select(net, "enc.8x8_block0.conv1") == ["enc.8x8_block0.conv1"]
    assert select(net, "enc") == select(net, "stem+encoder")


def test_partial_block_name_is_not_a_prefix(net):
    with pytest.raises(UserError, match="matches no layer"):
        select(net, "dec.8x8_u")  # prefixes end at dots: no partial names


def test_regex(net, ids):
    got = select(net, r"re:^dec\..*conv[01]$")
    assert got == [i for i in ids if i.startswith("dec.") and i[-6:] in (".conv0", ".conv1")]
    assert select(net, "re:qkv") == select(net, "*.qkv")  # search, not full match


def test_union_operators_agree_and_keep_network_order(net):
    both = select(net, "head,stem")
    assert both == select(net, "stem+head") == ["enc.8x8_conv", "dec.8x8_aux_norm",
                                                 "dec.8x8_aux_conv"]
    assert select(net, " stem + head ") == both


def test_difference(net):
    got = select(net, "decoder-attention")
    assert got == [i for i in select(net, "decoder") if i not in select(net, "attention")]
    assert not any(i.endswith((".qkv", ".proj", ".norm2")) for i in got)


def test_operators_apply_left_to_right(net):
    got = select(net, "encoder+bottleneck-norm")
    assert set(got) == (set(select(net, "encoder")) | set(select(net, "bottleneck"))) \
        - set(select(net, "norm"))
    assert set(select(net, "norm")) & set(select(net, "encoder-norm+norm"))
    assert not set(select(net, "norm")) & set(select(net, "encoder+norm-norm"))


def test_regex_runs_to_the_end(net):
    assert select(net, "decoder-re:qkv$") == [i for i in select(net, "decoder")
                                              if not i.endswith("qkv")]
    assert select(net, "re:conv[0-1]$") == select(net, "conv")  # '-' inside the regex


def test_gdd_preset(net):
    got = select(net, "gdd")
    assert {i.rsplit(".", 1)[1] for i in got} == {"conv0", "conv1", "proj"}
    assert got == select(net, "conv+*.proj")
    assert len(got) == 2 * 10 + 3  # 10 residual blocks, 3 of them with attention


def test_unknown_group_lists_the_valid_ones(net):
    with pytest.raises(UserError) as e:
        select(net, "encodr")
    msg = str(e.value)
    assert "did you mean 'encoder'" in msg and "\n" not in msg
    assert all(g in msg for g in (*GROUPS, "all", "gdd", "res:R", "re:"))


@pytest.mark.parametrize("spec", ["res:16", "enc.16x16_*", "*.conv9", "re:^nope"])
def test_empty_match_is_an_error(net, spec):
    with pytest.raises(UserError, match="matches no layer"):
        select(net, spec)


def test_a_term_matching_nothing_is_an_error_even_in_a_union(net):
    with pytest.raises(UserError, match="'res:16' matches no layer"):
        select(net, "decoder,res:16")


def test_empty_result_is_an_error(net):
    with pytest.raises(UserError, match="selects no layer"):
        select(net, "decoder-decoder")


def test_bad_regex(net):
    with pytest.raises(UserError, match="bad regular expression"):
        select(net, "re:(")


@pytest.mark.parametrize("spec", ["", "  ", "decoder,,head", "-norm", "decoder-", "x:y",
                                  "res:abc", "foore:x", "enc oder"])
def test_syntax_errors(net, spec):
    with pytest.raises(UserError, match="valid terms"):
        select(net, spec)


def test_selection_table(net):
    table = selection_table(net, "gdd")
    total = sum(p.numel() for p in net.parameters())
    layers = named_layers(net)
    params = sum(p.numel() for i in select(net, "gdd") for p in layers[i].parameters())
    assert list(table["layer"]) == select(net, "gdd")
    assert table.attrs == {"spec": "gdd", "layers": 23, "params": params,
                           "fraction": params / total}
    assert table["fraction"].sum() == pytest.approx(params / total)
    assert 0 < params < total


def test_count_params(net, ids):
    assert count_params(net, ids) == {"params": sum(p.numel() for p in net.parameters()),
                                      "fraction": 1.0}
    assert count_params(net, ["enc.8x8_conv"])["params"] == 16 * 1 * 9 + 16


def test_blocks_preset_is_the_last_conv_of_every_block(net):
    expected = [last_conv_id(net, b) for b in named_blocks(net)]
    assert len(expected) == len(named_blocks(net)) > 4
    assert select(net, "blocks") == expected
    assert all(i.endswith((".conv1", ".proj", "_conv")) for i in expected)
    decoder = set(select(net, "decoder"))
    assert select(net, "blocks-decoder") == [i for i in expected if i not in decoder]
    assert select(net, "blocks,enc.8x8_block0.conv0")[:3] == [
        i for i in named_layers(net) if i in {*expected, "enc.8x8_block0.conv0"}][:3]


def test_a_selector_that_matches_nothing_names_itself_and_the_layers_command(net):
    with pytest.raises(UserError, match=r"'enc\.99x99\*'.*initprobe layers CHECKPOINT"):
        select(net, "enc.99x99*")
