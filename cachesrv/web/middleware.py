"""One middleware maps domain errors to HTTP answers, and counts every proxy request.

Clients print the reason phrase, not the body (apt, pip, uv), so every error's
reason phrase says what happened; the body says it at length.

The proxy handler stashes the upstream and the `Outcome` of an answered request
on the request (`OUTCOME`, `UPSTREAM`); this middleware does the same for errors
(offline miss, refused, upstream error) and counts the outcome in the metrics,
so every proxy request is counted exactly once, here. The access logger reads
the same two keys.
"""

from __future__ import annotations

import json
import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from ..errors import (
    CachesrvError,
    InsufficientStorage,
    MethodNotAllowed,
    NotCached,
    Unauthorized,
    UpstreamError,
    UpstreamStatus,
    UpstreamTimeout,
)
from ..sources.base import Outcome
from .keys import STATE
from .target import names_this_server

log = logging.getLogger("cachesrv.web")

MISS_STATUS_HEADER = "X-Cachesrv-Status"
#: Request keys: the `Outcome` of a proxy request and the upstream's name.
OUTCOME = web.RequestKey("cachesrv.outcome", Outcome)
UPSTREAM = web.RequestKey("cachesrv.upstream", str)
#: Where cachesrv's own pages live (with `/metrics`); these are not proxy requests.
INTERNAL_PREFIX = "/_cachesrv/"


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except NotCached as exc:
        request[OUTCOME] = Outcome.OFFLINE_MISS
        request.setdefault(UPSTREAM, exc.diagnosis.key.upstream)
        return miss_response(request, exc)
    except CachesrvError as exc:
        if not is_internal(request):
            request[OUTCOME] = outcome_of(exc)
            if isinstance(exc, UpstreamError | UpstreamStatus):
                request.setdefault(UPSTREAM, exc.upstream)
        return error_response(request, exc)
    finally:
        outcome = request.get(OUTCOME)
        if outcome is not None:
            request.app[STATE].metrics.count(outcome, request.get(UPSTREAM, ""))


def is_internal(request: web.Request) -> bool:
    """Whether the request is for cachesrv's own pages rather than an upstream."""
    if is_proxy_request(request):
        return False
    path = request.path
    return path == "/metrics" or path.startswith(INTERNAL_PREFIX)


def is_proxy_request(request: web.Request) -> bool:
    """A request in proxy form (an absolute URL of another host) or inside a CONNECT
    tunnel: its path is the upstream's, whatever it looks like (`/metrics` is an
    upstream's too). An absolute URL naming this server is the path it names."""
    target = request.raw_path
    if target.startswith("/"):
        return request.protocol in request.app[STATE].tunnels
    return not names_this_server(request, target)


def outcome_of(exc: CachesrvError) -> Outcome:
    """How an error answer counts: the upstream failed, passed its own 4xx through,
    or cachesrv refused the request (not a configured upstream, bad URL, method)."""
    if isinstance(exc, NotCached):
        return Outcome.OFFLINE_MISS
    if isinstance(exc, InsufficientStorage):
        return Outcome.INSUFFICIENT_STORAGE
    if isinstance(exc, UpstreamError):
        return Outcome.UPSTREAM_ERROR
    if isinstance(exc, UpstreamStatus):
        return Outcome.PASSTHROUGH
    return Outcome.REFUSED


def miss_response(request: web.Request, exc: NotCached) -> web.Response:
    d = exc.diagnosis
    headers = {MISS_STATUS_HEADER: "offline-miss", **exc.headers}
    if exc.body is not None:
        resp = web.Response(status=404, reason=exc.reason, body=exc.body, headers=headers)
        if exc.content_type:
            # Set verbatim: snapd parses an error body only if it is exactly application/json.
            resp.headers["Content-Type"] = exc.content_type
        return resp
    if _wants_json(request):
        return web.Response(
            status=404,
            reason=exc.reason,
            text=json.dumps(d.as_json(), indent=2) + "\n",
            content_type="application/json",
            headers=headers,
        )
    return web.Response(status=404, reason=exc.reason, text=d.as_text(), headers=headers)


def error_response(request: web.Request, exc: CachesrvError) -> web.Response:
    reason = exc.reason
    if isinstance(exc, UpstreamTimeout):
        reason = f"Upstream {exc.upstream} timed out"
    elif isinstance(exc, UpstreamError):
        reason = f"Upstream {exc.upstream} failed"
    headers = {MISS_STATUS_HEADER: type(exc).__name__}
    if isinstance(exc, MethodNotAllowed):
        headers["Allow"] = ", ".join(exc.allowed)
    elif isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="cachesrv admin"'
    if _wants_json(request):
        body = json.dumps({"error": reason, "detail": str(exc)}) + "\n"
        return web.Response(
            status=exc.status,
            reason=_ascii(reason),
            text=body,
            content_type="application/json",
            headers=headers,
        )
    return web.Response(
        status=exc.status, reason=_ascii(reason), text=str(exc) + "\n", headers=headers
    )


def _wants_json(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return "application/json" in accept and "text/html" not in accept.split(",")[0]


def _ascii(text: str) -> str:
    return text.encode("ascii", "replace").decode().replace("\r", " ").replace("\n", " ")
