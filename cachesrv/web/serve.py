"""Run the server until SIGTERM/SIGINT: bind, announce, serve, clean up."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys

from aiohttp import web

from ..config import Config, split_listen
from .app import make_app

log = logging.getLogger("cachesrv.serve")


async def run_server(
    config: Config,
    *,
    strict: bool = False,
    sock: socket.socket | None = None,
    announce: bool = True,
) -> None:
    """Serve `config` until a termination signal; `sock` is an already-bound listener."""
    app = make_app(config, strict=strict)
    runner = web.AppRunner(app, handle_signals=False, access_log=log)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        site: web.BaseSite
        if sock is not None:
            site = web.SockSite(runner, sock)
        else:
            host, port = split_listen(config.server.listen)
            site = web.TCPSite(runner, host, port, backlog=1024)
        await site.start()
        if announce:
            print(
                f"cachesrv: serving {_url_of(site)} "
                f"({config.server.mode.value}, store {config.store})",
                file=sys.stderr,
                flush=True,
            )
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await runner.cleanup()


def _url_of(site: web.BaseSite) -> str:
    server = site._server  # noqa: SLF001 - aiohttp exposes no public accessor for the bound port
    sockets = getattr(server, "sockets", None)
    if not sockets:
        return site.name
    host, port = sockets[0].getsockname()[:2]
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/"
