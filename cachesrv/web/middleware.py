"""One middleware maps domain errors to HTTP answers.

Clients print the reason phrase, not the body (apt, pip, uv), so every error's
reason phrase says what happened; the body says it at length.
"""

from __future__ import annotations

import json
import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from ..errors import CachesrvError, MethodNotAllowed, NotCached, UpstreamError, UpstreamTimeout

log = logging.getLogger("cachesrv.web")

MISS_STATUS_HEADER = "X-Cachesrv-Status"


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        if request.method == "CONNECT":
            raise MethodNotAllowed(
                "CONNECT tunnels cannot be cached; write https:// sources as "
                "http://HTTPS///host/path so they reach cachesrv in plain HTTP"
            )
        return await handler(request)
    except NotCached as exc:
        return miss_response(request, exc)
    except CachesrvError as exc:
        return error_response(request, exc)


def miss_response(request: web.Request, exc: NotCached) -> web.Response:
    d = exc.diagnosis
    headers = {MISS_STATUS_HEADER: "offline-miss"}
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
