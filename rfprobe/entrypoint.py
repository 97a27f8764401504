"""Running a typer app as a console command with the project's error contract (README, docs/cli.md):
bad input (RfprobeError, and click's usage errors: a missing argument, an option value of the wrong type)
-> one line on stderr, exit 2; anything else -> one line, exit 1; `--debug` anywhere on the command line ->
the traceback instead. Shared by `rfprobe` and `python -m train`."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager

from rfprobe.errors import RfprobeError


def _click_exceptions():
    """click's exception classes: typer >= 0.22 vendors click as `typer._click`, older typer uses click."""
    try:
        from typer._click import exceptions
    except ImportError:
        from click import exceptions
    return exceptions


@contextmanager
def _file_backend():
    """matplotlib's Agg backend for the command (figures go to files; a MPLBACKEND the user set is kept), for
    this process and the workers it starts; the variable is restored afterwards, so a caller in the same
    process (a test, a notebook kernel it starts later) keeps its own."""
    before = os.environ.get("MPLBACKEND")
    os.environ.setdefault("MPLBACKEND", "Agg")
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MPLBACKEND", None)


def run_app(app, prog: str, argv: list[str] | None = None, interrupted: str = "interrupted") -> None:
    with _file_backend():
        _run(app, prog, argv, interrupted)


def _run(app, prog: str, argv: list[str] | None, interrupted: str) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    if debug:
        args.remove("--debug")
    name = prog.split()[-1]
    import typer

    click = _click_exceptions()
    try:
        code = app(args=args, prog_name=prog, standalone_mode=False)
    except click.NoArgsIsHelpError as e:  # a bare command: its help, as click shows it
        e.show()
        sys.exit(e.exit_code)
    except click.UsageError as e:
        where = e.ctx.command_path if e.ctx is not None else prog
        print(f"{name}: error: {e.format_message()} (see {where} --help)", file=sys.stderr)
        sys.exit(2)
    except click.ClickException as e:
        print(f"{name}: error: {e.format_message()}", file=sys.stderr)
        sys.exit(e.exit_code)
    except typer.Abort:
        print(f"{name}: {interrupted}", file=sys.stderr)
        sys.exit(130)
    except RfprobeError as e:
        if debug:
            raise
        print(f"{name}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{name}: {interrupted}", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # the last line of defence: no traceback without --debug
        if debug:
            raise
        print(f"{name}: internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)", file=sys.stderr)
        sys.exit(1)
    if code == 130:  # typer turns Ctrl-C into exit code 130
        print(f"{name}: {interrupted}", file=sys.stderr)
    sys.exit(code if isinstance(code, int) else 0)
