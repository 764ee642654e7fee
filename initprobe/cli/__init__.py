"""The `initprobe` command line: a typer app whose commands live in one submodule per concern.

Commands are thin: they parse options, call the library, and write tables/figures. A `UserError`
from anywhere, and a command line that does not parse (click's usage errors, which typer would
draw as a box), become a one-line `error: ...` on stderr and exit status 2, never a traceback.
"""

import importlib
import pkgutil
import sys

import typer

from ..errors import UserError

# click's exceptions, wherever this typer keeps them (recent typers vendor their own click)
_click = importlib.import_module(typer.BadParameter.__module__)


def _fail(message: str, status: int):
    typer.echo("error: " + " ".join(message.split()), err=True)
    sys.exit(status)


class _App(typer.Typer):
    def __call__(self, *args, **kwargs):
        try:
            status = super().__call__(*args, **{"standalone_mode": False, **kwargs})
        except UserError as e:
            _fail(str(e), 2)
        except _click.NoArgsIsHelpError as e:
            e.show()
            sys.exit(e.exit_code)
        except _click.UsageError as e:
            command = e.ctx.command_path if e.ctx else "initprobe"
            _fail(f"{e.format_message()} (see {command} --help)", e.exit_code)
        except _click.ClickException as e:
            _fail(e.format_message(), e.exit_code)
        except typer.Abort:
            _fail("aborted", 1)
        sys.exit(status if isinstance(status, int) else 0)


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
