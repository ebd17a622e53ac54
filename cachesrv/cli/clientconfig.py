"""`cachesrv client-config KIND`: the drop-in files a site's machines install."""

from __future__ import annotations

from typing import Annotated

import typer

from ..clientconfig import KINDS, client_config, default_server
from ..models import Mode
from ..wrapenv import Server
from .common import ConfigOpt, StoreOpt, app, config_for


@app.command("client-config")
def client_config_command(
    kind: Annotated[str, typer.Argument(help=f"One of: {', '.join(KINDS)}.")],
    server: Annotated[
        str | None,
        typer.Option(
            help="The server as clients reach it, e.g. http://mirror:3142 "
            "(default: http://<server.listen of the config>; a wildcard address becomes "
            "this machine's host name)."
        ),
    ] = None,
    offline: Annotated[
        bool | None,
        typer.Option(
            "--offline/--online",
            help="apt: accept recorded Release files past their Valid-Until "
            '(Acquire::Check-Valid-Until "false", Acquire::Check-Date "false"). '
            "Default: the config's server.mode. The other kinds are the same either way.",
        ),
    ] = None,
    config: ConfigOpt = None,
    store: StoreOpt = None,
) -> None:
    """Print the drop-in file that points a site's machines at the server, with a first
    comment line naming where it goes (redirect the output there).

    apt: /etc/apt/apt.conf.d/99cachesrv (proxy for http and https sources, the CA to
    trust for https, and offline the Valid-Until settings); pip: /etc/pip.conf; uv:
    /etc/uv/uv.toml; npm: /etc/npmrc; snap: a systemd drop-in for snapd. These are the
    settings `cachesrv wrap` gives one build. See docs/site-mirror.md.
    """
    cfg = config_for(config, store)
    target = Server.parse(server) if server is not None else default_server(cfg)
    if offline is None:
        offline = cfg.server.mode is Mode.OFFLINE
    typer.echo(client_config(kind, cfg, target, offline=offline), nl=False)
