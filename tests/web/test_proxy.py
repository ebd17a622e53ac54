"""The recording proxy, in-process, against a real fake upstream on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from cachesrv.config import Config
from cachesrv.web import make_app
from tests.fakes.upstream import FakeUpstream, Fault

Client = TestClient[Any, Any]
MakeClient = Callable[..., Awaitable[Client]]


def put(up: FakeUpstream, rel: str, data: bytes) -> bytes:
    path = up.root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


async def client_for(aiohttp_client: MakeClient, config: Config) -> Client:
    return await aiohttp_client(make_app(config))


async def test_records_then_serves_immutable_without_asking(
    aiohttp_client: MakeClient, load: Callable[..., Config], upstream: FakeUpstream
) -> None:
    body = put(upstream, "pool/main/h/hello/hello_1.0_all.deb", os.urandom(300_000))
    client = await client_for(aiohttp_client, load({"debian": ("apt", upstream.url)}))
    r1 = await client.get("/debian/pool/main/h/hello/hello_1.0_all.deb")
    assert r1.status == 200 and r1.headers["X-Cachesrv-Status"] == "recorded"
    assert await r1.read() == body
    r2 = await client.get("/debian/pool/main/h/hello/hello_1.0_all.deb")
    assert r2.status == 200 and r2.headers["X-Cachesrv-Status"] == "hit"
    assert await r2.read() == body
    assert upstream.count("/pool/") == 1


async def test_absolute_form_and_https_form_share_one_key(
    aiohttp_client: MakeClient, load: Callable[..., Config], upstream: FakeUpstream
) -> None:
    body = put(upstream, "pool/a.deb", b"deb bytes")
    client = await client_for(aiohttp_client, load({"debian": ("apt", upstream.url)}))
    assert await (await client.get("/debian/pool/a.deb")).read() == body
    host = upstream.url.split("://", 1)[1]
    # Absolute-form target, as apt sends it through Acquire::http::Proxy.
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(f"GET {upstream.url}/pool/a.deb HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"X-Cachesrv-Status: hit" in head
    writer.close()
    await writer.wait_closed()
    assert upstream.count("/pool/") == 1


async def test_mutable_metadata_is_revalidated_and_served_stale_when_upstream_fails(
    aiohttp_client: MakeClient, load: Callable[..., Config], upstream: FakeUpstream
) -> None:
    put(upstream, "dists/stable/InRelease", b"release v1")
    client = await client_for(aiohttp_client, load({"debian": ("apt", upstream.url)}))
    r = await client.get("/debian/dists/stable/InRelease")
    assert r.headers["X-Cachesrv-Status"] == "recorded" and await r.read() == b"release v1"
    r = await client.get("/debian/dists/stable/InRelease")
    assert r.headers["X-Cachesrv-Status"] == "revalidated" and await r.read() == b"release v1"
    conditional = upstream.requests[-1]
    assert "If-None-Match" in conditional.headers and conditional.status == 304
    # A changed upstream file replaces the entry.
    put(upstream, "dists/stable/InRelease", b"release v2 longer")
    r = await client.get("/debian/dists/stable/InRelease")
    assert r.headers["X-Cachesrv-Status"] == "recorded" and await r.read() == b"release v2 longer"
    upstream.faults["/dists/stable/InRelease"] = Fault.status(503)
    r = await client.get("/debian/dists/stable/InRelease")
    assert r.status == 200 and r.headers["X-Cachesrv-Status"] == "stale"
    assert await r.read() == b"release v2 longer"
    metrics = await (await client.get("/metrics")).text()
    assert 'cachesrv_stale_served_total{upstream="debian"} 1.0' in metrics


async def test_single_flight_20_clients_one_upstream_request(
    aiohttp_client: MakeClient, load: Callable[..., Config], upstream: FakeUpstream
) -> None:
    body = put(upstream, "pool/big.tar.gz", os.urandom(30 * 1024 * 1024))
    upstream.faults["/pool/big.tar.gz"] = Fault.slow(chunk_size=1024 * 1024, delay=0.02)
    client = await client_for(aiohttp_client, load({"files": ("generic", upstream.url)}))

    async def get() -> bytes:
        r = await client.get("/files/pool/big.tar.gz")
        assert r.status == 200
        return await r.read()

    bodies = await asyncio.gather(*(get() for _ in range(20)))
    want = hashlib.sha256(body).hexdigest()
    assert all(hashlib.sha256(b).hexdigest() == want for b in bodies)
    assert upstream.count("/pool/big.tar.gz") == 1


async def test_truncated_body_fails_client_and_is_not_recorded(
    aiohttp_client: MakeClient, load: Callable[..., Config], upstream: FakeUpstream
) -> None:
    body = put(upstream, "pool/t.tar.gz", os.urandom(2_000_000))
    upstream.faults["/pool/t.tar.gz"] = Fault.truncate(times=1)
    config = load({"files": ("generic", upstream.url)})
    client = await client_for(aiohttp_client, config)
    r = await client.get("/files/pool/t.tar.gz")
    failed = False
    try:
        got = await r.read()
        failed = got != body
    except Exception:
        failed = True
    assert failed, "a truncated upstream body must not reach the client complete"
    entries = await (await client.get("/_cachesrv/api/v1/entries")).json()
    assert entries == []
    assert list((config.store / "tmp").iterdir()) == []
    r = await client.get("/files/pool/t.tar.gz")
    assert r.status == 200 and await r.read() == body
    assert upstream.count("/pool/t.tar.gz") == 2


async def test_upstream_500_is_502_naming_upstream_and_not_recorded(
    aiohttp_client: MakeClient, load: Callable[..., Config], upstream: FakeUpstream
) -> None:
    put(upstream, "pool/x.tar.gz", b"x")
    upstream.faults["/pool/x.tar.gz"] = Fault.status(500)
    client = await client_for(aiohttp_client, load({"files": ("generic", upstream.url)}))
    r = await client.get("/files/pool/x.tar.gz")
    assert r.status == 502 and r.reason == "Upstream files failed"
    assert "answered 500" in await r.text()
    assert await (await client.get("/_cachesrv/api/v1/entries")).json() == []


async def test_upstream_down_is_502(
    aiohttp_client: MakeClient, load: Callable[..., Config], upstream: FakeUpstream
) -> None:
    url = upstream.url
    upstream.stop()
    client = await client_for(aiohttp_client, load({"files": ("generic", url)}))
    r = await client.get("/files/pool/x.tar.gz")
    assert r.status == 502 and "cannot connect" in await r.text()


async def test_by_hash_mismatch_is_not_recorded(
    aiohttp_client: MakeClient, load: Callable[..., Config], upstream: FakeUpstream
) -> None:
    good = b"Package: hello\n"
    sha = hashlib.sha256(good).hexdigest()
    rel = f"dists/stable/main/binary-all/by-hash/SHA256/{sha}"
    put(upstream, rel, good)
    upstream.faults["/" + rel] = Fault.lie(times=1)
    client = await client_for(aiohttp_client, load({"debian": ("apt", upstream.url)}))
    r = await client.get(f"/debian/{rel}")
    try:
        got: bytes | None = await r.read()
    except Exception:
        got = None
    assert got != good
    assert await (await client.get("/_cachesrv/api/v1/entries")).json() == []
    r = await client.get(f"/debian/{rel}")
    assert r.status == 200 and await r.read() == good
    entries = await (await client.get("/_cachesrv/api/v1/entries")).json()
    assert [e["sha256"] for e in entries] == [sha]


async def test_hits_support_head_range_and_conditionals(
    aiohttp_client: MakeClient, load: Callable[..., Config], upstream: FakeUpstream
) -> None:
    body = put(upstream, "pool/r.tar.gz", os.urandom(100_000))
    client = await client_for(aiohttp_client, load({"files": ("generic", upstream.url)}))
    # HEAD and Range on an uncached file fetch it whole first.
    h = await client.head("/files/pool/r.tar.gz")
    assert h.status == 200 and int(h.headers["Content-Length"]) == len(body)
    r = await client.get("/files/pool/r.tar.gz", headers={"Range": "bytes=10-19"})
    assert r.status == 206 and await r.read() == body[10:20]
    full = await client.get("/files/pool/r.tar.gz")
    etag, lm = full.headers["ETag"], full.headers["Last-Modified"]
    assert (await client.get("/files/pool/r.tar.gz", headers={"If-None-Match": etag})).status == 304
    ims = await client.get("/files/pool/r.tar.gz", headers={"If-Modified-Since": lm})
    assert ims.status == 304
    assert upstream.count("/pool/") == 1


async def test_offline_serves_hits_and_explains_misses(
    aiohttp_client: MakeClient, load: Callable[..., Config], upstream: FakeUpstream
) -> None:
    body = put(upstream, "pool/main/h/hello/hello_1.0_all.deb", b"hello 1.0")
    online = await client_for(aiohttp_client, load({"debian": ("apt", upstream.url)}))
    assert await (await online.get("/debian/pool/main/h/hello/hello_1.0_all.deb")).read() == body
    await online.close()
    upstream.reset_log()
    offline = await client_for(
        aiohttp_client, load({"debian": ("apt", upstream.url)}, mode="offline")
    )
    r = await offline.get("/debian/pool/main/h/hello/hello_1.0_all.deb")
    assert r.status == 200 and await r.read() == body
    miss = await offline.get("/debian/pool/main/h/hello/hello_2.0_all.deb")
    assert miss.status == 404 and miss.reason == "Not in offline seed"
    assert miss.headers["X-Cachesrv-Status"] == "offline-miss"
    text = await miss.text()
    key = f"{upstream.url}/pool/main/h/hello/hello_2.0_all.deb"
    assert key in text and "never recorded" in text
    assert f"{upstream.url}/pool/main/h/hello/hello_1.0_all.deb" in text  # nearest
    assert f"cachesrv prefetch {key}" in text
    js = await (
        await offline.get(
            "/debian/pool/main/h/hello/hello_2.0_all.deb", headers={"Accept": "application/json"}
        )
    ).json()
    assert js["key"] == key and js["reason"] == "never_recorded"
    assert js["nearest"] == [f"{upstream.url}/pool/main/h/hello/hello_1.0_all.deb"]
    # Mutable metadata offline: served from the store, never revalidated.
    missing_meta = await offline.get("/debian/dists/stable/InRelease")
    assert missing_meta.status == 404
    logged = await (await offline.get("/_cachesrv/api/v1/misses")).json()
    assert {m["key"] for m in logged} == {key, f"{upstream.url}/dists/stable/InRelease"}
    assert upstream.count() == 0


async def test_quarantined_blob_is_never_served(
    aiohttp_client: MakeClient, load: Callable[..., Config], upstream: FakeUpstream, tmp_path: Path
) -> None:
    put(upstream, "pool/q.tar.gz", b"q" * 1000)
    token = "t" * 32
    config = load({"files": ("generic", upstream.url)}, admin_token=token)
    client = await client_for(aiohttp_client, config)
    await (await client.get("/files/pool/q.tar.gz")).read()
    hit = await client.get("/files/pool/q.tar.gz")  # now served from the hot cache
    assert hit.headers["X-Cachesrv-Status"] == "hit" and await hit.read() == b"q" * 1000
    digest = (await (await client.get("/_cachesrv/api/v1/entries")).json())[0]["digest"]
    q = "/_cachesrv/api/v1/quarantine?digest=" + digest
    assert (await client.post(q)).status == 401
    assert (await client.post(q, headers={"Authorization": "Bearer wrong"})).status == 403
    assert (await client.post(q, headers={"Authorization": f"Bearer {token}"})).status == 200
    m = await client.post(
        "/_cachesrv/api/v1/mode",
        json={"mode": "offline"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert m.status == 200
    miss = await client.get("/files/pool/q.tar.gz")
    assert miss.status == 404 and "quarantined" in await miss.text()


async def test_hot_cache_sees_changes_made_by_another_process(
    aiohttp_client: MakeClient, load: Callable[..., Config], upstream: FakeUpstream
) -> None:
    body = put(upstream, "pool/h.tar.gz", b"h" * 5000)
    config = load({"files": ("generic", upstream.url)}, mode="offline")
    # Record through an online app first.
    online = await client_for(aiohttp_client, load({"files": ("generic", upstream.url)}))
    assert await (await online.get("/files/pool/h.tar.gz")).read() == body
    await online.close()
    client = await client_for(aiohttp_client, config)
    for _ in range(2):  # the second answer comes from memory
        r = await client.get("/files/pool/h.tar.gz")
        assert r.status == 200 and await r.read() == body
    # Another process deletes the entry (here: a second connection to the index).
    from cachesrv.store.index import Index

    other = Index(config.store / "index.sqlite")
    assert other.delete(f"{upstream.url}/pool/h.tar.gz")
    other.close()
    deadline = asyncio.get_running_loop().time() + 10
    status = 200
    while status == 200 and asyncio.get_running_loop().time() < deadline:
        r = await client.get("/files/pool/h.tar.gz")
        status = r.status
        await r.read()
        if status == 200:
            await asyncio.sleep(0.05)  # polling the server's 1 s index watch, not a start-up
    assert status == 404


async def test_a_blob_gone_between_lookup_and_send_is_fetched_again_not_404(
    aiohttp_client: MakeClient, load: Callable[..., Config], upstream: FakeUpstream, tmp_path: Path
) -> None:
    # Eviction (or gc) can remove a blob after a request has chosen it and before the
    # file is opened: found by bench/soak.py as 404s (FileResponse's answer to a missing
    # file) for files the upstream has. Here the hot cache still names the blob after
    # its file went, which is that window held open.
    body = put(upstream, "pool/e.tar.gz", os.urandom(200_000))  # over the in-memory size
    client = await client_for(aiohttp_client, load({"files": ("generic", upstream.url)}))
    assert await (await client.get("/files/pool/e.tar.gz")).read() == body
    hit = await client.get("/files/pool/e.tar.gz")
    assert hit.headers["X-Cachesrv-Status"] == "hit" and await hit.read() == body
    for blob in (tmp_path / "store" / "objects").glob("*/*"):
        blob.unlink()
    for headers in ({}, {"Range": "bytes=5-9"}):
        again = await client.get("/files/pool/e.tar.gz", headers=headers)
        assert again.status in (200, 206), await again.text()
        assert await again.read() == (body[5:10] if headers else body)
    head = await client.head("/files/pool/e.tar.gz")
    assert head.status == 200 and int(head.headers["Content-Length"]) == len(body)
