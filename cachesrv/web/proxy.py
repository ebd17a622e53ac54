"""The proxy handler: resolve, ask the source, serve what it answers."""

from __future__ import annotations

import contextlib
import os

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from ..errors import CachesrvError, InsufficientStorage, MethodNotAllowed
from ..sources.base import Answer, Generated, Request, Stored, Streaming
from ..upstreams import git
from ..upstreams.router import Route
from .connect import connect
from .keys import STATE
from .middleware import MISS_STATUS_HEADER, OUTCOME, UPSTREAM, is_proxy_request, outcome_of
from .sendfile import BlobGone, BlobResponse
from .target import request_target


@web.middleware
async def proxy_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Proxy-form requests, CONNECT and requests inside a tunnel go to the proxy
    whatever their path: routing by path would send an upstream's `/metrics` or
    `/_cachesrv/...` to cachesrv's own pages. A CONNECT target is an authority,
    which no route matches anyway."""
    if request.method == hdrs.METH_CONNECT:
        return await connect(request)
    if is_proxy_request(request):
        return await proxy(request)
    return await handler(request)


async def proxy(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    # raw_path is the request target as sent: a path, or a whole URL in absolute form
    # (made origin-form when it names this server; seed from proxy credentials; inside a
    # CONNECT tunnel, the https:// URL: target.py).
    target = request_target(request, state.tunnels)
    route = state.router.resolve(target)
    body = None
    if request.method == hdrs.METH_POST and (
        route.upstream.kind == "snap" or git.endpoint(route.path) == "upload-pack"
    ):
        # The snap store API answers refresh actions to POSTs (see sources/snapstore.py), git
        # upload-pack its requests (sources/githttp.py). aiohttp has undone any gzip encoding.
        body = await request.read()
    elif request.method not in (hdrs.METH_GET, hdrs.METH_HEAD):
        raise MethodNotAllowed(f"{request.method} is not supported; cachesrv serves GET and HEAD")
    request[UPSTREAM] = route.upstream.name
    ask = Request(
        route=route,
        method=request.method,
        user_agent=request.headers.get(hdrs.USER_AGENT),
        accept=request.headers.get(hdrs.ACCEPT),
        needs_complete=request.method == hdrs.METH_HEAD or hdrs.RANGE in request.headers,
        body=body,
        headers=tuple(request.headers.items()),
        served=_served_root(request, target, route),
    )
    answer = await state.source.open(ask)
    for attempt in range(BLOB_RETRIES + 1):
        try:
            return await respond(request, answer)
        except FlightEnded:
            # The fetch ended, recorded, between its answer and the send: ask again,
            # which answers from the store.
            answer = await state.source.open(ask)
            continue
        except BlobGone as exc:
            # Evicted (or collected) since the lookup, before a byte was sent: ask again.
            # Its entry is gone now, so the body is fetched anew (online) or missed.
            assert isinstance(answer, Stored)
            if attempt == BLOB_RETRIES:
                # Evicted each time before it could be sent: the store cannot hold the
                # bodies being fetched at once (the same cause as a 507 from make_room).
                raise InsufficientStorage(
                    f"{answer.entry.key.url} was evicted {attempt + 1} times before it could "
                    f"be sent ({exc}): [store] max_size is too small for the bodies fetched "
                    "at once"
                ) from None
            state.store.hot.invalidate(answer.entry.key.url)
            answer = await state.source.open(ask)
    return await respond(request, answer)


#: How many times a request is asked again when the blob it was answered from went away
#: before it could be sent (`sendfile.BlobGone`), or its fetch ended (`FlightEnded`).
BLOB_RETRIES = 2


class FlightEnded(Exception):
    """The fetch a `Streaming` answer named ended before this client took its body;
    nothing was sent (see `Flight.reader`)."""


async def respond(request: web.Request, answer: Answer) -> web.StreamResponse:
    """Serve what the source answered. A stored blob is sent here (not by aiohttp once
    the handler returns), so that `BlobGone` reaches the caller while nothing is sent."""
    request[OUTCOME] = answer.outcome  # counted by the middleware, logged by the access log
    if isinstance(answer, Stored):
        state = request.app[STATE]
        state.store.note_access(answer.entry.key.url)  # LRU order, written in batches
        if answer.hot is not None and answer.hot.body is not None and not _conditional(request):
            return serve_from_memory(answer)
        resp = serve_stored(answer)
        with contextlib.suppress(ConnectionError):  # the client went away: not our error
            await resp.prepare(request)
        return resp
    if isinstance(answer, Generated):
        return web.Response(
            status=answer.status,
            body=answer.body,
            headers={
                hdrs.CONTENT_TYPE: answer.content_type,
                hdrs.VARY: "Accept",
                MISS_STATUS_HEADER: answer.outcome.value,
                **dict(answer.headers),
            },
        )
    return await serve_streaming(request, answer)


def _served_root(request: web.Request, target: str, route: Route) -> str | None:
    """The upstream's root URL as this client reaches it (`Request.served`): for an
    origin-form `/[@seed/]NAME/...` request, this server's URL as the client wrote it."""
    seed = f"@{route.seed}/" if route.seed else ""
    prefix = f"/{seed}{route.upstream.name}/"
    if not target.startswith(prefix):
        return None  # proxy form, a tunnel, or apt-cacher-ng's /HTTPS/// form
    # `url.origin()` keeps the port of a proxy-form URL naming this server, which
    # `request.host` drops.
    return f"{request.url.origin()}{prefix}"


_CONDITIONAL = (
    hdrs.RANGE,
    hdrs.IF_RANGE,
    hdrs.IF_NONE_MATCH,
    hdrs.IF_MODIFIED_SINCE,
    hdrs.IF_MATCH,
    hdrs.IF_UNMODIFIED_SINCE,
)


def _conditional(request: web.Request) -> bool:
    headers = request.headers
    return any(h in headers for h in _CONDITIONAL)


def serve_from_memory(answer: Stored) -> web.Response:
    """A small hit from the hot cache: no file open, no thread. Same ETag and
    Last-Modified as FileResponse would send, so conditionals agree across paths;
    conditional and Range requests take the FileResponse path."""
    hot = answer.hot
    assert hot is not None and hot.body is not None
    etag, last_modified = hot.validators
    return web.Response(
        body=hot.body,
        headers={
            hdrs.CONTENT_TYPE: hot.entry.content_type,
            hdrs.ETAG: etag,
            hdrs.LAST_MODIFIED: last_modified,
            hdrs.ACCEPT_RANGES: "bytes",
            MISS_STATUS_HEADER: answer.outcome.value,
            "X-Cachesrv-Digest": hot.entry.digest.hex,
        },
    )


def serve_stored(answer: Stored) -> BlobResponse:
    """A committed blob: sendfile, Range, HEAD and conditional requests by aiohttp."""
    entry = answer.entry
    return BlobResponse(
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
    honest signal left is to cut the connection, so the client sees a broken body.

    Neither that cut nor a client that goes away is an error of the server's: the
    response is returned, aiohttp finds the connection closed and logs the request
    (with its outcome) in the access log only, not as an ERROR with a traceback (the
    soak made 25,000 of those in 30 minutes)."""
    flight = answer.flight
    fd = flight.reader()  # before any await: the flight may end meanwhile
    if fd is None:
        failed = flight.result.exception() if flight.result.done() else None
        if failed is not None:
            raise failed  # nothing sent yet: a clean 502 (or 504, 507) instead of a cut
        raise FlightEnded(flight.route.url)
    resp = web.StreamResponse(
        status=200,
        headers={hdrs.CONTENT_TYPE: flight.content_type, MISS_STATUS_HEADER: answer.outcome.value},
    )
    if flight.content_length is not None:
        resp.content_length = flight.content_length
    try:
        await resp.prepare(request)
        async for chunk in flight.body(fd):
            await resp.write(chunk)
        await resp.write_eof()
    except CachesrvError as exc:
        request[OUTCOME] = outcome_of(exc)
        if request.transport is not None:
            request.transport.abort()
    except ConnectionError:
        pass  # the client went away; the fetch goes on for the store and other clients
    finally:
        os.close(fd)
    return resp
