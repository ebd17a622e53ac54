"""Run the server until SIGTERM/SIGINT: bind (or take systemd's socket), announce,
serve, clean up.

Socket activation follows sd_listen_fds(3): when `LISTEN_PID` is our pid and
`LISTEN_FDS` >= 1, fd 3 is the listening socket and `server.listen` is ignored.
Readiness and shutdown are reported with sd_notify(3) when `NOTIFY_SOCKET` is set
(`Type=notify` in systemd/cachesrv.service). Neither needs libsystemd.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
from collections.abc import Coroutine
from typing import Any

from aiohttp import web

from ..config import Config, split_listen
from ..errors import ConfigError
from ..store import Store
from ..store.blobs import BlobStore
from ..tls.ca import LocalCA
from .accesslog import SINK, log_line, server_options
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
    clean_tmp: bool = True,
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
    app = make_app(config, strict=strict, clean_tmp=clean_tmp)
    runner = web.AppRunner(app, handle_signals=False, **server_options(fmt))
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
        flusher = asyncio.create_task(_flush_logs())
        await stop.wait()
        flusher.cancel()
        SINK.flush()
        sd_notify("STOPPING=1")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await runner.cleanup()


async def _flush_logs(every: float = 0.5) -> None:
    """Access lines are buffered (accesslog.AccessSink): flush them even when the
    server goes quiet."""
    while True:
        await asyncio.sleep(every)
        SINK.flush()


def serve(config: Config, *, workers: int = 1, strict: bool = False, log_format: str) -> None:
    """Run the server in this process, or in `workers` forked processes sharing one
    listening socket (the kernel hands each connection to one of them).

    The socket is bound (or taken from systemd) before forking, so a port of 0
    resolves once and socket activation works for every worker. Each worker opens
    its own index connection after the fork (SQLite must not cross a fork). Single
    flight holds within a worker; two workers may fetch the same cold URL once each.
    """
    # Made (or its key's mode checked) before any worker forks: workers only load it.
    LocalCA.ensure(config.ca_dir)
    if workers <= 1:
        run(run_server(config, strict=strict, log_format=log_format))
        return
    sock = inherited_socket()
    how = " (socket from systemd)" if sock is not None else ""
    if sock is None:
        host, port = split_listen(config.server.listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise ConfigError(f"cannot listen on {config.server.listen}: {exc.strerror}") from None
        sock.listen(1024)
    sock.setblocking(False)
    BlobStore(config.store).clean_tmp()
    # The index is created (WAL mode, migrations) once, here: workers opening a new
    # store at the same moment failed with "database is locked" on the WAL switch.
    Store(config.store, config.limits).close()
    host, port = sock.getsockname()[:2]
    url = f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"
    children: list[int] = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:  # a worker: serve until SIGTERM, never return into the CLI
            os.environ.pop("NOTIFY_SOCKET", None)  # the supervisor speaks to systemd
            _die_with_parent()
            code = 0
            try:
                run(
                    run_server(
                        config,
                        strict=strict,
                        sock=sock,
                        announce=False,
                        log_format=log_format,
                        clean_tmp=False,
                    )
                )
            except BaseException:
                log.exception("worker failed")
                code = 1
            finally:
                SINK.flush()  # os._exit skips atexit
                logging.shutdown()
                os._exit(code)
        children.append(pid)
    sock.close()
    message = (
        f"cachesrv: serving {url} ({config.server.mode.value}, store {config.store}, "
        f"{workers} workers){how}"
    )
    print(log_line(message, log_format), file=sys.stderr, flush=True)
    _supervise(children)


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM this worker when the supervisor dies (even by SIGKILL), so
    no orphan keeps serving, or holding the store and the supervisor's stderr."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    if os.getppid() == 1:  # the supervisor already went before prctl took effect
        os._exit(1)


def _supervise(children: list[int]) -> None:
    """Forward SIGTERM/SIGINT to the workers and wait for all of them."""

    def forward(signum: int, _frame: object) -> None:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    sd_notify("READY=1")
    remaining = set(children)
    while remaining:
        try:
            pid, _status = os.wait()
        except ChildProcessError:
            break
        remaining.discard(pid)
        if remaining:  # one worker died: stop the others rather than serve degraded
            forward(signal.SIGTERM, None)
    sd_notify("STOPPING=1")


def run(coro: Coroutine[Any, Any, None]) -> None:
    """Run the server's event loop: uvloop when installed, else asyncio's."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)


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
