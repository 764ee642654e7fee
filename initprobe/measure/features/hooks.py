"""Capture layer outputs during forward passes, by canonical layer id.

`capture(net, ids)` registers a forward hook on each module named by a canonical id (see
`initprobe.nets.layers`) and yields a dict id -> list with one entry per forward call of that
module, in call order. Each entry is the module's output, detached and cloned, because EDM-style
blocks may later modify a tensor in place; or, with `reduce=fn`, `fn(output)` computed inside the
hook so that only the (small) reduction is kept. The hooks are removed when the block exits,
also when it exits with an exception.
"""

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ...errors import UserError
from ...nets.layers import named_layers


def modules_by_id(net: nn.Module, layer_ids: Iterable[str]) -> dict[str, nn.Module]:
    """The modules of `net` with these canonical ids, in the order given; UserError names any
    unknown id."""
    known = named_layers(net)
    ids = list(layer_ids)
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise UserError(f"unknown layer ids {unknown[:5]}; run `initprobe layers CHECKPOINT` to "
                        f"list the ids of this network")
    return {i: known[i] for i in ids}


@contextmanager
def capture(net: nn.Module, layer_ids: Iterable[str],
            reduce: Callable[[torch.Tensor], object] | None = None
            ) -> Iterator[dict[str, list]]:
    """Record the outputs of the layers `layer_ids` of `net` while the block runs.

    Without `reduce` each entry is `output.detach().clone()`. With `reduce` each entry is
    `reduce(output.detach())`; `reduce` must return new storage (any reduction does), not a view.
    """
    modules = modules_by_id(net, layer_ids)
    store: dict[str, list] = {i: [] for i in modules}

    def hook_for(layer_id: str):
        def hook(_module, _inputs, output):
            out = output.detach()
            store[layer_id].append(out.clone() if reduce is None else reduce(out))
        return hook

    handles = []
    try:
        for layer_id, module in modules.items():
            handles.append(module.register_forward_hook(hook_for(layer_id)))
        yield store
    finally:
        for h in handles:
            h.remove()
