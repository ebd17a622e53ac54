"""`cachesrv snap ...`: record a snap for offline builds, write it out for snap ack."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import ConfigError
from .common import ConfigOpt, StoreOpt, config_for, run_async, snap_app

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

    from ..snapfetch import fetch_snap
    from ..upstreams.snap import snap_arch

    if channel and revision:
        raise ConfigError("give --channel or --revision, not both")
    cfg = config_for(config, store)
    report = run_async(
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
    from ..snapfetch import snap_files as write_files

    cfg = config_for(config, store)
    out = write_files(
        cfg, name, dest, channel=channel, arch=arch, revision=revision, upstream_name=upstream
    )
    typer.echo(f"{out.snap}\n{out.assertions}")
    typer.echo(f"install with: snap ack {out.assertions} && snap install {out.snap}")
