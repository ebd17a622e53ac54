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

It also serves the whole body (200) where RFC 9110 says a Range is to be ignored and
aiohttp would not: a Range of another unit (14.2: MUST), several ranges or a `-0`
(answered 416 and 206 by aiohttp), and an If-Range whose validator is not exactly this
body's ETag or Last-Modified (13.1.5: MUST; aiohttp compares only dates, and as "not
older", so a resumed download could get a part of another body).
"""

from __future__ import annotations

import asyncio
import io
import math
import os
import re
import time
from typing import IO, Any

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter
from multidict import CIMultiDict

_MAX_CHUNK = 1 << 30
#: The one form of Range served: one byte range (`a-b`, `a-`, `-n` with n > 0).
_RANGE = re.compile(r"bytes=(?:[0-9]+-[0-9]*|-0*[1-9][0-9]*)", re.IGNORECASE | re.ASCII)


class BlobGone(Exception):
    """The blob's file went away (evicted, or removed by gc) between the lookup that
    chose it and the send; nothing was sent. Not an OSError: FileResponse.prepare
    answers any OSError with a 404, which for a body the upstream has is a lie."""


class BlobResponse(web.FileResponse):
    """FileResponse over a blob: sendfile under uvloop (module doc), and `BlobGone`
    instead of a 404 when the blob is gone. It may be prepared (sent) by the handler
    itself, which aiohttp's FileResponse does not expect (it would send it again)."""

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self.prepared:  # sent by the handler already; aiohttp calls this once more
            return self._payload_writer
        return await super().prepare(request)

    def _make_response(self, request: web.BaseRequest, accept_encoding: str) -> Any:
        try:
            return super()._make_response(request, accept_encoding)
        except FileNotFoundError as exc:
            raise BlobGone(exc.filename) from None

    async def _prepare_open_file(
        self,
        request: web.BaseRequest,
        fobj: io.BufferedReader,
        st: os.stat_result,
        file_encoding: str | None,
    ) -> AbstractStreamWriter | None:
        rng = request.headers.get(hdrs.RANGE)
        if (
            rng is not None
            and request.method in (hdrs.METH_GET, hdrs.METH_HEAD)
            and not (_RANGE.fullmatch(rng) and _if_range_holds(request, st))
        ):
            # A Range to ignore (module doc): the whole body, as to a request without it.
            headers = CIMultiDict(request.headers)
            del headers[hdrs.RANGE]
            request = request.clone(headers=headers)
        return await super()._prepare_open_file(request, fobj, st, file_encoding)

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


def _if_range_holds(request: web.BaseRequest, st: os.stat_result) -> bool:
    """No If-Range, or one naming this body's validators exactly as FileResponse sends
    them (`hot.HotItem.validators` makes the same)."""
    if_range = request.headers.get(hdrs.IF_RANGE)
    if if_range is None:
        return True
    etag = f'"{st.st_mtime_ns:x}-{st.st_size:x}"'
    last_modified = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(math.ceil(st.st_mtime)))
    return if_range.strip() in (etag, last_modified)
