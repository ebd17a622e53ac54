"""The command line (typer): parse, call, map errors to exit codes.

Errors exit non-zero with one line on stderr; `--debug` shows the traceback.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import re
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from .config import Config, load_config
from .errors import CachesrvError, ConfigError
from .models import Mode

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

_debug = False

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML config file (default: $CACHESRV_CONFIG)."),
]
StoreOpt = Annotated[
    Path | None,
    typer.Option("--store", help="Store directory (default: $CACHESRV_STORE, then config)."),
]


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    global _debug
    _debug = debug


def _config(config: Path | None, store: Path | None) -> Config:
    return load_config(config, store=store)


def _setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


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


# -- serve ----------------------------------------------------------------


@app.command()
def serve(
    config: ConfigOpt = None,
    store: StoreOpt = None,
    listen: Annotated[
        str | None, typer.Option(help="HOST:PORT to listen on (default 127.0.0.1:3142).")
    ] = None,
    mode: Annotated[
        Mode | None, typer.Option(help="online: record what passes; offline: serve only that.")
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="Server processes sharing the port.")] = 1,
    strict: Annotated[
        bool, typer.Option(help="Offline: serve /@SEED/ requests only from that seed.")
    ] = False,
    log_format: Annotated[
        str | None,
        typer.Option(help="Log lines as text or json (default: server.log_format, text)."),
    ] = None,
) -> None:
    """Run the caching proxy (on built-in defaults when given no options).

    Under systemd socket activation (LISTEN_FDS) it serves the passed socket and
    ignores --listen.
    """
    from .web.accesslog import setup_logging
    from .web.serve import serve as run_serve

    if log_format not in (None, "text", "json"):
        raise ConfigError(f"--log-format must be text or json, not {log_format!r}")
    cfg = _config(config, store).with_overrides(listen=listen, mode=mode)
    fmt = log_format or cfg.server.log_format
    setup_logging(fmt)
    run_serve(cfg, workers=workers, strict=strict, log_format=fmt)


# -- misses, stats, fsck, prefetch -----------------------------------------


@app.command()
def misses(
    config: ConfigOpt = None,
    store: StoreOpt = None,
    since: Annotated[str | None, typer.Option(help="Only misses since WHEN (2h, 3d, ISO).")] = None,
    format: Annotated[
        str, typer.Option("--format", "-f", help="table, urls (input for prefetch @FILE) or json.")
    ] = "table",
) -> None:
    """What offline clients asked for and did not get."""
    if format not in ("table", "urls", "json"):
        raise ConfigError(f"--format must be table, urls or json, not {format!r}")
    st = _open_store(config, store)
    try:
        rows = st.index.misses(parse_when(since) if since else 0.0)
    finally:
        st.close()
    if format == "urls":
        for r in rows:
            typer.echo(r["key"])
    elif format == "json":
        typer.echo(json.dumps(rows, indent=2))
    else:
        if not rows:
            typer.echo("no misses logged")
        for r in rows:
            last = dt.datetime.fromtimestamp(r["last"]).strftime("%Y-%m-%d %H:%M:%S")
            typer.echo(f"{last}  {r['count']:>4}x  {r['reason']:<15} {r['key']}")


@app.command()
def stats(config: ConfigOpt = None, store: StoreOpt = None) -> None:
    """Entries, blobs and bytes in the store, as JSON."""
    st = _open_store(config, store)
    try:
        typer.echo(json.dumps(st.index.stats(), indent=2))
    finally:
        st.close()


@app.command()
def fsck(
    config: ConfigOpt = None,
    store: StoreOpt = None,
    repair: Annotated[
        bool, typer.Option(help="Also drop entries whose blob is gone and remove temp files.")
    ] = False,
) -> None:
    """Re-hash every blob; corrupt ones are quarantined and never served."""
    from .fsck import fsck as run_fsck

    st = _open_store(config, store)
    try:
        report = run_fsck(st, repair=repair)
    finally:
        st.close()
    for d in report.corrupt:
        typer.echo(f"corrupt (quarantined): {d}", err=True)
    for d in report.missing:
        typer.echo(f"missing blob: {d}", err=True)
    typer.echo(report.summary())
    if not report.clean:
        raise typer.Exit(1)


@app.command()
def prefetch(
    urls: Annotated[list[str], typer.Argument(help="URLs, or @FILE with one URL per line.")],
    config: ConfigOpt = None,
    store: StoreOpt = None,
    seed: Annotated[str | None, typer.Option(help="Record the entries in this seed.")] = None,
) -> None:
    """Online: fetch URLs into the store, as a client through the server would."""
    from .prefetch import prefetch as run_prefetch

    wanted: list[str] = []
    for u in urls:
        if u.startswith("@"):
            try:
                text = Path(u[1:]).read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(f"cannot read {u[1:]}: {exc.strerror}") from None
            wanted += [ln.strip() for ln in text.splitlines() if ln.strip() and ln[0] != "#"]
        else:
            wanted.append(u)
    cfg = _config(config, store)
    report = _run(run_prefetch(cfg, wanted, seed=seed))
    for url, why in report.failed:
        typer.echo(f"failed: {url}: {why}", err=True)
    typer.echo(report.summary())
    if report.failed:
        raise typer.Exit(1)


@app.command(context_settings={"allow_interspersed_args": False})
def wrap(
    command: Annotated[
        list[str] | None, typer.Argument(help="The build command and its arguments (after --).")
    ] = None,
    server: Annotated[
        str | None,
        typer.Option(help="A running server (default: $CACHESRV_URL, else a private one)."),
    ] = None,
    offline: Annotated[
        bool, typer.Option("--offline", help="Serve only what the store holds.")
    ] = False,
    isolate: Annotated[
        bool,
        typer.Option(
            "--isolate", help="With --offline: no network for the build but loopback and the cache."
        ),
    ] = False,
    seed: Annotated[
        str | None, typer.Option(help="Record every request in this seed (the build's manifest).")
    ] = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="With --offline --seed: serve only that seed.")
    ] = False,
    print_env: Annotated[
        bool, typer.Option("--print-env", help="Print the environment as shell lines and exit.")
    ] = False,
    config: ConfigOpt = None,
    store: StoreOpt = None,
) -> None:
    """Run a build with apt, pip, uv, snap tooling and plain HTTP going through the cache.

    Without --server (or $CACHESRV_URL) a private server runs over the store for the
    life of the command. The command's exit status is this command's; a summary line
    (hits, newly recorded, offline misses, seed) goes to stderr. See docs/build-wrapper.md.
    """
    from .wrap import WrapOptions, run_wrap
    from .wrap import print_env as render_env

    store_args: list[str] = []
    if config is not None:
        store_args += ["--config", str(config)]
    if store is not None:
        store_args += ["--store", str(store)]
    opts = WrapOptions(
        command=tuple(command or ()),
        server=server,
        offline=offline,
        isolate=isolate,
        seed=seed,
        strict=strict,
        store_args=tuple(store_args),
    )
    cfg = _config(config, store)
    if print_env:
        typer.echo(render_env(cfg, opts), nl=False)
        return
    raise typer.Exit(run_wrap(cfg, opts))


def _open_store(config: Path | None, store: Path | None) -> Any:
    from .store import Store

    cfg = _config(config, store)
    return Store(cfg.store)


def _run(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


# -- entry points ---------------------------------------------------------


def _invoke(typer_app: typer.Typer, prog: str) -> None:
    try:
        # Outside standalone mode click returns typer.Exit's code instead of exiting.
        rc = typer_app(prog_name=prog, standalone_mode=False)
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except CachesrvError as exc:
        if _debug:
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
        if _debug:
            raise
        print(f"{prog}: error: {type(exc).__name__}: {exc} (run with --debug)", file=sys.stderr)
        sys.exit(1)


def main() -> None:
    _invoke(app, "cachesrv")


def seed_main() -> None:
    _invoke(seed_app, "seed")


# -- seed list / show ----------------------------------------------------------


@seed_app.command("list")
def seed_list(config: ConfigOpt = None, store: StoreOpt = None) -> None:
    """Named seeds with their entry counts and sizes."""
    st = _open_store(config, store)
    try:
        rows = st.index.seeds()
    finally:
        st.close()
    if not rows:
        typer.echo("no seeds")
    for r in rows:
        typer.echo(f"{r['name']:<30} {r['entries']:>7} entries {r['bytes']:>14} bytes")


@seed_app.command("show")
def seed_show(
    name: Annotated[str, typer.Argument(help="Seed name.")],
    config: ConfigOpt = None,
    store: StoreOpt = None,
) -> None:
    """A seed's entries, total size and any missing blobs."""
    st = _open_store(config, store)
    try:
        keys = st.index.seed_keys(name)
        if not keys:
            raise ConfigError(f"no seed named {name!r} (see `cachesrv seed list`)")
        total = 0
        missing: list[str] = []
        for key in keys:
            entry = st.index.get(key)
            if entry is None or not st.blobs.has(entry.digest):
                missing.append(key)
                typer.echo(f"MISSING  {key}")
                continue
            total += entry.size
            typer.echo(f"{entry.size:>12}  {key}")
    finally:
        st.close()
    typer.echo(f"seed {name}: {len(keys)} entries, {total} bytes, {len(missing)} missing blobs")
    if missing:
        raise typer.Exit(1)


# -- seed export / import / verify / inventory -----------------------------------


@seed_app.command("export")
def seed_export(
    dest: Annotated[Path, typer.Argument(help="Bundle directory (empty, or an earlier export).")],
    seed: Annotated[
        list[str] | None, typer.Option("--seed", help="Only this named seed (repeatable).")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Only entries recorded since WHEN (2h, 3d, ISO).")
    ] = None,
    missing_from: Annotated[
        Path | None,
        typer.Option(help="Inventory of the receiving store: export only what it lacks."),
    ] = None,
    split_size: Annotated[
        str | None,
        typer.Option(help="Split larger blobs into pieces (1MiB, 500M, 4GiB, fat32)."),
    ] = None,
    config: ConfigOpt = None,
    store: StoreOpt = None,
) -> None:
    """Write the store (or seeds, or what another store lacks) as a bundle; resumable."""
    from .seed import ExportOptions, export_bundle, parse_size

    try:
        split = parse_size(split_size) if split_size is not None else None
    except ValueError as exc:
        raise ConfigError(f"--split-size: {exc}") from None
    opts = ExportOptions(
        seeds=tuple(seed or ()),
        since=parse_when(since) if since else None,
        missing_from=missing_from,
        split_size=split,
    )
    st = _open_store(config, store)
    try:
        report = export_bundle(st, dest, opts)
    finally:
        st.close()
    for why in report.skipped:
        typer.echo(f"skipped: {why}", err=True)
    typer.echo(report.summary())


@seed_app.command("import")
def seed_import(
    src: Annotated[Path, typer.Argument(help="Bundle directory written by `seed export`.")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Verify and report what would change; change nothing.")
    ] = False,
    config: ConfigOpt = None,
    store: StoreOpt = None,
) -> None:
    """Verify a bundle completely, then merge it into the store (all or nothing)."""
    from .seed import import_bundle

    st = _open_store(config, store)
    try:
        report = import_bundle(st, src, dry_run=dry_run)
    finally:
        st.close()
    if dry_run:
        for line in report.details():
            typer.echo(line)
    else:
        for key in report.kept:
            typer.echo(f"kept: {key} (this store's copy is newer)", err=True)
    typer.echo(report.summary())


@seed_app.command("verify")
def seed_verify(
    src: Annotated[Path, typer.Argument(help="Bundle directory.")],
) -> None:
    """Check a bundle (format, paths, sizes, every digest) without importing it."""
    from .seed import verify_bundle

    typer.echo(verify_bundle(src).summary())


@seed_app.command("inventory")
def seed_inventory(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to FILE (default: stdout).")
    ] = None,
    config: ConfigOpt = None,
    store: StoreOpt = None,
) -> None:
    """What this store holds, for `seed export --missing-from` at the other site."""
    from .seed import write_inventory

    st = _open_store(config, store)
    try:
        text, inv = write_inventory(st, output)
    finally:
        st.close()
    summary = (
        f"seed inventory: {len(inv['digests'])} blobs, {len(inv['entries'])} entries, "
        f"{len(inv['seeds'])} seeds"
    )
    if output is None:
        sys.stdout.write(text)
        typer.echo(summary, err=True)
    else:
        typer.echo(f"{summary} -> {output}")


# -- snap fetch / files -----------------------------------------------------------

SnapUpstreamOpt = Annotated[
    str | None,
    typer.Option("--upstream", help="Snap upstream name (default: the only snap upstream)."),
]


@snap_app.command("fetch")
def snap_fetch(
    name: Annotated[str, typer.Argument(help="Snap name.")],
    channel: Annotated[
        str, typer.Option(help="Channel, as `snap download --channel` takes it (default stable).")
    ] = "",
    arch: Annotated[
        str | None, typer.Option(help="Snap architecture (default: this machine's, e.g. amd64).")
    ] = None,
    revision: Annotated[
        int | None, typer.Option(min=1, help="A revision instead of a channel.")
    ] = None,
    seed: Annotated[str | None, typer.Option(help="Record the entries in this seed.")] = None,
    upstream: SnapUpstreamOpt = None,
    config: ConfigOpt = None,
    store: StoreOpt = None,
) -> None:
    """Online: record a snap, its refresh answer and its assertion chain.

    Asks the store what `snap download NAME` asks, so an offline `snap download`,
    snapd install or snapcraft build finds every answer it needs.
    """
    import platform

    from .snapfetch import fetch_snap
    from .upstreams.snap import snap_arch

    if channel and revision:
        raise ConfigError("give --channel or --revision, not both")
    cfg = _config(config, store)
    report = _run(
        fetch_snap(
            cfg,
            name,
            channel=channel,
            arch=arch or snap_arch(platform.machine()),
            revision=revision,
            seed=seed,
            upstream_name=upstream,
        )
    )
    typer.echo(report.summary())


@snap_app.command("files")
def snap_files(
    name: Annotated[str, typer.Argument(help="Snap name.")],
    dest: Annotated[Path, typer.Argument(help="Directory to write NAME_REV.snap/.assert to.")],
    channel: Annotated[str | None, typer.Option(help="Only a download of this channel.")] = None,
    arch: Annotated[str | None, typer.Option(help="Only a download for this architecture.")] = None,
    revision: Annotated[int | None, typer.Option(min=1, help="Only this revision.")] = None,
    upstream: SnapUpstreamOpt = None,
    config: ConfigOpt = None,
    store: StoreOpt = None,
) -> None:
    """Write NAME_REV.snap and NAME_REV.assert from the store, with no network.

    Takes the most recently recorded download of NAME that matches the options. Then,
    on the target machine: `snap ack NAME_REV.assert && snap install NAME_REV.snap`.
    """
    from .snapfetch import snap_files as write_files

    cfg = _config(config, store)
    out = write_files(
        cfg, name, dest, channel=channel, arch=arch, revision=revision, upstream_name=upstream
    )
    typer.echo(f"{out.snap}\n{out.assertions}")
    typer.echo(f"install with: snap ack {out.assertions} && snap install {out.snap}")
