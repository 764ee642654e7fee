"""Typed option fields: each option's default, help text and CLI flag, defined once.

A config dataclass declares its options with `opt(default, help)`; the CLI (`cli/options.py`)
and the reproduction's key lists are generated from those fields. `flag` overrides the flag
name (`--reinit-layers` for the field `reinit`); `panel` groups the option in `--help`.
Composed configs are read and written as one flat mapping of option names (`flat_fields`,
`split_flat`): the keys of study TOML files and of config.json.
"""

import typing
from dataclasses import MISSING, Field, field, fields, is_dataclass

from .errors import UserError


def opt(default, help: str, *, flag: str | None = None, panel: str | None = None,
        shown: str | None = None) -> Field:
    """A dataclass field with its help text (`shown`: the default as `--help` prints it)."""
    meta = {"help": help, "flag": flag, "panel": panel, "shown": shown}
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def option_fields(cls) -> list[Field]:
    """The fields of `cls` declared with `opt` (those with a help text)."""
    return [f for f in fields(cls) if "help" in f.metadata]


def default_of(f: Field):
    return f.default_factory() if f.default is MISSING else f.default


def flat_fields(obj) -> dict:
    """The option values of a config dataclass, nested configs flattened into one mapping."""
    out = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        out.update(flat_fields(value) if is_dataclass(value) else {f.name: value})
    return out


def _coerce(name: str, value, kind, default):
    """`value` as the scalar type `kind` (an int is a valid float; values may come from the
    command line or a TOML file); UserError naming the option otherwise."""
    args = typing.get_args(kind)
    if value is None and type(None) in args:
        return None
    base = next((a for a in args if a is not type(None)), kind) if args else kind
    if base not in (int, float, str, bool):
        return value
    ok = isinstance(value, base) and (base is bool or not isinstance(value, bool))
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise UserError(f"option {name}={value!r} is not a valid {base.__name__}; pass e.g. "
                        f"{name}={default}")
    return value


def build(cls, values: dict, owner: str):
    """`cls(**values)` with each value checked against its field's type; UserError naming an
    unknown option or a value of the wrong type."""
    names = [f.name for f in option_fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise UserError(f"{owner} has no option {', '.join(unknown)}; its options are "
                        f"{', '.join(names) or 'none'}")
    hints = typing.get_type_hints(cls)
    by_name = {f.name: f for f in fields(cls)}
    return cls(**{k: _coerce(k, v, hints[k], default_of(by_name[k])) for k, v in values.items()})
