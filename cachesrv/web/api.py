"""Prometheus metrics and the JSON API under `/_cachesrv/api/v1/` (and the routes of
the status page, which lives in `status.py`).

Read-only endpoints (`stats`, `misses`, `seeds`, `entries`) are open; admin actions
(`POST mode`, `DELETE entries`, `POST quarantine`) need `Authorization: Bearer <token>`
with `server.admin_token` from the config: 401 without it, 403 when wrong (or when
no token is configured, so admin actions are off by default).
"""

from __future__ import annotations

import hmac
import time
from typing import Any

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from ..errors import AccessDenied, BadRequest, MethodNotAllowed, NotFound, Unauthorized
from ..metrics import CONTENT_TYPE
from ..models import Digest, Mode
from ..sources.offline import expired_releases
from .keys import STATE
from .status import status_page

API = "/_cachesrv/api/v1"


def add_routes(app: web.Application) -> None:
    """cachesrv's own pages. Add them before the proxy's catch-all route: anything
    else under `/_cachesrv/` is a 404 (or 405), never a proxy request."""
    for method, path, handler in _routes():
        if method == "GET":
            app.router.add_get(path, _no_token_in_url(handler))  # and HEAD
        else:
            app.router.add_route(method, path, _no_token_in_url(handler))
    app.router.add_route("*", "/metrics", _fallback)
    app.router.add_route("*", "/_cachesrv/{tail:.*}", _fallback)


async def ca_certificate(request: web.Request) -> web.Response:
    """The local CA's certificate (public), for clients of a shared mirror to trust;
    `cachesrv wrap --server` fetches it. The key is never served."""
    return web.Response(
        body=request.app[STATE].ca.pem(),
        content_type="application/x-pem-file",
        headers={"Content-Disposition": 'attachment; filename="cachesrv-ca.pem"'},
    )


def _routes() -> list[tuple[str, str, Handler]]:
    return [
        ("GET", "/_cachesrv/status", status_page),
        ("GET", "/metrics", metrics),
        ("GET", "/_cachesrv/ca.pem", ca_certificate),
        ("GET", f"{API}/stats", stats),
        ("GET", f"{API}/misses", misses),
        ("GET", f"{API}/seeds", seeds),
        ("GET", f"{API}/entries", entries),
        ("POST", f"{API}/mode", set_mode),
        ("DELETE", f"{API}/entries", delete_entry),
        ("POST", f"{API}/quarantine", quarantine),
    ]


async def _fallback(request: web.Request) -> web.StreamResponse:
    allowed = {m for m, path, _ in _routes() if path == request.path}
    if not allowed:
        raise NotFound(f"no such page: {request.path} (see /_cachesrv/status)")
    if "GET" in allowed:
        allowed.add("HEAD")
    raise MethodNotAllowed(
        f"{request.method} {request.path}: use {', '.join(sorted(allowed))}",
        allowed=tuple(sorted(allowed)),
    )


async def _stats(request: web.Request) -> dict[str, Any]:
    state = request.app[STATE]
    idx = state.store.index
    data = await idx.run(idx.stats)
    data["mode"] = state.mode.value
    data["uptime"] = round(time.time() - state.started, 1)
    data["requests"] = {o.value: int(n) for o, n in state.metrics.outcome_totals().items()}
    data["hit_ratio"] = state.metrics.hit_ratio()
    data["space"] = await idx.run(state.store.lifecycle.space)
    return data


async def stats(request: web.Request) -> web.Response:
    return web.json_response(await _stats(request))


async def misses(request: web.Request) -> web.Response:
    idx = request.app[STATE].store.index
    since = _number(request, "since", 0.0)
    return web.json_response(await idx.run(idx.misses, since))


async def seeds(request: web.Request) -> web.Response:
    idx = request.app[STATE].store.index
    return web.json_response(await idx.run(idx.seeds))


async def entries(request: web.Request) -> web.Response:
    idx = request.app[STATE].store.index
    prefix = request.query.get("prefix", "")
    limit = min(int(_number(request, "limit", 1000)), 10000)
    found = await idx.run(idx.entries, prefix, limit)
    return web.json_response(
        [
            {
                "key": e.key.url,
                "upstream": e.key.upstream,
                "digest": e.digest.hex,
                "size": e.size,
                "sha256": e.sha256,
                "kind": e.kind.value,
                "content_type": e.content_type,
                "recorded": e.recorded,
                "validated": e.validated,
            }
            for e in found
        ]
    )


async def metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    idx = state.store.index
    state.metrics.update_store(await idx.run(idx.stats), offline=state.mode is Mode.OFFLINE)
    state.metrics.update_space(await idx.run(state.store.lifecycle.space))
    expired = await idx.run(
        expired_releases, state.store, state.config.upstreams.values(), time.time()
    )
    state.metrics.expired_releases.set(len(expired))
    return web.Response(
        body=state.metrics.render(),
        headers={hdrs.CONTENT_TYPE: CONTENT_TYPE, "X-Content-Type-Options": "nosniff"},
    )


def _number(request: web.Request, name: str, default: float) -> float:
    text = request.query.get(name, "")
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise BadRequest(f"?{name}= must be a number, not {text!r}") from None
    if value < 0 or value != value:
        raise BadRequest(f"?{name}= must not be negative")
    return value


#: Query parameters that look like credentials: refused on every page of cachesrv's.
_TOKEN_PARAMS = frozenset({"token", "access_token", "admin_token", "auth", "authorization"})


def _no_token_in_url(handler: Handler) -> Handler:
    """Refuse a credential in the query string, on every endpoint: a URL ends up in
    access logs, shell histories and proxies' logs. Tokens go in `Authorization`."""

    async def checked(request: web.Request) -> web.StreamResponse:
        if any(name.lower() in _TOKEN_PARAMS for name in request.query):
            raise BadRequest(
                "a token is never accepted in the URL (it would end up in logs and "
                "histories); send it as Authorization: Bearer <server.admin_token>"
            )
        return await handler(request)

    return checked


def _require_admin(request: web.Request) -> None:
    token = request.app[STATE].config.server.admin_token
    scheme, _, given = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise Unauthorized("admin action: send Authorization: Bearer <server.admin_token>")
    # Constant-time comparison, so the token cannot be guessed byte by byte.
    if token is None or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise AccessDenied("admin token is wrong (or server.admin_token is not configured)")


async def set_mode(request: web.Request) -> web.Response:
    _require_admin(request)
    try:
        body = await request.json()
        mode = Mode(body["mode"])
    except (ValueError, KeyError, TypeError):
        raise BadRequest('body must be {"mode": "online"} or {"mode": "offline"}') from None
    request.app[STATE].set_mode(mode)
    return web.json_response({"mode": mode.value})


async def delete_entry(request: web.Request) -> web.Response:
    _require_admin(request)
    url = request.query.get("url")
    if not url:
        raise BadRequest("give the entry's key as ?url=")
    idx = request.app[STATE].store.index
    if not await idx.run(idx.delete, url):
        raise NotFound(f"no entry for {url}")
    return web.json_response({"deleted": url})


async def quarantine(request: web.Request) -> web.Response:
    _require_admin(request)
    try:
        digest = Digest(request.query.get("digest", ""))
    except ValueError:
        raise BadRequest("give a blake3 digest as ?digest=<64 hex>") from None
    state = request.app[STATE]
    idx = state.store.index
    await idx.run(idx.set_quarantined, digest)
    state.store.blobs.quarantine(digest)
    return web.json_response({"quarantined": digest.hex})
