"""What every command shares: the typer apps, the store/config options, helpers.

Only the `cachesrv.cli` package imports typer; the commands parse, call the
domain, and print. Errors are `CachesrvError`s, which `cli.main` turns into one
line on stderr and a non-zero exit.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from ..config import Config, load_config
from ..errors import ConfigError

app = typer.Typer(
    help="Content-addressed cache and recording proxy for air-gapped builds.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
seed_app = typer.Typer(help="Named seeds and USB seed bundles.", no_args_is_help=True)
app.add_typer(seed_app, name="seed")
snap_app = typer.Typer(
    help="Snaps: record one for offline builds, or write it out for snap ack/install.",
    no_args_is_help=True,
)
app.add_typer(snap_app, name="snap")
ca_app = typer.Typer(
    help="The local CA for HTTPS interception: init, show, cert (the PEM to trust).",
    no_args_is_help=True,
)
app.add_typer(ca_app, name="ca")

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML config file (default: $CACHESRV_CONFIG)."),
]
StoreOpt = Annotated[
    Path | None,
    typer.Option("--store", help="Store directory (default: $CACHESRV_STORE, then config)."),
]


class _Flags:
    """Global flags set by the top-level callback (read by `main` on errors)."""

    debug = False


flags = _Flags()


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    flags.debug = debug


def config_for(config: Path | None, store: Path | None) -> Config:
    return load_config(config, store=store)


def parse_when(text: str) -> float:
    """`2h`, `3d`, `30m`, `45s`, an ISO date/time, or epoch seconds -> epoch seconds."""
    text = text.strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhdw])", text)
    if m:
        mult = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]
        return time.time() - float(m.group(1)) * mult
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"--since: cannot read {text!r}; use e.g. 2h, 3d or 2026-11-01T12:00"
        ) from None
    if when.tzinfo is None:
        when = when.astimezone()
    return when.timestamp()


def parse_duration(text: str, option: str) -> float:
    """`1h`, `30m`, `45s`, `2d`, `0` -> seconds."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhdw]?)", text.strip())
    if not m:
        raise ConfigError(f"{option}: cannot read {text!r}; use e.g. 1h, 30m or 0")
    mult = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]
    return float(m.group(1)) * mult


def open_store(config: Path | None, store: Path | None) -> Any:
    from ..store import Store

    cfg = config_for(config, store)
    return Store(cfg.store, cfg.limits)


def run_async(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)
