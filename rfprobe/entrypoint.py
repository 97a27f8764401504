"""Running a typer app as a console command with the project's error contract (README, docs/cli.md):
bad input (RfprobeError) -> one line on stderr, exit 2; anything else -> one line, exit 1; `--debug`
anywhere on the command line -> the traceback instead. Shared by `rfprobe` and `python -m train`."""

from __future__ import annotations

import sys

from rfprobe.errors import RfprobeError


def run_app(app, prog: str, argv: list[str] | None = None, interrupted: str = "interrupted") -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    if debug:
        args.remove("--debug")
    name = prog.split()[-1]
    try:
        app(args=args, prog_name=prog, standalone_mode=True)
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
