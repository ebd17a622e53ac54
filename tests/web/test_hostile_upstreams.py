"""Hostile upstreams: each test is a real aiohttp upstream on 127.0.0.1 that misbehaves
one way, and what cachesrv answers (docs/reliability.md lists them with their figures).

Every case ends in a clear 502 or 504 (or a cut connection once a body was streaming),
with nothing recorded, except where the upstream's answer is a valid one (a gzip body
stored as sent).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from cachesrv.config import Config
from cachesrv.web import make_app

Client = TestClient[Any, Any]
MakeClient = Callable[..., Awaitable[Client]]
MakeServer = Callable[..., Awaitable[TestServer]]


async def entries(client: Client) -> set[str]:
    return {e["key"] for e in await (await client.get("/_cachesrv/api/v1/entries")).json()}


async def fetch(client: Client, path: str, **kw: Any) -> tuple[int, bytes | None, str]:
    """Status, body (None if the connection was cut mid-body) and reason."""
    resp = await client.get(path, **kw)
    try:
        return resp.status, await resp.read(), resp.reason or ""
    except aiohttp.ClientPayloadError:
        return resp.status, None, resp.reason or ""


def endless(chunk: bytes, pause: float = 0.0) -> Callable[[web.Request], Awaitable[Any]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        while True:
            await resp.write(chunk)
            if pause:
                await asyncio.sleep(pause)

    return handler


async def test_a_100mb_index_page_is_refused_quickly_and_nothing_is_recorded(
    aiohttp_client: MakeClient, aiohttp_server: MakeServer, load: Callable[..., Config]
) -> None:
    """A simple-index page of 100 MB with a million links, declared or not: past
    `[fetch] max_document` (32 MiB by default) the fetch ends with a 502 that names the
    setting; the page is never parsed, so time and memory stay small."""
    link = b'<a href="../../files/x-1.0-py3-none-any.whl#sha256=' + b"0" * 64 + b'">x</a>\n'
    count = 100 * 1024 * 1024 // len(link) // 1024 * 1024  # whole blocks of 1,024 links
    declared = {"yes": True, "no": False}

    async def page(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/html"})
        if declared[request.match_info["name"]]:
            resp.content_length = count * len(link)
        await resp.prepare(request)
        block = link * 1024
        for _ in range(count // 1024):
            await resp.write(block)
        return resp

    app = web.Application()
    app.router.add_get("/simple/{name}/", page)
    upstream = await aiohttp_server(app)
    client = await aiohttp_client(
        make_app(load({"pypi": ("pypi", str(upstream.make_url("/simple")))}))
    )
    for name in declared:
        started = time.monotonic()
        status, body, _ = await fetch(client, f"/pypi/simple/{name}/")
        assert status == 502 and body is not None, name
        assert b"max_document" in body and b"nothing was recorded" in body
        assert time.monotonic() - started < 30
    assert await entries(client) == set()


async def test_malformed_documents_of_every_kind_are_a_502(
    aiohttp_client: MakeClient, aiohttp_server: MakeServer, load: Callable[..., Config]
) -> None:
    bodies = {
        "/npm/left": b'{"versions": ["not", "an", "object"]}',
        "/npm/right": b"\x00\xff not json",
        "/go/example.test/m/@latest": b'{"Version": 3}',
        "/crates/config.json": b'{"dl": 42}',
        "/simple/p/": b'{"files": "nope"}',
    }
    types = {"/simple/p/": "application/vnd.pypi.simple.v1+json"}

    async def serve(request: web.Request) -> web.Response:
        path = request.path
        return web.Response(body=bodies[path], content_type=types.get(path, "application/json"))

    app = web.Application()
    for path in bodies:
        app.router.add_get(path, serve)
    up = await aiohttp_server(app)
    cfg = load(
        {
            "npm": ("npm", str(up.make_url("/npm"))),
            "go": ("goproxy", str(up.make_url("/go"))),
            "crates": ("cargo", str(up.make_url("/crates"))),
            "pypi": ("pypi", str(up.make_url("/simple"))),
        }
    )
    client = await aiohttp_client(make_app(cfg))
    asks = {
        "/npm/left": {"Accept": "application/json"},
        "/npm/right": {"Accept": "application/json"},
        "/go/example.test/m/@latest": {},
        "/crates/config.json": {},
        "/pypi/simple/p/": {"Accept": "application/vnd.pypi.simple.v1+json"},
    }
    for path, headers in asks.items():
        status, body, _ = await fetch(client, path, headers=headers)
        assert status == 502, (path, status, body)
        assert body is not None and b"index document unreadable" in body, path


async def test_a_body_that_never_ends_stops_at_max_body(
    aiohttp_client: MakeClient, aiohttp_server: MakeServer, load: Callable[..., Config]
) -> None:
    app = web.Application()
    app.router.add_get("/big.tar.gz", endless(b"x" * 65536))
    up = await aiohttp_server(app)
    cfg = load({"files": {"kind": "generic", "url": str(up.make_url("")), "max_body": "2MiB"}})
    client = await aiohttp_client(make_app(cfg))
    started = time.monotonic()
    status, body, _ = await fetch(client, "/files/big.tar.gz")
    # The client was streaming: the only honest signal left is a cut connection.
    assert status == 200 and body is None
    assert time.monotonic() - started < 30
    assert await entries(client) == set()
    # Declared too large: refused before a byte is streamed, saying which setting.
    app2 = web.Application()

    async def declared(request: web.Request) -> web.Response:
        return web.Response(body=b"y" * (3 * 1024 * 1024))

    app2.router.add_get("/declared.tar.gz", declared)
    up2 = await aiohttp_server(app2)
    cfg2 = load({"files": {"kind": "generic", "url": str(up2.make_url("")), "max_body": "2MiB"}})
    client2 = await aiohttp_client(make_app(cfg2))
    status, body, _ = await fetch(client2, "/files/declared.tar.gz")
    assert status == 502 and body is not None
    assert b"[upstreams.files] max_body" in body and b"3145728 bytes declared" in body


async def test_a_drip_feed_is_ended_by_the_minimum_rate_and_frees_its_clients(
    aiohttp_client: MakeClient, aiohttp_server: MakeServer, load: Callable[..., Config]
) -> None:
    """One byte every 0.05 s (20 B/s) against a minimum of 1 KiB/s over 1 s: the fetch
    ends after about a second, every client that joined it is released, and nothing
    is recorded. (The defaults are 1 KiB/s over 60 s.)"""
    app = web.Application()
    app.router.add_get("/slow.tar.gz", endless(b"z", pause=0.05))
    up = await aiohttp_server(app)
    raw = load({"files": ("generic", str(up.make_url("")))})
    cfg = Config(
        server=raw.server,
        upstreams=raw.upstreams,
        limits=raw.limits,
        fetch=type(raw.fetch)(min_rate=1024, rate_window=1.0),
    )
    client = await aiohttp_client(make_app(cfg))
    started = time.monotonic()
    results = await asyncio.gather(*(fetch(client, "/files/slow.tar.gz") for _ in range(5)))
    elapsed = time.monotonic() - started
    assert all(body is None for _, body, _ in results), results
    assert elapsed < 15
    assert await entries(client) == set()
    metrics = await (await client.get("/metrics")).text()
    assert 'outcome="upstream_error"' in metrics


async def test_a_flood_of_response_headers_is_a_502(
    aiohttp_client: MakeClient, load: Callable[..., Config]
) -> None:
    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\n")
        for i in range(100_000):
            writer.write(b"X-Flood-%d: %s\r\n" % (i, b"a" * 100))
        writer.write(b"Content-Length: 2\r\n\r\nok")
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(flood, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        client = await aiohttp_client(
            make_app(load({"files": ("generic", f"http://127.0.0.1:{port}")}))
        )
        status, body, _ = await fetch(client, "/files/a.tar.gz")
        assert status == 502 and body is not None
        assert await entries(client) == set()
    finally:
        server.close()
        await server.wait_closed()


async def test_a_redirect_to_a_loopback_host_not_configured_is_refused(
    aiohttp_client: MakeClient, aiohttp_server: MakeServer, load: Callable[..., Config]
) -> None:
    hits: list[str] = []

    async def target(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(body=b"secret")

    inner = web.Application()
    inner.router.add_get("/{tail:.*}", target)
    other = await aiohttp_server(inner)

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(str(other.make_url("/admin/secret.tar.gz")))

    outer = web.Application()
    outer.router.add_get("/{tail:.*}", redirect)
    up = await aiohttp_server(outer)
    client = await aiohttp_client(make_app(load({"files": ("generic", str(up.make_url("")))})))
    # The other server is on another port of the same address: a host:port not allowed.
    status, body, _ = await fetch(client, "/files/a.tar.gz")
    assert status == 502 and body is not None and b"redirected to a host not allowed" in body
    assert hits == [] and await entries(client) == set()


async def test_a_content_length_that_lies_either_way(
    aiohttp_client: MakeClient, load: Callable[..., Config]
) -> None:
    """Longer than the body: the fetch fails as truncated. Shorter: the bytes past the
    length are not a valid next response, so aiohttp's parser fails the answer as a
    whole ("Bad status line"). Either way a 502 (or a cut body), nothing recorded."""
    truth = b"0123456789" * 100
    sha = hashlib.sha256(truth).hexdigest()

    async def liar(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        path = head.split(b" ", 2)[1]
        length = len(truth) * 2 if b"long" in path else len(truth) // 2
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % length + truth)
        await writer.drain()
        writer.close()

    servers = [await asyncio.start_server(liar, "127.0.0.1", 0) for _ in range(3)]
    try:
        ports = [s.sockets[0].getsockname()[1] for s in servers]
        cfg = load({f"d{i}": ("apt", f"http://127.0.0.1:{p}") for i, p in enumerate(ports)})
        client = await aiohttp_client(make_app(cfg))
        status, body, _ = await fetch(client, "/d0/pool/long_1.0_all.deb")
        assert body is None or status == 502
        status, body, _ = await fetch(client, f"/d1/dists/x/main/by-hash/SHA256/{sha}")
        assert status == 502 or body is None
        status, body, _ = await fetch(client, "/d2/pool/short_1.0_all.deb")
        assert status == 502 or body is None
        assert await entries(client) == set()
    finally:
        for server in servers:
            server.close()
            await server.wait_closed()


async def test_a_gzip_encoded_deb_is_stored_as_sent(
    aiohttp_client: MakeClient, aiohttp_server: MakeServer, load: Callable[..., Config]
) -> None:
    deb = b"!<arch>\ndebian-binary   " + b"x" * 4000
    sent = gzip.compress(deb)

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=sent, headers={"Content-Encoding": "gzip"})

    app = web.Application()
    app.router.add_get("/{tail:.*}", serve)
    up = await aiohttp_server(app)
    client = await aiohttp_client(make_app(load({"debian": ("apt", str(up.make_url("")))})))
    first = await client.get("/debian/pool/h/hello_1.0_all.deb", auto_decompress=False)
    assert await first.read() == sent
    again = await client.get("/debian/pool/h/hello_1.0_all.deb", auto_decompress=False)
    assert again.headers["X-Cachesrv-Status"] == "hit"
    assert await again.read() == sent and "Content-Encoding" not in again.headers
    listed = await (await client.get("/_cachesrv/api/v1/entries")).json()
    assert [e["size"] for e in listed] == [len(sent)]
    assert json.dumps(listed)  # the entry is listed with the size of what was sent
