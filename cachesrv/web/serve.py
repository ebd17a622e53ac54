"""Run the server until SIGTERM/SIGINT: bind (or take systemd's socket), announce,
serve, clean up.

Socket activation follows sd_listen_fds(3): when `LISTEN_PID` is our pid and
`LISTEN_FDS` >= 1, fd 3 is the listening socket and `server.listen` is ignored.
Readiness and shutdown are reported with sd_notify(3) when `NOTIFY_SOCKET` is set
(`Type=notify` in systemd/cachesrv.service). Neither needs libsystemd.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys

from aiohttp import web

from ..config import Config, split_listen
from ..errors import ConfigError
from .accesslog import log_line, server_options
from .app import make_app

log = logging.getLogger("cachesrv.serve")

#: The first descriptor systemd passes (SD_LISTEN_FDS_START).
LISTEN_FDS_START = 3


async def run_server(
    config: Config,
    *,
    strict: bool = False,
    sock: socket.socket | None = None,
    announce: bool = True,
    log_format: str | None = None,
) -> None:
    """Serve `config` until a termination signal.

    `sock` is an already-bound listener; without it, a socket passed by systemd
    is used, and without that, `server.listen` is bound. `log_format` ("text" or
    "json", default `server.log_format`) only shapes the start-up line here; the
    log handlers are set up by the caller (`accesslog.setup_logging`).
    """
    fmt = log_format or config.server.log_format
    if sock is None:
        sock = inherited_socket()
    app = make_app(config, strict=strict)
    runner = web.AppRunner(app, handle_signals=False, **server_options())
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
        url = _url_of(site)
        if announce:
            how = " (socket from systemd)" if sock is not None else ""
            message = (
                f"cachesrv: serving {url} ({config.server.mode.value}, store {config.store}){how}"
            )
            print(log_line(message, fmt), file=sys.stderr, flush=True)
        sd_notify(f"READY=1\nSTATUS=serving {url} ({config.server.mode.value})")
        await stop.wait()
        sd_notify("STOPPING=1")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await runner.cleanup()


def inherited_socket() -> socket.socket | None:
    """The listening socket systemd passed us (socket activation), or None.

    The variables are removed once read, as sd_listen_fds(1) does, so nothing we
    start mistakes them for its own; the descriptor is made close-on-exec.
    """
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    count_text = os.environ.get("LISTEN_FDS", "0")
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(var, None)
    try:
        count = int(count_text)
    except ValueError:
        raise ConfigError(f"LISTEN_FDS={count_text!r} is not a number") from None
    if count < 1:
        return None
    if count > 1:
        log.warning("systemd passed %d sockets; serving on the first (fd 3) only", count)
    try:
        os.set_inheritable(LISTEN_FDS_START, False)
        sock = socket.socket(fileno=LISTEN_FDS_START)
    except OSError as exc:
        raise ConfigError(
            f"LISTEN_FDS: fd {LISTEN_FDS_START} is not a usable socket: {exc.strerror}"
        ) from None
    if sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise ConfigError(
            f"LISTEN_FDS: fd {LISTEN_FDS_START} is not a stream socket "
            "(use ListenStream= in cachesrv.socket)"
        )
    return sock


def sd_notify(state: str) -> bool:
    """Send `state` to systemd's notification socket; False when there is none."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    elif not address.startswith("/"):
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(address)
            s.sendall(state.encode())
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", address, exc.strerror)
        return False
    return True


def _url_of(site: web.BaseSite) -> str:
    server = site._server  # noqa: SLF001 - aiohttp exposes no public accessor for the bound port
    sockets = getattr(server, "sockets", None)
    if not sockets:
        return site.name
    if sockets[0].family == socket.AF_UNIX:
        return f"unix:{sockets[0].getsockname()}"
    host, port = sockets[0].getsockname()[:2]
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/"
