"""`CONNECT host:port`: terminate TLS with a certificate from the local CA, then serve
each request inside the tunnel as the absolute-form proxy request `https://host/path`.

Only hosts the router allows are intercepted (`Router.allows_connect`: the upstreams'
hosts, `tls.intercept`, any host for a private wrap server); others get a `403` that
names the config key. No tunnel is ever blind: whatever is inside is served by the
same application (routing, recording, single flight, offline misses, seeds, metrics,
access log), so online it is recorded and offline no upstream connection is opened.

How the connection changes hands: the `200 Connection Established` line is written on
the raw transport, `loop.start_tls` wraps that transport in TLS with a fresh aiohttp
`RequestHandler` of the same server as its protocol, and the handler that answered the
CONNECT is detached (its transport forgotten, then told the connection is gone) so it
neither writes nor closes anything on the connection it no longer owns. The requests
of a tunnel find it by their protocol (`request_target` in target.py).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable

from aiohttp import hdrs, web

from ..errors import Forbidden
from ..upstreams.urls import connect_authority
from .keys import STATE
from .target import Tunnel, seed_of

log = logging.getLogger("cachesrv.connect")

ESTABLISHED = b"HTTP/1.1 200 Connection Established\r\n\r\n"
HANDSHAKE_TIMEOUT = 30.0


async def connect(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    host, port = connect_authority(request.raw_path)
    if not state.router.allows_connect(host, port):
        entry = host if port == 443 else f"{host}:{port}"
        raise Forbidden(
            f"CONNECT {host}:{port} refused: not a configured upstream host; cachesrv "
            f'intercepts only those and [tls] intercept (add "{entry}" there)'
        )
    credentials = request.headers.get(hdrs.PROXY_AUTHORIZATION)
    seed = seed_of(credentials) if credentials is not None else None
    loop = asyncio.get_running_loop()
    context = await loop.run_in_executor(None, state.ca.server_context, host.strip("[]"))
    outer = request.protocol
    transport = request.transport
    manager = outer._manager  # noqa: SLF001 - the server whose handler serves the tunnel
    if transport is None or transport.is_closing() or manager is None:
        raise ConnectionResetError("client went away before the tunnel was set up")
    inner = manager()
    tunnel = Tunnel(host, port, seed)
    state.tunnels[inner] = tunnel
    protocol = _TunnelProtocol(inner, lambda: state.tunnels.pop(inner, None))
    handshake = asyncio.ensure_future(
        loop.start_tls(
            transport,
            protocol,
            context,
            server_side=True,
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
        )
    )
    # One turn lets start_tls take the transport (reading paused, its TLS protocol
    # installed, connection_made queued). Only then is the 200 written: the client's
    # ClientHello, sent when it reads the 200, cannot reach aiohttp's protocol instead.
    await asyncio.sleep(0)
    # Bytes a client sent right behind the CONNECT without waiting for the 200 (an
    # early ClientHello) were kept aside by aiohttp's parser, as after any upgrade:
    # they are fed to the handshake, queued behind its connection_made.
    early = bytes(getattr(outer, "_message_tail", b""))
    if early and not handshake.done():
        loop.call_soon(_feed, transport.get_protocol(), early)
    transport.write(ESTABLISHED)
    try:
        tls = await handshake
    except (TimeoutError, ssl.SSLError, OSError) as exc:
        # Most often the client does not trust the CA (docs/https.md says how to).
        log.warning("CONNECT %s:%d: TLS handshake failed: %s", host, port, exc)
        tls = None
    finally:
        # The connection is the tunnel's now: the handler that answered the CONNECT
        # forgets it, so it neither writes to it nor closes it when its turn ends.
        outer.transport = None
        outer.connection_lost(None)
    if tls is None:
        state.tunnels.pop(inner, None)
        transport.abort()
    else:
        protocol.connection_made(tls)
    # Never sent (the old handler has no transport): it only ends that handler's turn.
    return web.Response(status=200)


def _feed(protocol: asyncio.BaseProtocol, data: bytes) -> None:
    """Hand `data` to a protocol as if read from its transport."""
    if isinstance(protocol, asyncio.BufferedProtocol) or hasattr(protocol, "buffer_updated"):
        view = memoryview(data)
        while view:
            buf = memoryview(protocol.get_buffer(len(view)))  # type: ignore[attr-defined]
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            protocol.buffer_updated(n)
            view = view[n:]
    else:
        protocol.data_received(data)  # type: ignore[attr-defined]


class _TunnelProtocol(asyncio.Protocol):
    """Hands the decrypted stream to aiohttp's handler; forgets the tunnel at the end."""

    def __init__(self, inner: web.RequestHandler, on_close: Callable[[], object]) -> None:
        self.inner = inner
        self._on_close = on_close

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        self.inner.eof_received()
        return None

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            self.inner.connection_lost(exc)
        finally:
            self._on_close()
