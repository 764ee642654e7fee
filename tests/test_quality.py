import numpy as np
import pytest
import torch
from torch import nn

from initprobe.data import Dataset, load_dataset
from initprobe.diffusion import Generator
from initprobe.errors import UserError
from initprobe.measure.analyses.quality import (
    FeatureSummary,
    quality_metrics,
    sample_batches,
    summarize,
    summarize_data,
    summarize_samples,
)
from initprobe.measure.analyses.relfid import RelFidOptions, relfid_sweep
from initprobe.measure.features.classifier import FeatureNet, cache_dir, load_or_train
from initprobe.measure.features.extractors import Extractor, make_extractor, weights_hash
from initprobe.measure.features.inception import (
    FEATURE_DIM,
    FIDInception,
    _to_inception_input,
    load_inception,
)
from initprobe.nets.precond import Denoiser
from initprobe.nets.unet import UNetConfig
from initprobe.schema import COLUMNS


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def classifier():
    """A small untrained classifier behind the Extractor interface (training takes too long)."""
    torch.manual_seed(0)
    fnet = FeatureNet(1, 10).eval()
    return Extractor("classifier", fnet.body, weights_hash(fnet), fnet.head, 10)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", split="train", limit=200)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return Denoiser(UNetConfig()).eval()


def test_summary_streams_like_one_pass_and_keeps_a_bounded_subset(classifier):
    images = randn(300, 1, 8, 8).clamp(-1, 1)
    streamed = summarize(classifier, images.split(7), keep=50)
    whole, labels, confidence = classifier(images)
    ref = whole.numpy()
    assert streamed.n == 300 and streamed.kept.shape == (50, 128)
    np.testing.assert_allclose(streamed.stats.mean, ref.mean(0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(streamed.stats.cov, np.cov(ref, rowvar=False), rtol=1e-7,
                               atol=1e-12)
    np.testing.assert_array_equal(streamed.kept, ref[:50])
    np.testing.assert_array_equal(streamed.histogram, np.bincount(labels.numpy(), minlength=10))
    probs = classifier.head(classifier.net(images)).softmax(1)
    assert torch.equal(probs.argmax(1), labels)
    assert streamed.mean_confidence == pytest.approx(probs.max(1).values.mean().item(), rel=1e-5)
    assert 0.1 <= streamed.mean_confidence <= 1.0


def test_summary_save_load_roundtrip(classifier, tmp_path):
    s = summarize(classifier, randn(40, 1, 8, 8).split(16), keep=30)
    s.save(tmp_path / "s.npz")
    back = FeatureSummary.load(tmp_path / "s.npz")
    assert back.n == 40 and back.keep == 30
    assert back.mean_confidence == pytest.approx(s.mean_confidence, rel=1e-12)
    np.testing.assert_allclose(back.stats.cov, s.stats.cov, rtol=1e-12)
    np.testing.assert_array_equal(back.kept, s.kept)
    np.testing.assert_array_equal(back.histogram, s.histogram)


def test_data_statistics_are_cached_by_content(classifier, digits, monkeypatch):
    first = summarize_data(classifier, digits, batch=64)
    files = list((cache_dir() / "stats").glob("*.npz"))
    with monkeypatch.context() as m:
        m.setattr(Extractor, "__call__", lambda *a: pytest.fail("cache was not used"))
        again = summarize_data(classifier, digits, batch=64)
    assert list((cache_dir() / "stats").glob("*.npz")) == files
    np.testing.assert_allclose(again.stats.cov, first.stats.cov, rtol=1e-12)
    fewer = summarize_data(classifier, digits, n=100)  # n is part of the key
    assert fewer.n == 100 and len(list((cache_dir() / "stats").glob("*.npz"))) == len(files) + 1


def test_samples_depend_only_on_their_seed(net):
    a = torch.cat(list(sample_batches(net, 6, "one-step", batch=4)))
    b = torch.cat(list(sample_batches(net, 6, "one-step", batch=6)))
    torch.testing.assert_close(a, b)
    with pytest.raises(UserError, match="unknown sampler"):
        next(sample_batches(net, 6, "ddim"))


def test_metrics_against_itself_and_names(classifier, net):
    s = summarize_samples(classifier, net, 24, "two-step", batch=10)
    q = quality_metrics(s, s, classifier)
    assert abs(q["fd_classifier"]) < 1e-6 * max(1.0, float(np.trace(s.stats.cov)))
    assert q["precision"] == q["recall"] == q["coverage"] == 1.0
    assert {"kid_classifier", "class_entropy", "classes_covered", "n_samples"} <= set(q)
    other = summarize(classifier, [randn(24, 1, 8, 8, seed=3)])
    assert quality_metrics(s, other, classifier)["fd_classifier"] > 1e-3
    inception = Extractor("inception", classifier.net, "k")
    assert (inception.fd_metric, inception.kid_metric) == ("fid", "kid")


def test_relfid_sweep_with_the_teacher_as_student(classifier, digits, net):
    df = relfid_sweep(net, Generator(net), digits, classifier,
                      RelFidOptions(steps=(2, 3), sigma_mids=(0.5, 2), n=12, batch=12))
    assert list(df.columns[:len(COLUMNS)]) == COLUMNS
    assert list(dict.fromkeys(df["run"])) == ["student one-step", "teacher one-step", "heun-2",
                                              "heun-3", "two-step-0.5", "two-step-2"]
    rel = df[df["metric"] == "rel_fd"].set_index("run")["value"]
    abs_ = df[df["metric"] == "abs_fd"].set_index("run")["value"]
    assert abs(rel["teacher one-step"]) < 1e-6  # same network, same sampler, same seeds
    assert abs_["teacher one-step"] == pytest.approx(abs_["student one-step"])
    assert (rel.drop("teacher one-step") > 0).all()
    assert set(df["network"]) == {"classifier"} and set(df["n"]) == {12}
    assert df.set_index("run").loc["heun-3", "nfe"].iloc[0] == 5
    euler = relfid_sweep(net, Generator(net), digits, classifier,
                         RelFidOptions(steps=(3,), sigma_mids=(1,), n=6, step_sampler="euler"))
    assert euler.set_index("run").loc["euler-3", "nfe"].iloc[0] == 3
    with pytest.raises(UserError, match="unknown step sampler"):
        relfid_sweep(net, Generator(net), digits, classifier,
                     RelFidOptions(n=6, step_sampler="ddim"))
    with pytest.raises(UserError, match="shape"):
        relfid_sweep(net, Generator(net),
                     Dataset("x", torch.zeros(4, 3, 8, 8), torch.zeros(4).long(), 1), classifier,
                     RelFidOptions(n=4))


# FID Inception-v3 ----------------------------------------------------------------------------

def test_inception_has_the_fid_architecture():
    # torchvision's Inception3 has 27,161,264 parameters; without the auxiliary classifier
    # (3,326,696) and the 1000-way fc (2,049,000) that leaves 21,785,568 for the pool features.
    net = FIDInception()
    assert sum(p.numel() for p in net.parameters()) == 21_785_568
    assert {"Conv2d_1a_3x3.conv.weight", "Mixed_6e.branch7x7dbl_5.bn.running_var",
            "Mixed_7c.branch3x3dbl_3b.conv.weight"} <= set(net.state_dict())


def test_inception_input_is_quantized_rgb_299():
    x = _to_inception_input(torch.linspace(-1, 1, 64).reshape(1, 1, 8, 8))
    assert x.shape == (1, 3, 299, 299)
    assert torch.equal(x[:, 0], x[:, 2])
    assert x.min().item() == pytest.approx(0, abs=1e-3)
    assert x.max().item() == pytest.approx(255, abs=1e-3)
    level = _to_inception_input(torch.full((1, 1, 8, 8), 100.3 / 127.5 - 1))  # 8 bits: 100
    torch.testing.assert_close(level, torch.full_like(level, 100.0))
    with pytest.raises(UserError, match="1 or 3"):
        _to_inception_input(torch.zeros(1, 2, 8, 8))


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    """A pytorch-fid style state dict (random weights) with its fc and num_batches_tracked."""
    torch.manual_seed(0)
    net = FIDInception()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):  # non-trivial statistics, as real weights have
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 2)
    state = {**net.state_dict(), "fc.weight": torch.zeros(1008, 2048), "fc.bias": torch.zeros(1008)}
    path = tmp_path_factory.mktemp("fid") / "pt_inception-test.pth"
    torch.save(state, path)
    return path, net.eval()


def test_inception_state_dict_loads_and_gives_pool_features(inception_file):
    path, reference = inception_file
    ext = make_extractor("inception", None, inception_weights=path)
    assert ext.fd_metric == "fid" and ext.head is None
    images = randn(2, 1, 8, 8).clamp(-1, 1)
    feats, labels, confidence = ext(images)
    assert feats.shape == (2, FEATURE_DIM) and feats.dtype == torch.float64 and labels is None
    assert confidence is None
    with torch.no_grad():
        expected = reference(_to_inception_input(images) / 127.5 - 1)
    torch.testing.assert_close(feats.float(), expected)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_inception_torchscript_is_called_with_return_features(tmp_path):
    class Scripted(nn.Module):
        def forward(self, x, return_features: bool = False):
            pooled = x.mean(dim=(2, 3))  # [N, 3] in 0..255
            return pooled.repeat(1, 2048 // 2 + 1)[:, :2048] if return_features else pooled

    path = tmp_path / "inception-2015-12-05.pt"
    torch.jit.save(torch.jit.script(Scripted()), str(path))
    net = load_inception(path)
    feats = net(torch.ones(3, 1, 8, 8))  # white images: 255 in every channel
    assert feats.shape == (3, FEATURE_DIM)
    torch.testing.assert_close(feats, torch.full_like(feats, 255.0))


def test_inception_bad_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="--inception-weights"):
        make_extractor("inception", None)
    with pytest.raises(UserError, match="no such file"):
        load_inception(tmp_path / "missing.pth")
    torch.save({"conv.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="do not fit the FID Inception"):
        load_inception(tmp_path / "other.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a weights file")
    with pytest.raises(UserError, match="not a readable weights file"):
        load_inception(tmp_path / "junk.pth")
    with pytest.raises(UserError, match="unknown feature network"):
        make_extractor("vgg", None)


def test_the_callers_random_state_does_not_depend_on_a_cached_classifier(tmp_path, monkeypatch):
    """A run that trains the classifier (first use) draws what one that finds it cached draws."""
    monkeypatch.setenv("INITPROBE_CACHE", str(tmp_path))
    data = load_dataset("digits", None, "train", 8)
    draws = []
    for _ in range(2):  # trained and cached, then found in the cache
        torch.manual_seed(3)
        load_or_train(data, steps=5, progress=False)
        draws.append(torch.rand(4))
    assert (tmp_path / "features").is_dir() and torch.equal(draws[0], draws[1])
