"""Typer options generated from the fields of config dataclasses (`initprobe.options.opt`), so a
flag's name, default and help text come from the one field that defines the option."""

import importlib
import inspect
import types
import typing

import typer

from ..options import default_of, option_fields

# click as typer uses it (recent typers vendor their own)
_CLICK = typer.BadParameter.__module__.rsplit(".", 1)[0]


def _cli_type(kind):
    """The type typer parses: the non-None member of an optional; lists as text (`1,2,3`)."""
    args = typing.get_args(kind)
    optional = typing.get_origin(kind) in (typing.Union, types.UnionType)
    base = next(a for a in args if a is not type(None)) if optional else kind
    return str if typing.get_origin(base) in (list, tuple) else base


def field_options(cls, required: tuple[str, ...] = (),
                  panel: str | None = None) -> list[inspect.Parameter]:
    """One keyword parameter per option field of `cls` that has a flag (`flag=""`: none; such
    an option is set another way, e.g. `--option KEY=VALUE`). `panel`: the `--help` panel of
    the fields that name none. `given` tells which were given on the command line."""
    hints = typing.get_type_hints(cls)
    params = []
    for f in option_fields(cls):
        meta = f.metadata
        if meta["flag"] == "":
            continue
        flag = f"--{meta['flag'] or f.name.replace('_', '-')}"
        default = default_of(f)
        extra = {"help": meta["help"], "rich_help_panel": meta["panel"] or panel}
        if f.name in required:
            option = typer.Option(..., flag, **extra)
        else:
            option = typer.Option(None if isinstance(default, list) else default, flag, **extra)
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                        annotation=_cli_type(hints[f.name])))
    return params


def with_options(params: list[inspect.Parameter]):
    """Give a `def cmd(**values)` command the signature typer reads its options from."""
    def wrap(fn):
        fn.__signature__ = inspect.Signature(params)
        return fn
    return wrap


def given(names) -> set[str]:
    """Which of the running command's parameters `names` were given (not left at default)."""
    ctx = importlib.import_module(f"{_CLICK}.globals").get_current_context()
    default = importlib.import_module(f"{_CLICK}.core").ParameterSource.DEFAULT
    return {n for n in names if n in ctx.params and ctx.get_parameter_source(n) != default}
