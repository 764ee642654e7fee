"""EDM network pickles: faithful loading, clear refusals, and nothing in a file ever executed.

The pickles are written here in EDM's format: every persistent object reduces to a call
`torch_utils.persistence._reconstruct_persistent_obj(meta)` with meta = {type, version,
module_src, class_name, state}, the state being the module's `__dict__` (torch's own `_parameters`,
`_buffers`, `_modules` ..., EDM's attributes, `_init_args`/`_init_kwargs`); `enc`/`dec` are plain
`torch.nn.ModuleDict`s. A throwaway in-memory `torch_utils.persistence` module exists only while
writing, so that pickle can name the global.
"""

import os
import pickle
import subprocess
import sys
import types
from collections import OrderedDict
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from torch import nn

from initprobe.errors import UserError
from initprobe.nets.edm_pickle import load_edm_pickle
from initprobe.nets.io import load_network, read_meta
from initprobe.nets.precond import Denoiser, coefficients
from initprobe.nets.unet import PRESETS, UNetBlock, UNetConfig

TINY = {"img_resolution": 8, "in_channels": 2, "out_channels": 2, "model_channels": 16,
        "channel_mult": [1, 2], "num_blocks": 1, "attn_resolutions": [4]}
SIGMAS = [0.002, 0.3, 2.0, 80.0]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small convs on shared CPU cores run far faster on one thread than on contended two."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@contextmanager
def fake_persistence():
    mod = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):
        raise AssertionError("the writer's stand-in is never called")

    _reconstruct_persistent_obj.__module__ = mod.__name__
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    mod._reconstruct_persistent_obj = _reconstruct_persistent_obj
    pkg = types.ModuleType("torch_utils")
    pkg.persistence = mod
    sys.modules.update({"torch_utils": pkg, "torch_utils.persistence": mod})
    try:
        yield
    finally:
        del sys.modules["torch_utils"], sys.modules["torch_utils.persistence"]


class Persistent:
    """Pickles exactly like an EDM persistent object."""

    def __init__(self, class_name, state, module_src):
        self.class_name, self.state, self.module_src = class_name, state, module_src

    def __reduce__(self):
        meta = {"type": "class", "version": 6, "module_src": self.module_src,
                    "class_name": self.class_name, "state": self.state}
        return sys.modules["torch_utils.persistence"]._reconstruct_persistent_obj, (meta,)


class Evil:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def record(m: nn.Module, src: str):
    """An EDM-style record of `m`: torch's module internals plus plain attributes."""
    if isinstance(m, nn.ModuleDict):
        md = nn.ModuleDict()
        md._modules = OrderedDict((k, record(c, src)) for k, c in m.items())
        md.training = False
        return md
    state = {k: v for k, v in vars(m).items()
             if k != "_modules" and (k.startswith("_") or isinstance(v, (bool, int, float, str)))}
    state.update(training=False, _init_args=(), _init_kwargs={})
    state["_modules"] = OrderedDict((k, record(c, src)) for k, c in m._modules.items())
    if isinstance(m, UNetBlock):  # EDM stores numpy scalars here
        state["skip_scale"] = np.sqrt(0.5)
        state["_init_kwargs"] = {"init_attn": {"init_mode": "xavier_uniform",
                                               "init_weight": np.sqrt(0.2)}}
    return Persistent(type(m).__name__, state, src)


def write_edm_pickle(path, net: Denoiser, wrapper="VPPrecond", song=None, augment_dim=0,
                     src="", wrapper_attrs=None, omit=()):
    """Write `net` as EDM's `training_loop` does: dict(ema=..., loss_fn=..., ...)."""
    cfg = net.cfg
    song_kwargs = {"img_resolution": cfg.img_resolution, "in_channels": cfg.in_channels,
                   "out_channels": cfg.out_channels, "label_dim": 0, "augment_dim": augment_dim,
                   "model_channels": cfg.model_channels, "channel_mult": cfg.channel_mult,
                   "num_blocks": cfg.num_blocks, "attn_resolutions": cfg.attn_resolutions,
                   "dropout": cfg.dropout, "embedding_type": cfg.embedding_type,
                   "channel_mult_noise": cfg.channel_mult_noise, "encoder_type": "standard",
                   "decoder_type": "standard", "resample_filter": cfg.resample_filter}
    song_kwargs.update(song or {})
    for k in omit:
        del song_kwargs[k]
    with fake_persistence():
        unet = record(net.model, src)
        mods = unet.state["_modules"]
        aug = None
        if augment_dim:
            aug = record(nn.Linear(augment_dim, cfg.model_channels, bias=False), src)
            aug.class_name = "Linear"
        unet.state["_modules"] = OrderedDict(
            [("map_noise", mods["map_noise"]), ("map_label", None), ("map_augment", aug)]
            + [(k, v) for k, v in mods.items() if k != "map_noise"])
        unet.class_name = song_kwargs.pop("model_class", "SongUNet")
        unet.state.update(label_dropout=0, _init_kwargs=song_kwargs)
        top = record(nn.Module(), src)
        top.class_name = wrapper
        top.state["_modules"] = OrderedDict(model=unet)
        top.state.update(img_resolution=cfg.img_resolution, img_channels=cfg.in_channels,
                         label_dim=0, use_fp16=False, sigma_min=0.002, sigma_max=80.0,
                         sigma_data=0.5, beta_d=19.9, beta_min=0.1, M=1000, epsilon_t=1e-5,
                         _init_kwargs=dict(song_kwargs, model_type=unet.class_name))
        top.state.update(wrapper_attrs or {})
        loss = Persistent("VPLoss", {"beta_d": 19.9, "beta_min": 0.1, "epsilon_t": 1e-5}, src)
        data = {"ema": top, "loss_fn": loss, "augment_pipe": None,
                "dataset_kwargs": {"path": "cifar10-32x32.zip", "use_labels": False}}
        with open(path, "wb") as f:
            pickle.dump(data, f, protocol=4)
    return path


def perturbed(cfg: UNetConfig, precond: str, seed=0) -> Denoiser:
    """A network whose every parameter matters (the default init zeroes residual branches)."""
    torch.manual_seed(seed)
    net = Denoiser(cfg, precond=precond).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return net


def outputs(net, seed=1):
    x = torch.randn(len(SIGMAS), net.cfg.in_channels, net.cfg.img_resolution,
                    net.cfg.img_resolution, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return net(x, torch.tensor(SIGMAS))


def assert_one_line_error(path, *match):
    with pytest.raises(UserError) as e:
        load_edm_pickle(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg
    for m in match:
        assert m in msg, msg
    return msg


@pytest.mark.parametrize("wrapper,kind,embedding", [
    ("VPPrecond", "vp", "positional"), ("EDMPrecond", "edm", "fourier"),
    ("VEPrecond", "ve", "positional")])
def test_tiny_pickle_loads_faithfully_without_executing_module_src(tmp_path, wrapper, kind,
                                                                   embedding):
    marker = tmp_path / "module_src_ran"
    ref = perturbed(UNetConfig(**TINY, embedding_type=embedding), kind)
    pkl = write_edm_pickle(tmp_path / "net.pkl", ref, wrapper=wrapper, augment_dim=9,
                           src=f"open({str(marker)!r}, 'w').close()\n")
    net, info = load_edm_pickle(pkl)
    assert not marker.exists()
    assert "torch_utils" not in sys.modules and "torch_utils.persistence" not in sys.modules
    assert net.precond == kind and net.cfg == ref.cfg
    assert info["edm_precond"] == wrapper
    assert info["dropped_tensors"] == ["model.map_augment.weight"]
    assert torch.equal(outputs(net), outputs(ref))


def test_vp_and_ve_coefficients_match_edm_formulas():
    t = torch.tensor([1e-5, 0.01, 0.3, 1.0], dtype=torch.float64)
    sigma = ((0.5 * 19.9 * t**2 + 0.1 * t).exp() - 1).sqrt()  # EDM's VPPrecond.sigma(t)
    c_skip, c_out, c_in, c_noise = coefficients(sigma, "vp")
    torch.testing.assert_close(c_noise, 999 * t)
    assert torch.equal(c_skip, torch.ones_like(t))
    torch.testing.assert_close(c_out, -sigma)
    torch.testing.assert_close(c_in * (1 + sigma**2).sqrt(), torch.ones_like(t))
    c_skip, c_out, c_in, c_noise = coefficients(sigma, "ve")
    torch.testing.assert_close(c_noise, (sigma / 2).log())
    one = torch.ones_like(t)
    assert torch.equal(c_skip, one) and torch.equal(c_in, one) and torch.equal(c_out, sigma)


def test_cifar10_ddpmpp_pickle_with_edm_default_kwargs(tmp_path):
    cfg = UNetConfig(img_resolution=32, in_channels=3, out_channels=3, **PRESETS["cifar"])
    with torch.device("meta"):
        ref = Denoiser(cfg, precond="vp").eval()
    g = torch.Generator().manual_seed(0)
    state = {}
    for k, v in ref.state_dict().items():
        if k.endswith("resample_filter"):  # the [1, 1] filter, normalized
            state[k] = torch.full(v.shape, 1 / v.numel())
        elif v.ndim > 1:
            state[k] = torch.randn(v.shape, generator=g) / v[0].numel() ** 0.5
        else:
            state[k] = 1 + 0.1 * torch.randn(v.shape, generator=g)
    ref.load_state_dict(state, assign=True)
    # as EDM's train.py: num_blocks and attn_resolutions are left at SongUNet's defaults
    pkl = write_edm_pickle(tmp_path / "edm-cifar10-32x32-uncond-vp.pkl", ref, augment_dim=9,
                           omit=("num_blocks", "attn_resolutions"))
    net, _ = load_edm_pickle(pkl)
    assert net.cfg == cfg and net.precond == "vp"
    assert 55.7e6 < sum(p.numel() for p in net.parameters()) < 55.8e6
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k
    x = torch.randn(1, 3, 32, 32, generator=g)
    with torch.no_grad():
        assert torch.equal(net(x, 2.5), ref(x, 2.5))


@pytest.fixture
def tiny_pickle(tmp_path):
    ref = perturbed(UNetConfig(**TINY), "vp")
    return write_edm_pickle(tmp_path / "tiny.pkl", ref), ref


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("payload,named", [
    (lambda m: Evil(os.system, f"touch {m}"), "posix.system"),
    (lambda m: Evil(exec, f"open({str(m)!r}, 'w').close()"), "builtins.exec"),
    (lambda m: {"ema": Evil(eval, f"open({str(m)!r}, 'w')")}, "builtins.eval"),
    (lambda m: Evil(torch.storage._load_from_bytes, pickle.dumps(Evil(os.system, f"touch {m}"))),
     "not plain tensor data"),
])
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, payload, named):
    marker = tmp_path / "pwned"
    pkl = tmp_path / "evil.pkl"
    pkl.write_bytes(pickle.dumps(payload(marker)))
    assert_one_line_error(pkl, named)
    assert not marker.exists()


def test_malicious_global_deep_inside_a_network_is_refused(tmp_path, tiny_pickle):
    marker = tmp_path / "pwned"
    ref = tiny_pickle[1]
    pkl = write_edm_pickle(tmp_path / "deep.pkl", ref,
                           wrapper_attrs={"sigma_min": Evil(os.system, f"touch {marker}")})
    assert_one_line_error(pkl, "refusing global posix.system")
    assert not marker.exists()


def test_damaged_or_foreign_files_give_one_line_errors(tmp_path, tiny_pickle):
    pkl = tiny_pickle[0]
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(pkl.read_bytes()[: pkl.stat().st_size // 2])
    assert_one_line_error(cut, "not a readable EDM pickle")
    other = tmp_path / "list.pkl"
    other.write_bytes(pickle.dumps([1, 2, 3]))
    assert_one_line_error(other, "holds a list")
    assert_one_line_error(tmp_path / "absent.pkl", "cannot read")
    with fake_persistence():
        no_ema = tmp_path / "no_ema.pkl"
        no_ema.write_bytes(pickle.dumps({"loss_fn": Persistent("EDMLoss", {}, "")}))
    assert_one_line_error(no_ema, "no 'ema' entry", "loss_fn")


@pytest.mark.parametrize("wrapper,song,attrs,named", [
    ("EDMPrecond", {"model_class": "DhariwalUNet"}, {}, "DhariwalUNet (ADM)"),
    ("EDMPrecond", {"encoder_type": "residual", "embedding_type": "fourier"}, {},
     "encoder_type='residual'"),
    ("VPPrecond", {"decoder_type": "skip"}, {}, "decoder_type='skip'"),
    ("EDMPrecond", {"label_dim": 10}, {}, "label_dim=10"),
    ("VPPrecond", {}, {"label_dim": 10}, "label_dim=10"),
    ("iDDPMPrecond", {}, {}, "iDDPMPrecond"),
    ("VPPrecond", {}, {"beta_d": 10.0}, "beta_d=10.0"),
    ("EDMPrecond", {}, {"sigma_data": 1.0}, "sigma_data=1.0"),
])
def test_unsupported_architectures_are_refused_by_name(tmp_path, tiny_pickle, wrapper, song,
                                                       attrs, named):
    pkl = write_edm_pickle(tmp_path / "arch.pkl", tiny_pickle[1], wrapper=wrapper, song=song,
                           wrapper_attrs=attrs)
    assert_one_line_error(pkl, named)


def test_convert_cli_and_load_network_dispatch(tmp_path, tiny_pickle):
    pkl, ref = tiny_pickle
    out = tmp_path / "converted" / "teacher"
    run = subprocess.run([sys.executable, "-m", "initprobe", "convert", str(pkl), str(out)],
                         check=False, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr
    meta = read_meta(out)
    assert meta["precond"] == "vp" and meta["edm_precond"] == "VPPrecond"
    expected = outputs(ref)
    assert torch.equal(outputs(load_network(out)), expected)
    assert torch.equal(outputs(load_network(pkl)), expected)
    assert load_network(pkl, precond="edm").precond == "edm"
