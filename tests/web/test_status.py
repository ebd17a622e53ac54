"""`/_cachesrv/status`: rendered by a real browser (headless Chromium from Debian's
`chromium` package, installed by tests/run), and escaped against hostile input."""

from __future__ import annotations

import html
import shlex
import shutil
import struct
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from cachesrv.config import Config, load_config
from cachesrv.models import ArtifactKind, CacheKey, Digest, Entry
from cachesrv.sources.base import Outcome
from cachesrv.web import make_app
from cachesrv.web.status import prefetch_command, render
from tests.conftest import CachesrvProcess
from tests.fakes.upstream import FakeUpstream
from tests.web.test_proxy import put

Client = TestClient[Any, Any]
MakeClient = Callable[..., Awaitable[Client]]
CHROMIUM = shutil.which("chromium")
TOKEN = "status-page-token-0123456789"


def chromium(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            *extra,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def _open(url: str, *, data: bytes | None = None, token: str | None = None) -> int:
    req = urllib.request.Request(url, data=data)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            r.read()
            return int(r.status)
    except urllib.error.HTTPError as exc:
        exc.read()
        return exc.code


@pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's `chromium` is not installed (tests/run installs it)"
)
def test_status_page_in_headless_chromium(
    cachesrv: Callable[..., CachesrvProcess],
    write_config: Callable[..., Path],
    upstream: FakeUpstream,
    tmp_path: Path,
) -> None:
    put(upstream, "pool/hello-1.0.tar.gz", b"h" * 123_456)
    config = write_config({"files": ("generic", upstream.url)}, admin_token=TOKEN)
    server = cachesrv("--config", config, "--store", tmp_path / "store")
    base = server.url
    # Record an entry into a seed, then go offline and miss another.
    assert _open(f"{base}/@release-42/files/pool/hello-1.0.tar.gz") == 200
    assert _open(f"{base}/files/pool/hello-1.0.tar.gz") == 200  # a hit
    mode = b'{"mode": "offline"}'
    assert _open(f"{base}/_cachesrv/api/v1/mode", data=mode, token=TOKEN) == 200
    assert _open(f"{base}/files/pool/hello-2.0.tar.gz") == 404
    recorded = f"{upstream.url}/pool/hello-1.0.tar.gz"
    missed = f"{upstream.url}/pool/hello-2.0.tar.gz"

    page = f"{base}/_cachesrv/status"
    dom = chromium(page, tmp_path / "profile-dom", "--dump-dom")
    assert dom.returncode == 0, dom.stderr
    text = html.unescape(dom.stdout)
    assert "<title>cachesrv status (offline)</title>" in text
    assert recorded in text  # recently recorded
    assert missed in text and f"cachesrv prefetch {missed}" in text  # the miss and its fix
    assert "release-42" in text and "120.6 KiB" in text  # the seed and its size
    assert "33.3%" in text  # hit ratio: 1 hit of 3 (recorded, hit, offline miss)
    assert "never_recorded" in text

    shot = tmp_path / "status.png"
    result = chromium(
        page, tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=1280,900"
    )
    assert result.returncode == 0, result.stderr
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (1280, 900)
    # A blank page compresses to a few kilobytes; tables, text and colours do not.
    assert len(png) > 30_000


async def test_status_page_in_process(
    aiohttp_client: MakeClient, load: Callable[..., Config], upstream: FakeUpstream
) -> None:
    put(upstream, "pool/a.tar.gz", b"abc")
    client = await aiohttp_client(make_app(load({"files": ("generic", upstream.url)})))
    empty = await client.get("/_cachesrv/status")
    assert empty.status == 200 and empty.content_type == "text/html"
    assert "script-src" not in empty.headers["Content-Security-Policy"]  # default-src 'none'
    assert "default-src 'none'" in empty.headers["Content-Security-Policy"]
    text = await empty.text()
    assert "Nothing recorded yet" in text and "No offline misses" in text
    assert await (await client.get("/files/pool/a.tar.gz")).read() == b"abc"
    text = await (await client.get("/_cachesrv/status")).text()
    assert f"{upstream.url}/pool/a.tar.gz" in text and "mode-online" in text
    assert (await client.head("/_cachesrv/status")).status == 200


async def test_space_on_the_status_page_metrics_and_stats(
    aiohttp_client: MakeClient, tmp_path: Path, upstream: FakeUpstream
) -> None:
    put(upstream, "pool/a.tar.gz", b"abc" * 1000)
    config = tmp_path / "c.toml"
    # min_free 99%: no disk here is that empty, so the page must warn (and bodies get 507).
    config.write_text(
        f'[upstreams.files]\nkind = "generic"\nurl = "{upstream.url}"\n'
        '[store]\nmax_size = "2MiB"\nmin_free = "99%"\n'
    )
    client = await aiohttp_client(make_app(load_config(config, store=tmp_path / "store")))
    refused = await client.get("/files/pool/a.tar.gz")
    assert refused.status == 507 and refused.reason == "Insufficient Storage"
    assert "min_free" in await refused.text()
    text = await (await client.get("/_cachesrv/status")).text()
    assert "Low on space" in text and "disk free (min_free" in text
    assert "of 2.0 MiB max" in text and "refused: no room (507)" in text
    space = (await (await client.get("/_cachesrv/api/v1/stats")).json())["space"]
    assert space["max_size"] == 2 * 1024 * 1024 and space["low_space"] is True
    assert space["insufficient_storage"] == 1 and space["blob_bytes"] == 0
    metrics = await (await client.get("/metrics")).text()
    assert "cachesrv_store_max_bytes 2.097152e+06" in metrics
    assert "cachesrv_insufficient_storage_total 1.0" in metrics
    assert 'cachesrv_requests_total{outcome="insufficient_storage",upstream="files"} 1.0' in metrics


def test_every_user_derived_string_is_escaped() -> None:
    evil = "http://h/pool/<script>alert('x')</script>&\"q\".deb"
    seed = "<img src=x onerror=alert(1)>"
    entry = Entry(
        key=CacheKey("up<marquee>", evil),
        digest=Digest("a" * 64),
        size=10,
        sha256="b" * 64,
        kind=ArtifactKind.IMMUTABLE,
        content_type="text/html",
        etag=None,
        last_modified=None,
        recorded=time.time(),
        validated=time.time(),
    )
    page = render(
        mode="offline",
        uptime=5,
        stats={
            "blob_bytes": 10,
            "blobs": 1,
            "entries": 1,
            "quarantined": 0,
            "by_upstream": {"up<marquee>": {"entries": 1, "bytes": 10}},
        },
        upstreams={"up<marquee>": ("generic", "http://h/<blink>")},
        totals=dict.fromkeys(Outcome, 0.0),
        hit_ratio=None,
        misses=[
            {"key": evil, "count": 1, "reason": "<u>why</u>", "seed": seed, "last": time.time()}
        ],
        seeds=[{"name": seed, "entries": 1, "bytes": 10, "dangling": 0}],
        recent=[entry],
        now=time.time(),
    )
    for bad in ("<script>", "<img", "<u>", "<marquee>", "<blink>"):
        assert bad not in page
    assert html.escape(evil) in page and html.escape(seed) in page
    # The command is shell-quoted before it is HTML-escaped: copy, paste, run.
    assert html.escape(prefetch_command(evil, seed)) in page
    assert prefetch_command(evil, None) == "cachesrv prefetch " + shlex.quote(evil)
