"""`/metrics`: every outcome moves its counter, and bytes, latency and store gauges follow."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from cachesrv.config import Config
from cachesrv.web import make_app
from cachesrv.web.accesslog import server_options
from tests.fakes.upstream import FakeUpstream, Fault
from tests.web.test_proxy import put

Client = TestClient[Any, Any]
MakeClient = Callable[..., Awaitable[Client]]
TOKEN = "metrics-test-token-0123456789"


async def serve(aiohttp_client: MakeClient, app: web.Application) -> Client:
    """The app behind a test server with cachesrv's access log, as `serve` installs it
    (the hook that counts served bytes and durations)."""
    server = TestServer(app)
    await server.start_server(**server_options())
    return await aiohttp_client(server)


async def scrape(client: Client) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    r = await client.get("/metrics")
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(await r.text())
        for s in family.samples
    }


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def requests(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], outcome: str) -> float:
    return sum(
        v
        for (name, labels), v in samples.items()
        if name == "cachesrv_requests_total" and dict(labels)["outcome"] == outcome
    )


async def test_counters_move_for_a_hit_a_recording_and_an_offline_miss(
    aiohttp_client: MakeClient, load: Callable[..., Config], upstream: FakeUpstream
) -> None:
    deb = put(upstream, "pool/main/h/hello/hello_1.0_all.deb", os.urandom(50_000))
    config = load({"debian": ("apt", upstream.url)}, admin_token=TOKEN)
    client = await serve(aiohttp_client, make_app(config))
    before = await scrape(client)
    assert requests(before, "recorded") == requests(before, "hit") == 0

    r = await client.get("/debian/pool/main/h/hello/hello_1.0_all.deb")
    assert await r.read() == deb and r.headers["X-Cachesrv-Status"] == "recorded"
    after_record = await scrape(client)
    assert (
        value(after_record, "cachesrv_requests_total", outcome="recorded", upstream="debian") == 1
    )
    assert value(after_record, "cachesrv_fetched_bytes_total", upstream="debian") == len(deb)
    assert value(after_record, "cachesrv_upstream_latency_seconds_count", upstream="debian") == 1
    assert value(after_record, "cachesrv_fetches_in_flight") == 0
    assert value(after_record, "cachesrv_store_entries", upstream="debian") == 1
    assert value(after_record, "cachesrv_store_bytes") == len(deb)
    assert value(after_record, "cachesrv_store_blobs") == 1

    r = await client.get("/debian/pool/main/h/hello/hello_1.0_all.deb")
    assert await r.read() == deb and r.headers["X-Cachesrv-Status"] == "hit"
    after_hit = await scrape(client)
    assert value(after_hit, "cachesrv_requests_total", outcome="hit", upstream="debian") == 1
    assert value(after_hit, "cachesrv_served_bytes_total", upstream="debian") == 2 * len(deb)
    assert value(after_hit, "cachesrv_request_duration_seconds_count", outcome="hit") == 1
    # A hit costs the upstream nothing.
    assert value(after_hit, "cachesrv_fetched_bytes_total", upstream="debian") == len(deb)

    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert (await client.post("/_cachesrv/api/v1/mode", json={"mode": "offline"}, headers=auth)).ok
    r = await client.get("/debian/pool/main/h/hello/hello_2.0_all.deb")
    assert r.status == 404 and r.reason == "Not in offline seed"
    after_miss = await scrape(client)
    assert (
        value(after_miss, "cachesrv_requests_total", outcome="offline_miss", upstream="debian") == 1
    )
    assert value(after_miss, "cachesrv_misses_logged") == 1
    assert value(after_miss, "cachesrv_offline") == 1
    # The status page's figure comes from the same counters: 1 hit of 3 cacheable requests.
    stats = await (await client.get("/_cachesrv/api/v1/stats")).json()
    assert stats["requests"]["offline_miss"] == 1
    assert abs(stats["hit_ratio"] - 1 / 3) < 1e-9


async def test_every_error_outcome_is_counted(
    aiohttp_client: MakeClient, load: Callable[..., Config], upstream: FakeUpstream
) -> None:
    put(upstream, "dists/stable/InRelease", b"release")
    put(upstream, "pool/broken.deb", b"b" * 1000)
    put(upstream, "pool/cut.deb", os.urandom(1_000_000))
    client = await serve(aiohttp_client, make_app(load({"debian": ("apt", upstream.url)})))
    # recorded, revalidated, then stale when the upstream fails.
    for want in ("recorded", "revalidated"):
        r = await client.get("/debian/dists/stable/InRelease")
        assert r.headers["X-Cachesrv-Status"] == want and await r.read() == b"release"
    upstream.faults["/dists/stable/InRelease"] = Fault.status(503)
    r = await client.get("/debian/dists/stable/InRelease")
    assert r.headers["X-Cachesrv-Status"] == "stale"
    # refused: not a configured upstream, a method cachesrv does not proxy, a bad URL.
    assert (await client.get("/debian/pool/a%2Fb.deb")).status == 400
    assert (await client.get("/nowhere/x")).status == 403
    assert (await client.post("/debian/pool/broken.deb")).status == 405
    # upstream errors: a 500 before any byte, and a body cut short after the headers.
    upstream.faults["/pool/broken.deb"] = Fault.status(500)
    assert (await client.get("/debian/pool/broken.deb")).status == 502
    upstream.faults["/pool/cut.deb"] = Fault.truncate()
    r = await client.get("/debian/pool/cut.deb")
    with contextlib.suppress(aiohttp.ClientError):
        await r.read()
    # passthrough: the upstream's own 404.
    assert (await client.get("/debian/pool/absent.deb")).status == 404
    # cachesrv's own pages are not proxy requests.
    await client.get("/_cachesrv/status")
    await client.get("/_cachesrv/api/v1/nothing")

    samples = await scrape(client)
    counts = {
        o: requests(samples, o)
        for o in (
            "recorded",
            "revalidated",
            "stale",
            "refused",
            "upstream_error",
            "passthrough",
            "hit",
            "offline_miss",
        )
    }
    assert counts == {
        "recorded": 1,
        "revalidated": 1,
        "stale": 1,
        "refused": 3,
        "upstream_error": 2,
        "passthrough": 1,
        "hit": 0,
        "offline_miss": 0,
    }
    assert (
        value(samples, "cachesrv_requests_total", outcome="upstream_error", upstream="debian") == 2
    )
    assert value(samples, "cachesrv_stale_served_total", upstream="debian") == 1
