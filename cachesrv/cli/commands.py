"""The top-level commands: serve, misses, stats, fsck, prefetch, wrap."""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from ..errors import ConfigError
from ..models import Mode
from ..upstreams import git
from .common import (
    ConfigOpt,
    StoreOpt,
    app,
    config_for,
    open_store,
    parse_duration,
    parse_when,
    run_async,
)

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
    any_host: Annotated[
        bool,
        typer.Option(
            "--any-host",
            hidden=True,
            help="Record any host asked for (the private server of cachesrv wrap).",
        ),
    ] = False,
) -> None:
    """Run the caching proxy (on built-in defaults when given no options).

    Under systemd socket activation (LISTEN_FDS) it serves the passed socket and
    ignores --listen. The local CA for HTTPS interception is made on first start
    (see `cachesrv ca`).
    """
    from ..web.accesslog import setup_logging
    from ..web.serve import serve as run_serve

    if log_format not in (None, "text", "json"):
        raise ConfigError(f"--log-format must be text or json, not {log_format!r}")
    cfg = config_for(config, store).with_overrides(listen=listen, mode=mode, any_host=any_host)
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
    """What offline clients asked for and did not get.

    With --format urls, one URL a line (input for `prefetch @FILE`); git clones, which
    cannot be prefetched, follow as `#` comments naming the command that records them.
    """
    if format not in ("table", "urls", "json"):
        raise ConfigError(f"--format must be table, urls or json, not {format!r}")
    st = open_store(config, store)
    try:
        rows = st.index.misses(parse_when(since) if since else 0.0)
    finally:
        st.close()
    if format == "urls":
        clones = set()
        for r in rows:
            if git.is_exchange(r["key"]):
                # Not a URL prefetch can fetch: say how to record it, as a comment.
                clones.add(git.record_command(r["key"], r["seed"]))
            else:
                typer.echo(r["key"])
        for command in sorted(clones):
            typer.echo(f"# git: {command}")
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
    st = open_store(config, store)
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
    from ..fsck import fsck as run_fsck

    st = open_store(config, store)
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
def gc(
    config: ConfigOpt = None,
    store: StoreOpt = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would be removed; remove nothing.")
    ] = False,
    grace: Annotated[
        str, typer.Option(help="Keep blobs whose file is younger than this (e.g. 1h, 30m).")
    ] = "1h",
) -> None:
    """Remove blobs that no entry references (deleted entries, replaced index pages,
    evictions). Safe while the server runs: a recording claims its blob in the index
    before the blob is in place, and a blob younger than the grace period is kept too
    (keep the default while a seed import runs)."""
    from ..progress import progress
    from ..store.lifecycle import collect

    seconds = parse_duration(grace, "--grace")
    st = open_store(config, store)
    try:
        total = sum(1 for _ in st.blobs.iter_digests()) if sys.stderr.isatty() else None
        with progress("gc", total) as tick:
            report = collect(st.blobs, st.index, grace=seconds, dry_run=dry_run, tick=tick)
    finally:
        st.close()
    typer.echo(report.summary())


@app.command()
def pin(
    urls: Annotated[list[str], typer.Argument(help="Cache keys (upstream URLs), as prefetch.")],
    config: ConfigOpt = None,
    store: StoreOpt = None,
) -> None:
    """Keep entries from being evicted (entries in a named seed always are)."""
    _pin(config, store, urls, pin=True)


@app.command()
def unpin(
    urls: Annotated[list[str], typer.Argument(help="Cache keys (upstream URLs).")],
    config: ConfigOpt = None,
    store: StoreOpt = None,
) -> None:
    """Let pinned entries be evicted again (unless a named seed holds them)."""
    _pin(config, store, urls, pin=False)


def _pin(config: Path | None, store: Path | None, urls: list[str], *, pin: bool) -> None:
    from ..store import Store
    from ..upstreams.router import Router

    cfg = config_for(config, store)
    router = Router(cfg.upstreams, cfg.server.max_url_length, cfg.tls)
    keys = [router.resolve(u.strip()).url for u in urls]
    st = Store(cfg.store, cfg.limits)
    try:
        changed = [k for k in keys if (st.index.pin(k) if pin else st.index.unpin(k))]
    finally:
        st.close()
    verb = "pinned" if pin else "unpinned"
    for key in changed:
        typer.echo(f"{verb} {key}")
    missed = [k for k in keys if k not in changed]
    if missed:
        why = "not in the store" if pin else "not pinned"
        raise ConfigError(f"{len(missed)} not {verb} ({why}): {', '.join(missed)}")


@app.command()
def prefetch(
    urls: Annotated[list[str], typer.Argument(help="URLs, or @FILE with one URL per line.")],
    config: ConfigOpt = None,
    store: StoreOpt = None,
    seed: Annotated[str | None, typer.Option(help="Record the entries in this seed.")] = None,
) -> None:
    """Online: fetch URLs into the store, as a client through the server would."""
    from ..prefetch import prefetch as run_prefetch

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
    cfg = config_for(config, store)
    report = run_async(run_prefetch(cfg, wanted, seed=seed))
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
    from ..wrap import WrapOptions, run_wrap
    from ..wrap import print_env as render_env

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
    cfg = config_for(config, store)
    if print_env:
        typer.echo(render_env(cfg, opts), nl=False)
        return
    raise typer.Exit(run_wrap(cfg, opts))
