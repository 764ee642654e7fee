"""Every EDM architecture through the no-code loader: DDPM++, NCSN++ and ADM, unconditional and
class-conditional, under VP, VE and EDM preconditioning, against known answers computed by EDM's
own code; malformed kwargs refused in one line; ADM in the layer vocabulary."""

import json
import pickle
from pathlib import Path

import pytest
import torch
from edm_records import (
    KNOWN_ARCHS,
    KNOWN_IMAGE,
    KNOWN_LABEL_DIMS,
    KNOWN_SIGMAS,
    WRAPPERS,
    Persistent,
    fake_persistence,
    fill,
    known_inputs,
    model_kwargs,
    record,
    write_edm_pickle,
)

from initprobe.errors import UserError
from initprobe.nets.edm_pickle import load_edm_pickle, read_pickle, record_tensors
from initprobe.nets.io import load_network, read_meta, save_checkpoint
from initprobe.nets.precond import Denoiser
from initprobe.nets.unet import UNetConfig

KNOWN = json.loads((Path(__file__).parent / "data" / "edm_known_answers.json").read_text())
CASES = [(arch, precond, label_dim) for arch in KNOWN_ARCHS for precond in KNOWN_SIGMAS
         for label_dim in KNOWN_LABEL_DIMS]
TINY = dict(KNOWN_IMAGE, **KNOWN_ARCHS["ddpmpp"])


def known_cfg(arch: str, label_dim: int) -> UNetConfig:
    return UNetConfig(**KNOWN_IMAGE, label_dim=label_dim, **KNOWN_ARCHS[arch])


def assert_matches(got: torch.Tensor, want: list[float]):
    want = torch.tensor(want).reshape(got.shape)
    assert ((got - want).norm() / want.norm()).item() < 1e-5
    assert ((got - want).abs().max() / want.abs().max()).item() < 1e-5


@pytest.mark.parametrize("arch,precond,label_dim", CASES)
def test_every_architecture_matches_edms_own_outputs(tmp_path, arch, precond, label_dim):
    cfg = known_cfg(arch, label_dim)
    src = fill(Denoiser(cfg, precond=precond))
    pkl = write_edm_pickle(tmp_path / "net.pkl", src, wrapper=WRAPPERS[precond],
                           augment_dim=9 if label_dim else 0)
    net, info = load_edm_pickle(pkl)
    assert net.cfg == cfg and net.precond == precond
    # every tensor in the file is mapped (only map_augment, unused at sampling, is dropped)
    written = record_tensors(read_pickle(pkl)["ema"])
    loaded = net.state_dict()
    assert set(written) == set(loaded) | set(info["dropped_tensors"])
    assert info["dropped_tensors"] == (["model.map_augment.weight"] if label_dim else [])
    assert all(torch.equal(loaded[k], written[k]) for k in loaded)
    known = KNOWN["cases"][f"{arch}-{'cond' if label_dim else 'uncond'}-{precond}"]
    x, labels = known_inputs(cfg, KNOWN_SIGMAS[precond])
    sigma = torch.tensor(KNOWN_SIGMAS[precond])
    with torch.no_grad():
        assert_matches(net(x, sigma, class_labels=labels), known["D"])
        if label_dim:
            assert_matches(net(x, sigma), known["D_no_labels"])
            assert not torch.allclose(net(x, sigma, labels), net(x, sigma))


def test_labels_shared_or_per_image_and_dropout_only_in_training():
    cfg = known_cfg("adm", 10)
    net = fill(Denoiser(cfg, precond="edm")).eval()
    x, _ = known_inputs(cfg, [0.5, 0.5])
    one = torch.nn.functional.one_hot(torch.tensor([7]), 10).float()
    with torch.no_grad():
        assert torch.equal(net(x, 0.5, one), net(x, 0.5, one.expand(2, 10)))
        net.train()
        net.model.cfg.label_dropout = 0.999999
        dropped = net(x, 0.5, one)
        net.eval()
        assert torch.allclose(dropped, net(x, 0.5), atol=1e-6)
        assert not torch.allclose(dropped, net(x, 0.5, one), atol=1e-4)


def test_label_dropout_is_recorded_in_the_config(tmp_path):
    cfg = UNetConfig(**TINY, label_dim=10, label_dropout=0.1)
    pkl = write_edm_pickle(tmp_path / "cfg.pkl", Denoiser(cfg, precond="edm"),
                           wrapper="EDMPrecond")
    net, info = load_edm_pickle(pkl)
    assert net.cfg.label_dropout == 0.1 and info["edm_model_kwargs"]["label_dropout"] == 0.1


@pytest.mark.parametrize("song,omit,named", [
    ({}, ("in_channels",), "lack 'in_channels': expected a positive int"),
    ({"img_resolution": 15}, (), "img_resolution=15: expected a multiple of 2"),
    ({"channel_mult": "ab"}, (), "channel_mult='ab': expected a non-empty list of positive ints"),
    ({"attn_resolutions": None}, (), "attn_resolutions=None: expected a list of resolutions"),
    ({"embedding_type": "foo"}, (), "embedding_type='foo': expected 'positional' or 'fourier'"),
    ({"model_channels": 16.0}, (), "model_channels=16.0: expected a positive int"),
    ({"model_channels": True}, (), "model_channels=True: expected a positive int"),
    ({"num_blocks": -1}, (), "num_blocks=-1: expected a positive int"),
    ({"dropout": 1.5}, (), "dropout=1.5: expected a number in [0, 1)"),
    ({"label_dropout": "0.1"}, (), "label_dropout='0.1': expected a number in [0, 1)"),
    ({"encoder_type": "ladder"}, (), "encoder_type='ladder': expected 'standard' or 'skip'"),
    ({"resample_filter": [1, "3"]}, (), "resample_filter=[1, '3']: expected a non-empty list"),
    ({"channel_mult": [1, 0]}, (), "channel_mult=[1, 0]"),
    ({"out_channels": 3}, (), "in_channels=2, out_channels=3: expected equal"),
    ({"model_channels": 36}, (), "model_channels=36, channel_mult=[1, 2] do not make a working"),
    ({"fancy": 1}, (), "option(s) ['fancy'] are not supported"),
])
def test_malformed_kwargs_give_one_line_errors_naming_key_and_expectation(tmp_path, song, omit,
                                                                          named):
    cfg = UNetConfig(**{**TINY, "in_channels": 2, "out_channels": 2})
    pkl = write_edm_pickle(tmp_path / "bad.pkl", Denoiser(cfg, precond="vp"), song=song,
                           omit=omit)
    with pytest.raises(UserError) as e:
        load_edm_pickle(pkl)
    msg = str(e.value)
    assert "\n" not in msg and str(pkl) in msg and named in msg, msg


def test_adm_kwargs_are_checked_too(tmp_path):
    cfg = known_cfg("adm", 0)
    pkl = write_edm_pickle(tmp_path / "adm.pkl", Denoiser(cfg, precond="edm"),
                           wrapper="EDMPrecond", song={"embedding_type": "fourier"})
    with pytest.raises(UserError, match=r"DhariwalUNet option\(s\) \['embedding_type'\]"):
        load_edm_pickle(pkl)


def dump_mutated(path, mutate):
    """A tiny network's records, changed by `mutate(model_record)`, pickled as {"ema": ...}."""
    ref = Denoiser(UNetConfig(**TINY), precond="vp")
    with fake_persistence():
        unet = record(ref.model, "")
        unet.state["_init_kwargs"] = model_kwargs(ref.cfg)
        mutate(unet)
        top = Persistent("VPPrecond", {"_modules": {"model": unet}, "_init_kwargs": {}}, "")
        path.write_bytes(pickle.dumps({"ema": top}))
    return path


def _cycle(unet):
    enc = unet.state["_modules"]["enc"]  # a torch ModuleDict holding records
    enc._modules["8x8_block0"].state["_modules"]["loop"] = enc


def _slot(key, value):
    return lambda unet: unet.state["_modules"]["map_layer0"].state.update({key: value})


@pytest.mark.parametrize("mutate,named", [
    (_cycle, r"enc\.8x8_block0\.loop contains itself"),
    (_slot("_modules", [1, 2]), "Linear's _modules is a list not keyed by names"),
    (_slot("_parameters", {0: torch.zeros(1)}), "Linear's _parameters is a dict not keyed by"),
    (_slot("_buffers", "abc"), "Linear's _buffers is a str"),
    (_slot("_non_persistent_buffers_set", 3), "_non_persistent_buffers_set is a int, not a set"),
    (_slot("_parameters", {"weight": [1.0]}), "map_layer0.weight is a list, not a tensor"),
])
def test_damaged_module_records_give_one_line_errors(tmp_path, mutate, named):
    pkl = dump_mutated(tmp_path / "bad.pkl", mutate)
    with pytest.raises(UserError, match=named) as e:
        load_edm_pickle(pkl)
    assert "\n" not in str(e.value)


def test_a_conditional_adm_converts_to_a_checkpoint_and_back(tmp_path):
    cfg = known_cfg("adm", 10)
    pkl = write_edm_pickle(tmp_path / "adm.pkl", fill(Denoiser(cfg, precond="edm")),
                           wrapper="EDMPrecond", augment_dim=9)
    net, info = load_edm_pickle(pkl)
    save_checkpoint(tmp_path / "adm", net, **info)
    back = load_network(tmp_path / "adm")
    assert back.cfg == cfg and read_meta(tmp_path / "adm")["unet"]["model_type"] == "DhariwalUNet"
    x, labels = known_inputs(cfg, KNOWN_SIGMAS["edm"])
    with torch.no_grad():
        assert torch.equal(back(x, torch.tensor(KNOWN_SIGMAS["edm"]), labels),
                           net(x, torch.tensor(KNOWN_SIGMAS["edm"]), labels))


def test_configs_serialize_compactly_and_round_trip():
    plain = UNetConfig(**TINY).to_dict()
    # a DDPM++ unconditional config reads as before the NCSN++/ADM/label fields existed
    assert not {"encoder_type", "decoder_type", "label_dim", "label_dropout",
                "model_type"} & set(plain)
    for cfg in (UNetConfig(**TINY), known_cfg("adm", 10), known_cfg("ncsnpp-skip", 0),
                UNetConfig(**TINY, label_dim=3, label_dropout=0.1)):
        assert UNetConfig(**json.loads(json.dumps(cfg.to_dict()))) == cfg
