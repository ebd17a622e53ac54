"""The command line (typer): parse, call, map errors to exit codes.

Errors exit non-zero with one line on stderr; `--debug` shows the traceback.
Commands live in `commands` (serve, misses, stats, fsck, prefetch, wrap), `seed`,
`snap`, `ca` and `clientconfig`; importing them registers them on the apps in `common`.
"""

from __future__ import annotations

import sys

import typer

from ..errors import CachesrvError
from . import ca, clientconfig, commands, seed, snap
from .common import app, flags, parse_when, seed_app, snap_app

__all__ = [
    "app",
    "ca",
    "clientconfig",
    "commands",
    "main",
    "parse_when",
    "seed",
    "seed_app",
    "seed_main",
    "snap",
    "snap_app",
]


def _invoke(typer_app: typer.Typer, prog: str) -> None:
    try:
        # Outside standalone mode click returns typer.Exit's code instead of exiting.
        rc = typer_app(prog_name=prog, standalone_mode=False)
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except CachesrvError as exc:
        if flags.debug:
            raise
        print(f"{prog}: error: {exc}", file=sys.stderr)
        problems = getattr(exc, "problems", None)
        for p in problems or []:
            print(f"  - {p}", file=sys.stderr)
        sys.exit(1)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        print(f"{prog}: aborted", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # click usage errors and the unexpected
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if flags.debug:
            raise
        print(f"{prog}: error: {type(exc).__name__}: {exc} (run with --debug)", file=sys.stderr)
        sys.exit(1)


def main() -> None:
    _invoke(app, "cachesrv")


def seed_main() -> None:
    _invoke(seed_app, "seed")
