"""Go module proxy documents through the app: recorded online, made from the store offline."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from cachesrv.config import Config
from cachesrv.web import make_app
from tests.fakes.goproxy import FakeGoProxy

MakeClient = Callable[..., Awaitable[TestClient[Any, Any]]]
API = "/_cachesrv/api/v1"
GREET = "example.test/greet"
PSEUDO = "v0.0.0-20240102030405-abcdefabcdef"
JSON = "application/json"


def go_config(load: Callable[..., Config], proxy: FakeGoProxy, **server: object) -> Config:
    return load({"goproxy": {"kind": "goproxy", "url": proxy.url}}, **server)


async def test_online_as_recorded_offline_from_the_store(
    aiohttp_client: MakeClient, load: Callable[..., Config]
) -> None:
    with FakeGoProxy() as proxy:
        for v in ("v1.0.0", "v1.1.0", "v1.2.0"):
            proxy.add_module(GREET, v, {"greet.go": "package greet\n"})
        proxy.add_module("example.test/Upper", PSEUDO, {"u.go": "package u\n"}, listed=False)
        online = await aiohttp_client(make_app(go_config(load, proxy)))
        listing = await online.get(f"/goproxy/{GREET}/@v/list")
        assert listing.status == 200
        assert listing.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert await listing.read() == b"v1.0.0\nv1.1.0\nv1.2.0\n"
        latest = await online.get(f"/goproxy/{GREET}/@latest")
        assert json.loads(await latest.read())["Version"] == "v1.2.0"
        for ext in ("info", "mod", "zip"):
            got = await online.get(f"/goproxy/{GREET}/@v/v1.1.0.{ext}")
            assert got.status == 200 and await got.read(), ext
        got = await online.get(f"/goproxy/example.test/!upper/@v/{PSEUDO}.zip")
        assert await got.read() == proxy.module("example.test/Upper", PSEUDO).zip
        # Not a checksum-database proxy upstream: its 404 passes through.
        assert (await online.get("/goproxy/sumdb/sum.example.test/supported")).status == 404
        await online.close()

        proxy.reset_log()
        offline = await aiohttp_client(make_app(go_config(load, proxy, mode="offline")))
        # Only the stored version is listed, and @latest names it.
        listing = await offline.get(f"/goproxy/{GREET}/@v/list")
        assert (listing.status, await listing.read()) == (200, b"v1.1.0\n")
        latest = await offline.get(f"/goproxy/{GREET}/@latest")
        assert latest.headers["Content-Type"] == "application/json"
        assert json.loads(await latest.read()) == {"Version": "v1.1.0"}
        # Never recorded, made from the store (case-encoded path as sent).
        listing = await offline.get("/goproxy/example.test/!upper/@v/list")
        assert (listing.status, await listing.read()) == (200, f"{PSEUDO}\n".encode())
        latest = await offline.get("/goproxy/example.test/!upper/@latest")
        assert json.loads(await latest.read()) == {
            "Version": PSEUDO,
            "Time": "2024-01-02T03:04:05Z",
        }
        supported = await offline.get("/goproxy/sumdb/sum.example.test/supported")
        assert (supported.status, await supported.read()) == (200, b"")
        # None of these is a miss.
        assert await (await offline.get(f"{API}/misses")).json() == []

        # Nothing stored: the usual miss, text/plain, listed by the URL asked.
        for path in ("example.test/nope/@v/list", "example.test/nope/@latest"):
            miss = await offline.get(f"/goproxy/{path}")
            assert (miss.status, miss.reason) == (404, "Not in offline seed")
            assert miss.headers["Content-Type"] == "text/plain; charset=utf-8"
            assert (await miss.text()).startswith(f"Not in offline seed\nurl:    {proxy.url}/")
        misses = await (await offline.get(f"{API}/misses")).json()
        assert sorted(m["key"] for m in misses) == [
            f"{proxy.url}/example.test/nope/@latest",
            f"{proxy.url}/example.test/nope/@v/list",
        ]
        assert proxy.count() == 0


async def test_malformed_latest_is_a_clear_502(
    aiohttp_client: MakeClient,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    load: Callable[..., Config],
) -> None:
    bodies = {"array": b"[]", "truncated": b'{"Version": "v1', "no-version": b'{"Time": "x"}'}

    async def latest(request: web.Request) -> web.Response:
        return web.Response(body=bodies[request.match_info["name"]], content_type=JSON)

    app = web.Application()
    app.router.add_get("/example.test/{name}/@latest", latest)
    server = await aiohttp_server(app)
    cfg = load({"goproxy": ("goproxy", str(server.make_url("")).rstrip("/"))})
    client = await aiohttp_client(make_app(cfg))
    for name in bodies:
        r = await client.get(f"/goproxy/example.test/{name}/@latest")
        assert r.status == 502, name
        assert "index document unreadable" in await r.text()
