"""The `initprobe` command line: a typer app whose commands live in one submodule per concern.

Commands are thin: they parse options, call the library, and write tables/figures. A `UserError`
from anywhere becomes a one-line `error: ...` on stderr and exit status 2, never a traceback.
"""

import importlib
import pkgutil
import sys

import typer

from ..errors import UserError


class _App(typer.Typer):
    def __call__(self, *args, **kwargs):
        try:
            return super().__call__(*args, **kwargs)
        except UserError as e:
            typer.echo(f"error: {e}", err=True)
            sys.exit(2)


app = _App(
    name="initprobe",
    help="Initialization studies of one-step diffusion generators.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def register_commands():
    """Import every submodule of this package; each registers its commands on `app`."""
    for mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{mod.name}")


def main():
    register_commands()
    app()
