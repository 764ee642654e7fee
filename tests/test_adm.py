"""ADM (EDM's DhariwalUNet) in initprobe's layer vocabulary: ids, groups, the `gdd` preset,
re-initialization by ADM's own recipe, probes and CKA."""

import math

import pytest
import torch

from initprobe.ablate.ops import freeze, reinit
from initprobe.ablate.select import count_params, select
from initprobe.measure.analyses.activations import probe_activations
from initprobe.measure.analyses.profiles import ProbeOptions
from initprobe.measure.analyses.similarity import cka_matrix
from initprobe.nets.layers import last_conv_id, layer_table, named_blocks, named_layers
from initprobe.nets.precond import Denoiser
from initprobe.nets.unet import UNetConfig

ADM = dict(img_resolution=8, in_channels=3, out_channels=3, model_type="DhariwalUNet",
           model_channels=32, channel_mult=[2, 4], num_blocks=1, attn_resolutions=[8, 4],
           label_dim=10)


@pytest.fixture
def adm():
    torch.manual_seed(0)
    return Denoiser(UNetConfig(**ADM), precond="edm").eval()


def test_adm_layer_ids_follow_the_vocabulary(adm):
    table = layer_table(adm).set_index("layer")
    assert table.loc["dec.8x8_aux_norm", "groups"] == "head,norm"
    assert table.loc["dec.8x8_aux_conv", "groups"] == "head"
    assert named_layers(adm)["dec.8x8_aux_conv"] is adm.model.out_conv
    assert table.loc["map_label", "groups"] == "embedding"
    assert table.loc["enc.8x8_conv", "groups"] == "stem"
    assert table.loc["dec.4x4_in0.qkv", "groups"] == "bottleneck,attention"
    assert table.loc["enc.4x4_down.conv0", "groups"] == "encoder,conv"
    assert table.loc["dec.8x8_block1.skip", "groups"] == "decoder,skip"
    assert not any(i.startswith("out_") or i.startswith("model.") for i in table.index)
    # every parameter belongs to exactly one layer id
    assert table["params"].sum() == sum(p.numel() for p in adm.parameters())
    # attention on both sides at the listed resolutions, one head per 64 channels
    assert {"enc.8x8_block0.qkv", "dec.8x8_block0.qkv", "dec.4x4_block1.proj"} <= set(table.index)
    assert adm.model.dec["4x4_block0"].num_heads == 2
    blocks = named_blocks(adm)
    assert list(blocks)[-1] == "dec.8x8_aux_conv" and "enc.4x4_down" in blocks
    assert last_conv_id(adm, "dec.4x4_in0") == "dec.4x4_in0.proj"
    assert last_conv_id(adm, "enc.4x4_down") == "enc.4x4_down.conv1"


def test_gdd_preset_freezes_every_blocks_convs_and_attention_projection(adm):
    ids = select(adm, "gdd")
    assert ids and all(i.rsplit(".", 1)[-1] in ("conv0", "conv1", "proj") for i in ids)
    n_blocks = sum(1 for b in named_blocks(adm) if not b.endswith(("_conv", "aux_conv")))
    assert sum(i.endswith(".conv0") for i in ids) == n_blocks
    rec = freeze(adm, "gdd")
    frozen = sum(p.numel() for p in adm.parameters() if not p.requires_grad)
    assert frozen == rec["params"] == count_params(adm, ids)["params"]
    assert 0 < rec["fraction"] < 1


def test_reinit_restores_adms_own_init(adm):
    layers = named_layers(adm)
    with torch.no_grad():
        for p in adm.parameters():
            p.fill_(3.0)
    reinit(adm, "dec.4x4_in0,dec.8x8_aux_conv,map_label", seed=1)
    blk = adm.model.dec["4x4_in0"]
    assert torch.all(blk.conv1.weight == 0) and torch.all(blk.proj.bias == 0)
    assert torch.all(layers["dec.8x8_aux_conv"].weight == 0)
    bound = 1 / math.sqrt(blk.conv0.weight[0].numel())  # kaiming-uniform * sqrt(1/3)
    for t in (blk.conv0.weight, blk.conv0.bias):
        assert t.abs().max() <= bound and t.abs().max() > 0.5 * bound
    assert torch.all(blk.norm0.weight == 1) and torch.all(blk.norm0.bias == 0)
    label = adm.model.map_label.weight  # kaiming-normal * sqrt(label_dim): std 1
    assert 0.8 < label.std().item() < 1.2 and adm.model.map_label.bias is None
    assert torch.all(adm.model.dec["4x4_in1"].conv0.weight == 3.0)  # untouched


def test_probes_and_cka_run_on_adm(adm):
    with torch.no_grad():  # as trained: ADM's init zeroes every block's last conv
        for p in adm.parameters():
            p.add_(0.05 * torch.randn_like(p))
    images = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    probed = probe_activations(adm, images, ProbeOptions([0.5, 2.0], "blocks"))
    probed = probed[probed["metric"] == "mean_abs"]
    assert set(probed["layer"]) == {last_conv_id(adm, b) for b in named_blocks(adm)}
    assert len(probed) == 2 * len(named_blocks(adm)) and (probed["value"] > 0).all()
    m = cka_matrix(adm, adm, images, 0.5, ProbeOptions(layers=select(adm, "head")))
    diag = m[m["layer"] == m["layer_b"]]["value"]
    assert len(diag) == 2 and torch.allclose(torch.tensor(diag.to_list()), torch.ones(2),
                                              atol=1e-4)
