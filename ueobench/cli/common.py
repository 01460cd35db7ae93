"""What every subcommand shares: the error-handling group, ``--plugins`` and ``--debug``, ``--set`` parsing.

Starts fast: nothing here imports torch, open_clip or scikit-learn.
"""
from __future__ import annotations

import os
import sys
import tempfile
import traceback
import warnings
from typing import Any

import click

from .. import api
from ..core.errors import UeobenchError
from ..core.text import printable

DEBUG = {"on": bool(os.environ.get("UEOBENCH_DEBUG"))}


def plugins_option(f):
    """``--plugins DIR`` is accepted before the subcommand and after it."""
    def add(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
        for folder in value:
            try:
                api.add_plugin_folder(folder)
            except UeobenchError as e:
                raise UserError(str(e)) from None
        return value

    return click.option("--plugins", multiple=True, type=click.Path(file_okay=False), expose_value=False,
                        is_eager=True, callback=add, help="Folder of method plugin files (repeatable).")(f)


def debug_option(f):
    def set_debug(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
        DEBUG["on"] = DEBUG["on"] or value
        return value

    return click.option("--debug", is_flag=True, expose_value=False, is_eager=True, callback=set_debug,
                        help="Show the full traceback of an unexpected error.")(f)


class Command(click.Command):
    def __init__(self, *a: Any, **k: Any):
        super().__init__(*a, **k)
        plugins_option(self)
        debug_option(self)


class Group(click.Group):
    """Turns every UeobenchError into a one-line ``Error: ...`` and exit status 2; anything unexpected into one
    line naming where its traceback was written (``--debug`` prints it), exit status 1."""

    command_class = Command

    def invoke(self, ctx: click.Context) -> Any:
        warnings.formatwarning = lambda message, *a, **k: f"warning: {printable(message)}\n"
        try:
            return super().invoke(ctx)
        except UeobenchError as e:
            raise UserError(printable(str(e))) from None
        except BrokenPipeError:  # the reader went away (| head): stop quietly, as a Unix tool does
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            sys.exit(1)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort, KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:  # noqa: BLE001 - the last-resort net; each known fault has its own fix
            if DEBUG["on"]:
                raise
            fd, path = tempfile.mkstemp(prefix="ueobench-traceback-", suffix=".txt")
            with os.fdopen(fd, "w") as f:
                f.write(" ".join(sys.argv) + "\n\n" + traceback.format_exc())
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            click.echo(f"Error: unexpected {type(e).__name__}{': ' + first if first else ''} "
                       f"(full traceback in {path}; rerun with --debug to see it)", err=True)
            ctx.exit(1)


class UserError(click.ClickException):
    exit_code = 2


def parse_sets(values: tuple[str, ...], flag: str = "--set", axis: bool = False) -> dict[str, str]:
    """``key=value`` pairs; a key given twice is an error (in a sweep, ``key=a,b`` makes the values an axis)."""
    out: dict[str, str] = {}
    for v in values:
        key, sep, val = v.partition("=")
        if not sep or not key.strip():
            raise UeobenchError(f"{flag} expects key=value, got {v!r}")
        key = key.strip()
        if key in out:
            hint = f"; give several values as {flag} {key}=a,b to sweep over them" if axis else "; give it once"
            raise UeobenchError(f"{flag} {key} is given twice ({out[key]!r} and {val.strip()!r}){hint}")
        out[key] = val.strip()
    return out


def percent(v: Any) -> str:
    return "–" if v is None else f"{100 * v:.2f}"


def filters_options(f):
    """Glob filters shared by table and plot."""
    for name in ("method", "dataset", "protocol", "domain", "backbone"):
        f = click.option(f"--{name}", default=None, help=f"Keep {name}s matching these globs (comma-separated).")(f)
    return f


def check_output(output: str | None) -> None:
    """Refuse, before any work, an output file whose folder does not exist."""
    from pathlib import Path

    if output and not Path(output).parent.is_dir():
        raise UeobenchError(f"folder {Path(output).parent} does not exist; create it or pass another --output")


def emit(text: str, output: str | None) -> None:
    """Print, or write to ``output`` (one clear line when the file cannot be written: full, read-only, ...)."""
    from pathlib import Path

    if not output:
        click.echo(text, nl=False)
        return
    try:
        Path(output).write_text(text, encoding="utf-8")
    except OSError as e:
        raise UeobenchError(f"cannot write {output} ({e.strerror}); pass another --output") from None
    click.echo(f"wrote {output}", err=True)


def say(*lines: str, err: bool = False) -> None:
    """``click.echo`` of lines that may hold names from data: each argument is one line, with its control
    characters (newlines included) escaped, so no name can forge a line of output."""
    click.echo("\n".join(printable(line) for line in lines or ("",)), err=err)
