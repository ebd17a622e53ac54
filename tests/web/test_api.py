"""The JSON API: open read-only endpoints, admin actions behind the bearer token."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from cachesrv.config import Config
from cachesrv.web import make_app
from tests.fakes.upstream import FakeUpstream
from tests.web.test_proxy import put

Client = TestClient[Any, Any]
MakeClient = Callable[..., Awaitable[Client]]
API = "/_cachesrv/api/v1"
TOKEN = "s3cret-token-" + "x" * 20


@pytest.fixture
async def recorded(
    aiohttp_client: MakeClient, load: Callable[..., Config], upstream: FakeUpstream
) -> tuple[Client, FakeUpstream]:
    """An online server with a token, one recorded entry (in seed `build1`) and none else."""
    put(upstream, "pool/main/h/hello/hello_1.0_all.deb", b"hello 1.0")
    config = load({"debian": ("apt", upstream.url)}, admin_token=TOKEN)
    client = await aiohttp_client(make_app(config))
    r = await client.get("/@build1/debian/pool/main/h/hello/hello_1.0_all.deb")
    assert r.status == 200 and await r.read() == b"hello 1.0"
    return client, upstream


def _admin_calls(digest: str, key: str) -> dict[str, tuple[str, str, dict[str, Any]]]:
    return {
        "mode": ("POST", f"{API}/mode", {"json": {"mode": "offline"}}),
        "delete": ("DELETE", f"{API}/entries", {"params": {"url": key}}),
        "quarantine": ("POST", f"{API}/quarantine", {"params": {"digest": digest}}),
    }


@pytest.mark.parametrize("action", ["mode", "delete", "quarantine"])
async def test_admin_actions_need_the_bearer_token(
    recorded: tuple[Client, FakeUpstream], action: str
) -> None:
    client, upstream = recorded
    entry = (await (await client.get(f"{API}/entries")).json())[0]
    method, path, kwargs = _admin_calls(entry["digest"], entry["key"])[action]
    # No token: 401, and it says how to authenticate.
    r = await client.request(method, path, **kwargs)
    assert r.status == 401
    assert "Bearer" in await r.text()
    # Not a bearer token, then a wrong one: 401, 403.
    basic = {"Authorization": "Basic Zm9vOmJhcg=="}
    r = await client.request(method, path, headers=basic, **kwargs)
    assert r.status == 401
    r = await client.request(
        method, path, headers={"Authorization": "Bearer " + "y" * len(TOKEN)}, **kwargs
    )
    assert r.status == 403
    # Nothing changed: still online, the entry is there and served.
    stats = await (await client.get(f"{API}/stats")).json()
    assert stats["mode"] == "online" and stats["entries"] == 1 and stats["quarantined"] == 0
    # The right token in the URL: refused whatever it is, and it is not logged as valid.
    for name in ("token", "access_token", "Admin_Token"):
        r = await client.request(method, f"{path}?{name}={TOKEN}", **kwargs)
        assert r.status == 400 and "never accepted in the URL" in await r.text()
        r = await client.request(
            method,
            f"{path}?{name}={TOKEN}",
            headers={"Authorization": f"Bearer {TOKEN}"},
            **kwargs,
        )
        assert r.status == 400
    # The right token: 200, and the action took effect.
    r = await client.request(method, path, headers={"Authorization": f"Bearer {TOKEN}"}, **kwargs)
    assert r.status == 200, await r.text()
    stats = await (await client.get(f"{API}/stats")).json()
    if action == "mode":
        assert await r.json() == {"mode": "offline"} and stats["mode"] == "offline"
    elif action == "delete":
        assert await r.json() == {"deleted": entry["key"]} and stats["entries"] == 0
    else:
        assert await r.json() == {"quarantined": entry["digest"]} and stats["quarantined"] == 1


async def test_admin_actions_are_refused_when_no_token_is_configured(
    aiohttp_client: MakeClient, load: Callable[..., Config], upstream: FakeUpstream
) -> None:
    client = await aiohttp_client(make_app(load({"debian": ("apt", upstream.url)})))
    for method, path, kwargs in _admin_calls("0" * 64, f"{upstream.url}/x").values():
        assert (await client.request(method, path, **kwargs)).status == 401
        r = await client.request(method, path, headers={"Authorization": "Bearer "}, **kwargs)
        assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
        r = await client.request(
            method, path, headers={"Authorization": "Bearer anything-at-all-here"}, **kwargs
        )
        assert r.status == 403
        assert "admin_token" in await r.text()


async def test_admin_actions_reject_bad_arguments(recorded: tuple[Client, FakeUpstream]) -> None:
    client, upstream = recorded
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert (await client.post(f"{API}/mode", json={"mode": "sideways"}, headers=auth)).status == 400
    assert (await client.post(f"{API}/mode", data=b"not json", headers=auth)).status == 400
    assert (await client.delete(f"{API}/entries", headers=auth)).status == 400
    r = await client.delete(f"{API}/entries", params={"url": f"{upstream.url}/nope"}, headers=auth)
    assert r.status == 404
    r = await client.post(f"{API}/quarantine", params={"digest": "xyz"}, headers=auth)
    assert r.status == 400


async def test_read_only_endpoints(recorded: tuple[Client, FakeUpstream]) -> None:
    client, upstream = recorded
    key = f"{upstream.url}/pool/main/h/hello/hello_1.0_all.deb"

    stats = await (await client.get(f"{API}/stats")).json()
    assert stats["mode"] == "online"
    assert stats["entries"] == 1 and stats["blobs"] == 1 and stats["blob_bytes"] == 9
    assert stats["by_upstream"] == {"debian": {"entries": 1, "bytes": 9}}
    assert stats["requests"]["recorded"] == 1 and stats["hit_ratio"] == 0.0
    assert stats["uptime"] >= 0

    entries = await (await client.get(f"{API}/entries")).json()
    assert [(e["key"], e["upstream"], e["size"], e["kind"]) for e in entries] == [
        (key, "debian", 9, "immutable")
    ]
    assert len(entries[0]["digest"]) == 64 and len(entries[0]["sha256"]) == 64
    prefixed = await (await client.get(f"{API}/entries", params={"prefix": key[:-8]})).json()
    assert [e["key"] for e in prefixed] == [key]
    other = await client.get(f"{API}/entries", params={"prefix": "http://elsewhere/"})
    assert await other.json() == []
    assert (await client.get(f"{API}/entries", params={"limit": "many"})).status == 400

    seeds = await (await client.get(f"{API}/seeds")).json()
    assert seeds == [{"name": "build1", "entries": 1, "bytes": 9, "dangling": 0}]

    assert await (await client.get(f"{API}/misses")).json() == []
    assert (await client.get(f"{API}/misses", params={"since": "yesterday"})).status == 400

    # Read-only endpoints answer JSON and accept no writes.
    for name in ("stats", "misses", "seeds", "entries"):
        r = await client.get(f"{API}/{name}")
        assert r.status == 200 and r.content_type == "application/json"
    r = await client.put(f"{API}/stats")
    assert r.status == 405 and r.headers["Allow"] == "GET, HEAD"
    assert (await client.post("/metrics")).status == 405
    assert (await client.get("/_cachesrv/api/v1/nothing")).status == 404
    assert (await client.get("/_cachesrv/")).status == 404


async def test_misses_endpoint_lists_offline_misses(
    aiohttp_client: MakeClient, load: Callable[..., Config], upstream: FakeUpstream
) -> None:
    client = await aiohttp_client(make_app(load({"debian": ("apt", upstream.url)}, mode="offline")))
    for _ in range(2):
        assert (await client.get("/debian/pool/main/x/x_1_all.deb")).status == 404
    misses = await (await client.get(f"{API}/misses")).json()
    assert [(m["key"], m["count"], m["reason"]) for m in misses] == [
        (f"{upstream.url}/pool/main/x/x_1_all.deb", 2, "never_recorded")
    ]
    later = await client.get(f"{API}/misses", params={"since": str(misses[0]["last"] + 1)})
    assert await later.json() == []
