"""EDM network pickles: faithful loading, clear refusals, and nothing in a file ever executed.

The pickles are written in EDM's snapshot format by `edm_records` (persistence records, no EDM
code). Every architecture against EDM's own outputs: `test_edm_archs.py`.
"""

import os
import pickle
import subprocess
import sys

import pytest
import torch
from edm_records import Persistent, fake_persistence, write_edm_pickle

from initprobe.errors import UserError
from initprobe.nets.edm_pickle import load_edm_pickle
from initprobe.nets.io import load_network, read_meta
from initprobe.nets.precond import Denoiser, coefficients
from initprobe.nets.unet import PRESETS, UNetConfig

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


class Evil:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


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
    ("EDMPrecond", {"model_class": "NCSNUNet"}, {}, "model_type NCSNUNet"),
    ("VPPrecond", {}, {"label_dim": 10}, "label_dim=10 but its model's label_dim=0"),
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


def test_storages_are_not_parsed_by_a_torch_with_known_holes(tmp_path, tiny_pickle, monkeypatch):
    monkeypatch.setattr(torch, "__version__", "2.5.1+cpu")
    assert_one_line_error(tiny_pickle[0], "torch 2.5.1+cpu cannot parse untrusted", "torch>=2.10")
