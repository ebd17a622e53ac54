"""The proxy handler: resolve, ask the source, serve what it answers."""

from __future__ import annotations

from aiohttp import hdrs, web

from ..errors import CachesrvError, MethodNotAllowed
from ..source import Request, Stored, Streaming
from .keys import STATE
from .middleware import MISS_STATUS_HEADER


async def proxy(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    if request.method not in (hdrs.METH_GET, hdrs.METH_HEAD):
        raise MethodNotAllowed(f"{request.method} is not supported; cachesrv serves GET and HEAD")
    # raw_path is the request target as sent: a path, or a whole URL in absolute form.
    route = state.router.resolve(request.raw_path)
    ask = Request(
        route=route,
        method=request.method,
        user_agent=request.headers.get(hdrs.USER_AGENT),
        needs_complete=request.method == hdrs.METH_HEAD or hdrs.RANGE in request.headers,
    )
    answer = await state.source.open(ask)
    state.metrics.count(answer.outcome, route.upstream.name)
    if isinstance(answer, Stored):
        return serve_stored(answer)
    return await serve_streaming(request, answer)


def serve_stored(answer: Stored) -> web.FileResponse:
    """A committed blob: sendfile, Range, HEAD and conditional requests by aiohttp."""
    entry = answer.entry
    return web.FileResponse(
        answer.path,
        chunk_size=256 * 1024,
        headers={
            hdrs.CONTENT_TYPE: entry.content_type,
            MISS_STATUS_HEADER: answer.outcome.value,
            "X-Cachesrv-Digest": entry.digest.hex,
        },
    )


async def serve_streaming(request: web.Request, answer: Streaming) -> web.StreamResponse:
    """Tail an in-flight fetch. If it fails after the headers went out, the only
    honest signal left is to cut the connection, so the client sees a broken body."""
    flight = answer.flight
    resp = web.StreamResponse(
        status=200,
        headers={hdrs.CONTENT_TYPE: flight.content_type, MISS_STATUS_HEADER: answer.outcome.value},
    )
    if flight.content_length is not None:
        resp.content_length = flight.content_length
    await resp.prepare(request)
    try:
        async for chunk in flight.body():
            await resp.write(chunk)
    except CachesrvError:
        if request.transport is not None:
            request.transport.abort()
        raise ConnectionResetError("upstream body failed; connection cut") from None
    await resp.write_eof()
    return resp
