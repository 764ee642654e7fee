"""Domain feature networks: a small classifier trained on the data, cached by content hash.

There are no Inception-v3 weights offline, so sample quality is measured on the penultimate
features (128-d) of a classifier initprobe trains itself. Distances on these features are
reported as `fd_classifier`, never as FID. The classifier also labels samples, so class coverage
(mode collapse) can be measured.

Cache: `$INITPROBE_CACHE` (default `~/.cache/initprobe`)/features/<key>.{safetensors,json}, where
key hashes the training images, the architecture version and the training options.
"""

import hashlib
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from ...data import Dataset
from ...runio import atomic_save, atomic_write_json

ARCH_VERSION = 1
FEATURE_DIM = 128
STEPS = 1500   # training steps of the classifier that measures quality


def cache_dir() -> Path:
    return Path(os.environ.get("INITPROBE_CACHE", Path.home() / ".cache" / "initprobe"))


class FeatureNet(nn.Module):
    """conv-conv(stride 2)-conv(stride 2)-pool-linear(128): penultimate features; then logits."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.SiLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.SiLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(512, FEATURE_DIM), nn.SiLU())
        self.head = nn.Linear(FEATURE_DIM, num_classes)

    def forward(self, x):
        return self.head(self.body(x))


def _key(data: Dataset, steps: int, seed: int) -> str:
    h = hashlib.sha256()
    h.update(data.images.numpy().tobytes())
    h.update(data.labels.numpy().tobytes())
    h.update(f"v{ARCH_VERSION}/{steps}/{seed}".encode())
    return h.hexdigest()[:16]


def train_feature_net(train: Dataset, test: Dataset | None = None, steps: int = STEPS,
                      batch: int = 128, seed: int = 0, progress: bool = True):
    """Train the classifier (Adam, random translations of +-1 pixel); returns (net, accuracy)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = FeatureNet(train.shape[0], train.num_classes)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    bar = tqdm(range(steps), desc="feature net", disable=None if progress else True,
               dynamic_ncols=True)
    for _ in bar:
        idx = torch.randint(len(train), (batch,), generator=g)
        x = train.images[idx]
        dx, dy = torch.randint(-1, 2, (2,), generator=g).tolist()
        x = torch.roll(x, (dx, dy), dims=(2, 3))
        loss = F.cross_entropy(net(x), train.labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    net.eval()
    ref = test or train
    with torch.no_grad():
        pred = torch.cat([net(x).argmax(1) for x in ref.images.split(512)])
    return net, float((pred == ref.labels).float().mean())


def load_or_train(train: Dataset, test: Dataset | None = None, steps: int = STEPS, seed: int = 0,
                  progress: bool = True) -> tuple[FeatureNet, dict]:
    """The cached classifier for this data, training and caching it on first use. The caller's
    random state afterwards is the same either way: the training draws on a forked one."""
    stem = cache_dir() / "features" / _key(train, steps, seed)
    net = FeatureNet(train.shape[0], train.num_classes)
    if stem.with_suffix(".json").exists() and stem.with_suffix(".safetensors").exists():
        net.load_state_dict(load_file(stem.with_suffix(".safetensors")))
        return net.eval(), json.loads(stem.with_suffix(".json").read_text())
    with torch.random.fork_rng(devices=[]):
        net, acc = train_feature_net(train, test, steps, seed=seed, progress=progress)
    st = {k: v.contiguous() for k, v in net.state_dict().items()}
    atomic_save(stem.with_suffix(".safetensors"), lambda tmp: save_file(st, tmp))
    meta = {"network": "classifier", "data": train.name, "shape": list(train.shape),
            "num_classes": train.num_classes, "steps": steps, "seed": seed,
            "test_accuracy": acc, "feature_dim": FEATURE_DIM}
    atomic_write_json(stem.with_suffix(".json"), meta)
    return net, meta

