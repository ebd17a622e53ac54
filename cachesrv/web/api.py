"""Status page, Prometheus metrics and the JSON API under `/_cachesrv/api/v1/`.

Read-only endpoints are open; admin actions need `Authorization: Bearer <token>`
with `server.admin_token` from the config (401 without, 403 when wrong).
"""

from __future__ import annotations

import hmac
import time
from typing import Any

from aiohttp import web

from ..errors import AccessDenied, BadRequest, NotFound, Unauthorized
from ..models import Digest, Mode
from .keys import STATE

API = "/_cachesrv/api/v1"


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/_cachesrv/status", status_page)
    r.add_get("/metrics", metrics)
    r.add_get(f"{API}/stats", stats)
    r.add_get(f"{API}/misses", misses)
    r.add_get(f"{API}/seeds", seeds)
    r.add_get(f"{API}/entries", entries)
    r.add_post(f"{API}/mode", set_mode)
    r.add_delete(f"{API}/entries", delete_entry)
    r.add_post(f"{API}/quarantine", quarantine)


async def _stats(request: web.Request) -> dict[str, Any]:
    state = request.app[STATE]
    idx = state.store.index
    data = await idx.run(idx.stats)
    data["mode"] = state.mode.value
    data["uptime"] = round(time.time() - state.started, 1)
    return data


async def stats(request: web.Request) -> web.Response:
    return web.json_response(await _stats(request))


async def misses(request: web.Request) -> web.Response:
    idx = request.app[STATE].store.index
    since = float(request.query.get("since", "0") or 0)
    return web.json_response(await idx.run(idx.misses, since))


async def seeds(request: web.Request) -> web.Response:
    idx = request.app[STATE].store.index
    return web.json_response(await idx.run(idx.seeds))


async def entries(request: web.Request) -> web.Response:
    idx = request.app[STATE].store.index
    prefix = request.query.get("prefix", "")
    limit = min(int(request.query.get("limit", "1000")), 10000)
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
    data = await idx.run(idx.stats)
    state.metrics.store_bytes.set(data["blob_bytes"])
    for upstream, row in data["by_upstream"].items():
        state.metrics.store_entries.labels(upstream).set(row["entries"])
    return web.Response(
        body=state.metrics.render(),
        content_type="text/plain",
        charset="utf-8",
        headers={"X-Content-Type-Options": "nosniff"},
    )


async def status_page(request: web.Request) -> web.Response:
    data = await _stats(request)
    rows = "".join(
        f"<tr><td>{name}</td><td>{row['entries']}</td><td>{row['bytes']}</td></tr>"
        for name, row in sorted(data["by_upstream"].items())
    )
    html = (
        "<!doctype html><html><head><meta charset=utf-8><title>cachesrv status</title></head>"
        f"<body><h1>cachesrv</h1><p>mode: <b>{data['mode']}</b></p>"
        f"<p>{data['entries']} entries, {data['blob_bytes']} bytes in {data['blobs']} blobs</p>"
        f"<table><tr><th>upstream</th><th>entries</th><th>bytes</th></tr>{rows}</table>"
        "</body></html>"
    )
    return web.Response(text=html, content_type="text/html")


def _require_admin(request: web.Request) -> None:
    token = request.app[STATE].config.server.admin_token
    given = request.headers.get("Authorization", "")
    if not given.startswith("Bearer "):
        raise Unauthorized("admin action: send Authorization: Bearer <server.admin_token>")
    if token is None or not hmac.compare_digest(given[7:].strip(), token):
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
