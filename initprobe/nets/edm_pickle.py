"""Official EDM network pickles (`edm-cifar10-32x32-uncond-vp.pkl`, training snapshots), read
without executing anything they contain.

An EDM pickle is `pickle.dump(dict(ema=net, loss_fn=..., augment_pipe=..., dataset_kwargs=...))`.
Its networks are `torch_utils.persistence` records: every persistent object is stored as a call
`torch_utils.persistence._reconstruct_persistent_obj(meta)`, where `meta` holds the source code of
the defining module (`module_src`), the `class_name` and the object's `state` (for a module, its
`__dict__`: `_parameters`, `_buffers`, `_modules`, the constructor's `_init_args`/`_init_kwargs`
and plain attributes). EDM's own loader `exec`s `module_src`; this one never looks at it.

`_Unpickler.find_class` resolves only the globals in `ALLOWED`; anything else (`os.system`,
`builtins.exec`, ...) is refused with a `UserError` naming it before it is called:
- the persistence call -> `_Record` (class name and state, nothing run), `ModuleDict` -> `_Record`;
- tensor rebuilds: `torch._utils._rebuild_tensor_v2` / `_rebuild_parameter`, and storages
  (`torch.storage._load_from_bytes`) through `torch.load(weights_only=True)`, only on a torch
  without its known holes (>= 2.10; pyproject requires it);
- containers: `collections.OrderedDict`, `builtins.set`;
- numpy scalars in recorded kwargs (`numpy.dtype`, `numpy[._]core.multiarray.scalar`), numeric only.

The architecture is read from the recorded constructor kwargs of the wrapper and its model and
checked (`initprobe.nets.edm_arch`: every EDM architecture, DDPM++, NCSN++ and ADM, conditional or
not). `map_augment` (training-time augmentation labels, augment_dim > 0) is unused at sampling and
is dropped. The loaded network is called as EDM's: `net(x, sigma, class_labels=None)`.
"""

import collections
import io
import pickle
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import numpy as np
import torch
from torch.torch_version import TorchVersion

from ..errors import UserError
from .edm_arch import architecture, slot
from .precond import Denoiser

SAFE_TORCH = "2.10"  # torch.load(weights_only=True) has no known hole from here on


class _Record:
    """What a persistent object or ModuleDict unpickles to: a class name and a state dict.
    A ModuleDict is created by pickle itself (`__new__`, then `__setstate__`), hence the default
    class name."""

    class_name = "ModuleDict"
    state: Mapping = MappingProxyType({})

    def __init__(self, class_name: str, state: dict):
        self.class_name, self.state = class_name, state

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise UserError(f"a ModuleDict holds a {type(state).__name__}, not its state dict")
        self.state = state


def _persistent(meta):
    if not (isinstance(meta, dict) and meta.get("type") == "class"
            and isinstance(meta.get("state"), dict)):
        raise UserError("not a torch_utils.persistence class record; is this an EDM pickle?")
    return _Record(str(meta.get("class_name")), meta["state"])


def _storage(data: bytes):
    if TorchVersion(torch.__version__) < SAFE_TORCH:
        raise UserError(f"torch {torch.__version__} cannot parse untrusted tensor storages safely "
                        f"(CVE-2025-32434, CVE-2026-24747); pip install 'torch>={SAFE_TORCH}'")
    try:
        return torch.load(io.BytesIO(data), weights_only=True)
    except Exception:  # noqa: BLE001 - torch's restricted loader refused or failed to parse
        raise UserError("a tensor storage in the pickle is not plain tensor data") from None


def _numpy_dtype(spec, *_):
    if not isinstance(spec, str):
        raise UserError(f"numpy dtype {spec!r} in the pickle is not a plain type code")
    return np.dtype(spec)


def _numpy_scalar(dtype, data=b""):
    if not (isinstance(dtype, np.dtype) and dtype.kind in "biufc" and isinstance(data, bytes)):
        raise UserError(f"numpy scalar of dtype {dtype!r} in the pickle is not numeric")
    return np.frombuffer(data, dtype)[0].item()


ALLOWED = {
    "torch_utils.persistence._reconstruct_persistent_obj": _persistent,
    "torch.nn.modules.container.ModuleDict": _Record,
    "torch._utils._rebuild_tensor_v2": torch._utils._rebuild_tensor_v2,
    "torch._utils._rebuild_parameter": torch._utils._rebuild_parameter,
    "torch.storage._load_from_bytes": _storage,
    "collections.OrderedDict": collections.OrderedDict,
    "builtins.set": set,
    "numpy.dtype": _numpy_dtype,
    "numpy.core.multiarray.scalar": _numpy_scalar,
    "numpy._core.multiarray.scalar": _numpy_scalar,
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        target = ALLOWED.get(f"{module}.{name}")
        if target is None:
            raise UserError(f"refusing global {module}.{name}: not allowed in an EDM network "
                            f"pickle (only tensors and torch_utils.persistence records are)")
        return target


def read_pickle(path: str | Path) -> dict:
    """The top-level dict of an EDM pickle, networks as `_Record` trees; UserError otherwise."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = _Unpickler(f).load()
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror}); pass an EDM .pkl file") from None
    except Exception as e:  # noqa: BLE001 - any failure to parse untrusted bytes: a bad file
        why = (str(e).splitlines() or [""])[0]
        raise UserError(f"{path}: not a readable EDM pickle ({type(e).__name__}: {why}); "
                        f"re-download the file") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: holds a {type(data).__name__}, not EDM's dict of networks; "
                        f"pass an EDM network pickle")
    return data


def record_tensors(rec: _Record, prefix: str = "", _path: tuple = ()) -> dict[str, torch.Tensor]:
    """Parameters and persistent buffers of a module record, by dotted name (a state dict);
    UserError if a module record contains itself (a cycle: unpickling allows it, torch not)."""
    if any(r is rec for r in _path):
        raise UserError(f"module {prefix.rstrip('.') or 'net'} contains itself (a cycle of "
                        f"module records); the file is damaged or crafted")
    st, out = rec.state, {}
    transient = st.get("_non_persistent_buffers_set") or set()
    if not isinstance(transient, (set, frozenset)):
        raise UserError(f"{prefix or 'net.'}_non_persistent_buffers_set is a "
                        f"{type(transient).__name__}, not a set; the file is damaged or crafted")
    for kind in ("_parameters", "_buffers"):
        for name, t in slot(rec, kind).items():
            if t is None or (kind == "_buffers" and name in transient):
                continue
            if not isinstance(t, torch.Tensor):
                raise UserError(f"{prefix}{name} is a {type(t).__name__}, not a tensor")
            out[prefix + name] = t.detach()
    for name, sub in slot(rec, "_modules").items():
        if sub is None:
            continue
        if not isinstance(sub, _Record):
            raise UserError(f"{prefix}{name} is a {type(sub).__name__}, not a module record")
        out.update(record_tensors(sub, f"{prefix}{name}.", (*_path, rec)))
    return out


def load_edm_pickle(path: str | Path, key: str = "ema",
                    precond: str | None = None) -> tuple[Denoiser, dict]:
    """The network `key` (default: the EMA network) of an EDM pickle as an initprobe Denoiser with
    the file's preconditioning (or `precond`), plus provenance metadata for checkpoints."""
    data = read_pickle(path)
    if key not in data:
        raise UserError(f"{path}: no {key!r} entry (entries: {sorted(map(str, data))}); pass "
                        f"one of them")
    net = data[key]
    if not isinstance(net, _Record):
        raise UserError(f"{path}: entry {key!r} is a {type(net).__name__}, not an EDM network")
    try:
        cfg, kind, kw = architecture(net)
        tensors = record_tensors(net)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    dropped = sorted(k for k in tensors if k.startswith("model.map_augment."))
    for k in dropped:
        del tensors[k]
    with torch.device("meta"):  # no init: every parameter and buffer comes from the file
        model = Denoiser(cfg, precond=precond or kind)
    want = model.state_dict()
    if set(want) != set(tensors):
        raise UserError(f"{path}: tensors do not match the recorded architecture (missing "
                        f"{sorted(set(want) - set(tensors))[:3]}, unexpected "
                        f"{sorted(set(tensors) - set(want))[:3]})")
    bad = [k for k, t in tensors.items() if t.shape != want[k].shape]
    if bad:
        raise UserError(f"{path}: tensor {bad[0]} has shape {tuple(tensors[bad[0]].shape)}, "
                        f"expected {tuple(want[bad[0]].shape)}")
    model.load_state_dict({k: t.float().contiguous() for k, t in tensors.items()}, assign=True)
    info = {"source": "edm-pickle", "source_file": str(path), "source_key": key,
            "edm_precond": net.class_name, "edm_model_kwargs": kw, "dropped_tensors": dropped}
    return model.eval(), info
