"""Layer selectors: a small language that names a set of layers by their canonical ids.

A spec is terms joined by operators, evaluated left to right: `a,b` and `a+b` are the union,
`a-b` the difference (`encoder+bottleneck-norm` is (encoder | bottleneck) minus norm).
Terms:
- a group of `initprobe.nets.layers` (`encoder`, `decoder`, `bottleneck`, `embedding`, `stem`,
  `head`, `attention`, `norm`, `skip`, `conv`), or `all`;
- `gdd`: GDD-I / D2O-F's frozen set, both 3x3 convs of every residual block (`conv0`, `conv1`)
  and every attention output projection (`proj`);
- `blocks`: the last conv of every block (`layers.last_conv_id`: `conv1`, or `proj` in
  attention blocks; the stem and head convs themselves), one layer per block: the default
  layers of the activation, attribution, CKA and linear probes;
- `res:R`: the layers at resolution R x R;
- a glob over ids (fnmatch, case-sensitive: `enc.16x16_*`, `*.conv1`). A glob selects a layer
  when it matches the layer's id or one of its dotted prefixes, so a bare block id
  (`dec.8x8_up`) selects every layer of that block, and `enc` every layer on the encoder side;
- `re:PATTERN`: the layers whose id contains a match of the regular expression (`re.search`;
  anchor with `^` and `$`). As `,` `+` `-` are regex characters, the pattern runs to the end of
  the spec: put it last (`decoder-re:qkv$`).
Every term must match at least one layer, so a misspelt group or id is an error rather than an
empty set, and so is a spec whose result is empty; the error names the spec and the command that
lists the layers. Layers come from `layer_table`, so selectors work on any network that
`initprobe.nets.layers` can describe. The result is always in network order.
"""

import difflib
import re
from fnmatch import fnmatchcase

import pandas as pd
from torch import nn

from ..errors import UserError
from ..nets.layers import GROUPS, last_conv_id, layer_table, named_blocks

PRESETS = {"gdd": ("conv0", "conv1", "proj")}
BLOCKS = "blocks"
LIST_HINT = "list the layers with `initprobe layers CHECKPOINT --select SPEC`"
_OPERATOR = re.compile(r"([,+-])")
_GLOB = re.compile(r"^[\w.*?\[\]!]+$")
_REGEX = "re:"


def _forms(table: pd.DataFrame) -> str:
    res = sorted({int(r) for r in table["res"].dropna()}, reverse=True)
    return (f"valid terms: a group ({', '.join(GROUPS)}), all, the presets "
            f"{', '.join([*PRESETS, BLOCKS])}, res:R (R in {', '.join(map(str, res))}), a glob "
            f"over layer ids or blocks (enc.8x8_*, *.conv1, dec.8x8_up), re:REGEX (last); join "
            f"terms with , or + (union) and - (difference); {LIST_HINT}")


def block_layer_ids(net: nn.Module) -> list[str]:
    """Canonical id of the last conv of every block (the `blocks` preset), in network order;
    UserError for a block whose last conv is not a named layer (`layers.last_conv_id` finds
    none)."""
    ids = []
    for name in named_blocks(net):
        conv = last_conv_id(net, name)
        if conv is None:
            raise UserError(f"block {name}: its last conv is not a named layer of this network, "
                            f"so the selector {BLOCKS!r} is undefined; select layers another way "
                            f"(e.g. all, conv); {LIST_HINT}")
        ids.append(conv)
    return ids


def _tokens(spec: str, table: pd.DataFrame) -> list[tuple[str, str]]:
    """Split a spec into (operator, term) pairs; the first operator is `,` (union with nothing)."""
    head, regex = spec.strip(), None
    if not head:
        raise UserError(f"layer selector is empty; {_forms(table)}")
    at = head.find(_REGEX)
    if at >= 0:
        head, regex = head[:at], head[at:]
    parts = _OPERATOR.split(head)
    if regex is not None:
        if parts[-1].strip():
            raise UserError(f"layer selector {spec!r}: {_REGEX} must start a term; "
                            f"{_forms(table)}")
        parts[-1] = regex
    terms = [t.strip() if not t.startswith(_REGEX) else t for t in parts[0::2]]
    if not all(terms):
        raise UserError(f"layer selector {spec!r}: empty term (a stray or doubled operator); "
                        f"{_forms(table)}")
    return list(zip([","] + parts[1::2], terms))


def _matches(term: str, spec: str, table: pd.DataFrame, net: nn.Module) -> set[str]:
    """The ids one term selects; UserError if it is malformed or selects nothing."""
    ids = table["layer"]
    if term == "all":
        hit = ids
    elif term == BLOCKS:
        hit = ids[ids.isin(block_layer_ids(net))]
    elif term in GROUPS:
        hit = ids[table["groups"].map(lambda g: term in g.split(","))]
    elif term in PRESETS:
        hit = ids[table["sublayer"].isin(PRESETS[term])]
    elif term.startswith("res:"):
        if not term[4:].isdigit():
            raise UserError(f"layer selector {spec!r}: {term!r} needs an integer resolution "
                            f"(res:16); {_forms(table)}")
        hit = ids[table["res"] == int(term[4:])]
    elif term.startswith(_REGEX):
        try:
            rx = re.compile(term[len(_REGEX):])
        except re.error as e:
            raise UserError(f"layer selector {spec!r}: bad regular expression ({e}); "
                            f"{_forms(table)}") from None
        hit = ids[ids.map(lambda i: rx.search(i) is not None)]
    elif _GLOB.match(term):
        hit = ids[ids.map(lambda i: any(fnmatchcase(p, term) for p in _prefixes(i)))]
    else:
        raise UserError(f"layer selector {spec!r}: {term!r} is not a valid term; "
                        f"{_forms(table)}")
    if hit.empty:
        close = difflib.get_close_matches(term, [*GROUPS, "all", *PRESETS, BLOCKS], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UserError(f"layer selector {spec!r}: {term!r} matches no layer{hint}; "
                        f"{_forms(table)}")
    return set(hit)


def _prefixes(layer: str) -> list[str]:
    """`dec.8x8_up.conv0` -> [`dec`, `dec.8x8_up`, `dec.8x8_up.conv0`]."""
    parts = layer.split(".")
    return [".".join(parts[:n]) for n in range(1, len(parts) + 1)]


def _select(table: pd.DataFrame, spec: str, net: nn.Module) -> list[str]:
    chosen: set[str] = set()
    for op, term in _tokens(spec, table):
        hit = _matches(term, spec, table, net)
        chosen = chosen - hit if op == "-" else chosen | hit
    if not chosen:
        raise UserError(f"layer selector {spec!r} selects no layer (everything was "
                        f"subtracted); {_forms(table)}")
    return [i for i in table["layer"] if i in chosen]


def select(net: nn.Module, spec: str) -> list[str]:
    """The canonical ids of the layers `spec` names, in network order; UserError if the spec is
    malformed, names an unknown group or id, or selects nothing."""
    return _select(layer_table(net), spec, net)


def _total(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def count_params(net: nn.Module, layers: list[str]) -> dict:
    """`{params, fraction}`: the parameters of `layers` and their share of all of `net`'s."""
    table = layer_table(net)
    params = int(table.loc[table["layer"].isin(layers), "params"].sum())
    return {"params": params, "fraction": params / _total(net)}


def selection_table(net: nn.Module, spec: str) -> pd.DataFrame:
    """The layer table restricted to the selection, with a `fraction` column (each layer's share
    of all parameters). `.attrs` holds the summary: spec, layers, params, fraction."""
    table = layer_table(net)
    ids = _select(table, spec, net)
    total = _total(net)
    out = table[table["layer"].isin(ids)].reset_index(drop=True)
    out["fraction"] = out["params"] / total
    params = int(out["params"].sum())
    out.attrs.update(spec=spec, layers=len(ids), params=params, fraction=params / total)
    return out
