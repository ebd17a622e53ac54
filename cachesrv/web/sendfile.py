"""Zero-copy file bodies under uvloop.

aiohttp's `FileResponse` sends a file with `loop.sendfile()`; uvloop does not
implement it, so aiohttp falls back to reading chunks in a thread and writing
them, which costs a core for one fast client and buffers chunks per connection.
`BlobResponse` keeps everything FileResponse does (Range, HEAD, conditional
requests, ETag, Last-Modified) and replaces only the transfer: after the headers
are flushed it calls `os.sendfile` on a duplicate of the connection's socket,
waiting for writability on that duplicate (the transport keeps its own
descriptor), and falls back to FileResponse's own path when it cannot (and inside
a TLS tunnel, where the bytes must be encrypted).
"""

from __future__ import annotations

import asyncio
import os
from typing import IO, Any

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

_MAX_CHUNK = 1 << 30


class BlobResponse(web.FileResponse):
    async def _sendfile(
        self, request: web.BaseRequest, fobj: IO[Any], offset: int, count: int
    ) -> AbstractStreamWriter:
        transport = request.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        # Inside a CONNECT tunnel the socket carries TLS: bytes must go through the
        # transport to be encrypted (its "socket" is the raw one underneath).
        tls = transport is not None and transport.get_extra_info("ssl_object") is not None
        if transport is None or sock is None or tls or not hasattr(os, "sendfile"):
            return await super()._sendfile(request, fobj, offset, count)
        writer = await web.StreamResponse.prepare(self, request)
        assert writer is not None
        loop = asyncio.get_running_loop()
        # Flush what the transport holds (the headers) before writing around it.
        limits = transport.get_write_buffer_limits()
        transport.set_write_buffer_limits(high=0, low=0)
        try:
            while transport.get_write_buffer_size():
                await writer.drain()
                if transport.is_closing():
                    raise ConnectionResetError("client went away")
        finally:
            transport.set_write_buffer_limits(high=limits[1], low=limits[0])
        fd = os.dup(sock.fileno())
        try:
            infd = fobj.fileno()
            while count > 0:
                try:
                    sent = os.sendfile(fd, infd, offset, min(count, _MAX_CHUNK))
                except BlockingIOError:
                    await _writable(loop, fd)
                    continue
                if sent == 0:
                    raise ConnectionResetError("client went away")
                offset += sent
                count -= sent
        finally:
            os.close(fd)
        await web.StreamResponse.write_eof(self)
        return writer


async def _writable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    ready = loop.create_future()
    loop.add_writer(fd, ready.set_result, None)
    try:
        await ready
    finally:
        loop.remove_writer(fd)
