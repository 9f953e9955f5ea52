"""The ``quantkit`` command line: a click group whose commands are imported only when run.

Each command lives in its own module (``quantkit/cli/<name>.py``) and exposes a click command
called ``command``. Heavy imports (torch, transformers) happen inside the command callbacks, so
``quantkit estimate`` and ``quantkit --help`` start instantly.
"""

from __future__ import annotations

import errno
import functools
import importlib
import sys

import click

from quantkit import __version__
from quantkit.errors import QuantkitError

# name -> (module, one-line help shown by `quantkit --help` without importing the module)
COMMANDS = {
    "estimate": ("quantkit.cli.estimate", "Memory, fit and speed bounds for a model (no GPU needed)."),
    "models": ("quantkit.cli.catalog", "List the built-in model catalogue."),
    "gpus": ("quantkit.cli.catalog", "List the built-in GPU catalogue."),
    "quantize": ("quantkit.cli.quantize", "Quantize a model's linear weights to int8 and save it."),
    "eval": ("quantkit.cli.eval", "Perplexity, speed and memory of bf16 vs int8."),
    "plan": ("quantkit.cli.plan", "Capacity-planning spreadsheet (xlsx/csv/json) over models x GPUs."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module = importlib.import_module(COMMANDS[name][0])
        return getattr(module, f"{name}_command")

    def format_commands(self, ctx, formatter):
        rows = [(name, help_) for name, (_, help_) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


class CommandError(click.ClickException):
    """A one-line ``Error: ...`` on stderr with the library error's exit code (2 = usage); control
    characters and newlines in the message are escaped (``quantkit.boundary.text.one_line``)."""

    def __init__(self, message: str, exit_code: int = 2):
        from quantkit.boundary.text import one_line

        super().__init__(one_line(message))
        self.exit_code = exit_code


# OS errors that mean the user named a path the OS cannot use: exit 2 like other usage errors.
_PATH_ERRNOS = frozenset({errno.ENAMETOOLONG, errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EACCES,
                          errno.EPERM, errno.ELOOP, errno.EROFS})


def handle_errors(fn):
    """Turn typed library errors into one-line click errors (exit code 2 for usage errors).

    An ``OSError`` that escaped the library's own checks (``quantkit.boundary``) is reported the
    same way, with its reason and file name, never as a traceback: exit 2 for a path the user
    gave that the OS refuses (too long, missing, not permitted), 1 otherwise (a full disk)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except QuantkitError as exc:
            raise CommandError(str(exc), exit_code=exc.exit_code) from None
        except OSError as exc:
            where = f": {exc.filename}" if exc.filename else ""
            raise CommandError(f"{exc.strerror or exc}{where}",
                               exit_code=2 if exc.errno in _PATH_ERRNOS else 1) from None

    return wrapper


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="quantkit")
def cli():
    """quantkit: how much memory does this LLM need, will int8 make it fit and run faster, and
    what does int8 cost in quality?"""


def main(argv=None):
    """Entry point. Usage errors (bad option values, unknown commands) print one line, exit 2."""
    try:
        return cli.main(args=argv, prog_name="quantkit", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted!", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        from quantkit.boundary.text import one_line

        click.echo(f"Error: {one_line(exc.format_message())}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
