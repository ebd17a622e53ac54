"""Hostile and malformed requests: clear status and reason, nothing fetched or stored."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from cachesrv.config import Config
from cachesrv.web import make_app
from tests.fakes.upstream import FakeUpstream

MakeClient = Callable[..., Awaitable[TestClient[Any, Any]]]


async def raw(
    client: TestClient[Any, Any], request_line: str, host: str = "x"
) -> tuple[int, str, str]:
    """Send one request line as-is (clients would normalise these URLs away)."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(f"{request_line}\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode("latin-1"))
    await writer.drain()
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = data.decode("latin-1").partition("\r\n\r\n")
    status_line = head.split("\r\n", 1)[0]
    _, code, reason = status_line.split(" ", 2)
    return int(code), reason, body


@pytest.mark.parametrize(
    ("line", "status", "says"),
    [
        ("GET /debian/../etc/passwd HTTP/1.1", 400, "traversal"),
        ("GET /debian/pool/%2e%2e/%2E%2E/x HTTP/1.1", 400, "traversal"),
        ("GET /debian/pool/a%2Fb HTTP/1.1", 400, "encoded slash"),
        ("GET /debian/pool/a%00b HTTP/1.1", 400, "NUL"),
        ("GET /debian/pool//a HTTP/1.1", 400, "empty path segment"),
        ("GET /debian/" + "a" * 5000 + " HTTP/1.1", 400, "longer than"),
        ("GET /nosuch/pool/a.deb HTTP/1.1", 403, "[upstreams.nosuch]"),
        ("GET http://evil.example/x.deb HTTP/1.1", 403, "not a configured upstream"),
        ("GET http://HTTPS///evil.example/x.deb HTTP/1.1", 403, "https://evil.example/"),
        ("CONNECT deb.debian.org:443 HTTP/1.1", 403, "[tls] intercept"),
        ("CONNECT 127.1:443 HTTP/1.1", 400, "canonical IPv4"),
        ("CONNECT 0x7f.0.0.1:443 HTTP/1.1", 400, "canonical IPv4"),
        ("CONNECT 2130706433:443 HTTP/1.1", 400, "canonical IPv4"),
        ("CONNECT [::1:443 HTTP/1.1", 400, "brackets"),
        ("CONNECT " + "a" * 300 + ".example:443 HTTP/1.1", 400, "longer than"),
        ("CONNECT bad_host.example:443 HTTP/1.1", 400, "not a valid host name"),
        ("CONNECT example.org:0 HTTP/1.1", 400, "port"),
        ("CONNECT example.org HTTP/1.1", 400, "host:port"),
        ("POST /debian/pool/a.deb HTTP/1.1", 405, "GET and HEAD"),
        ("GET /@bad!seed/debian/a HTTP/1.1", 400, "seed name"),
    ],
)
async def test_hostile_requests(
    aiohttp_client: MakeClient,
    load: Callable[..., Config],
    upstream: FakeUpstream,
    line: str,
    status: int,
    says: str,
) -> None:
    client = await aiohttp_client(make_app(load({"debian": ("apt", upstream.url)})))
    code, reason, body = await raw(client, line)
    assert code == status, (code, reason, body)
    assert says in body
    assert upstream.count() == 0
    entries = await (await client.get("/_cachesrv/api/v1/entries")).json()
    assert entries == []
