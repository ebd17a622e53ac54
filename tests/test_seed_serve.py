"""Seed bundles with real servers: record online at A, carry a bundle, serve offline at B.

Everything runs as users run it: `cachesrv serve` subprocesses, the `cachesrv`
command line, a fake upstream on 127.0.0.1. (The same round trip with real
apt-get and pip lives with the end-to-end tests.)
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import CachesrvProcess, run_cli
from tests.fakes.upstream import FakeUpstream


def get(url: str) -> tuple[int, str, bytes, str]:
    """GET through no proxy: (status, X-Cachesrv-Status, body, reason)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=30) as r:
            return r.status, r.headers.get("X-Cachesrv-Status", ""), r.read(), r.reason
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers.get("X-Cachesrv-Status", ""), exc.read(), exc.reason


def publish(upstream: FakeUpstream, rel: str, size: int) -> bytes:
    path = upstream.root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    body = os.urandom(size)
    path.write_bytes(body)
    return body


@pytest.fixture
def sites(
    tmp_path: Path, upstream: FakeUpstream, write_config: Callable[..., Path]
) -> tuple[Path, Path, Path]:
    """One config (the fake upstream as `files`), and the stores of sites A and B."""
    config = write_config({"files": ("generic", upstream.url)})
    return config, tmp_path / "A", tmp_path / "B"


def test_recorded_online_exported_imported_and_served_offline(
    tmp_path: Path,
    upstream: FakeUpstream,
    sites: tuple[Path, Path, Path],
    cachesrv: Callable[..., CachesrvProcess],
) -> None:
    config, store_a, store_b = sites
    bodies = {
        "/files/pool/hello-1.0.tar.gz": publish(upstream, "pool/hello-1.0.tar.gz", 3_000_000),
        "/files/pool/tool-2.1.zip": publish(upstream, "pool/tool-2.1.zip", 40_000),
    }
    online = cachesrv("--config", config, "--store", store_a)
    for path, body in bodies.items():
        status, how, got, _ = get(f"{online.url}{path}")
        assert (status, how, got) == (200, "recorded", body)
    # Through a named seed too, so that the membership travels.
    assert get(f"{online.url}/@build-7/files/pool/tool-2.1.zip")[:2] == (200, "hit")
    online.stop()

    bundle = tmp_path / "usb" / "seed"
    exported = run_cli("seed", "export", "--store", store_a, "--split-size", "1MiB", bundle)
    assert "2 entries, 2 objects" in exported.stdout and "MB/s" in exported.stdout
    imported = run_cli("seed", "import", "--store", store_b, bundle)
    assert "2 new" in imported.stdout

    asked = upstream.count()
    offline = cachesrv("--config", config, "--store", store_b, "--mode", "offline")
    for path, body in bodies.items():
        status, how, got, _ = get(f"{offline.url}{path}")
        assert (status, how, got) == (200, "hit", body)
    status, how, _, reason = get(f"{offline.url}/files/pool/never-recorded.tar.gz")
    assert (status, how, reason) == (404, "offline-miss", "Not in offline seed")
    assert upstream.count() == asked, "the offline server must never ask upstream"
    shown = run_cli("seed", "show", "--store", store_b, "build-7")
    assert "tool-2.1.zip" in shown.stdout and "0 missing" in shown.stdout


def test_offline_miss_is_fetched_online_carried_back_and_then_a_hit(
    tmp_path: Path,
    upstream: FakeUpstream,
    sites: tuple[Path, Path, Path],
    cachesrv: Callable[..., CachesrvProcess],
) -> None:
    """misses --format urls -> prefetch @file -> export --missing-from -> import."""
    config, store_a, store_b = sites
    first = publish(upstream, "pool/first.tar.gz", 100_000)
    wanted_body = publish(upstream, "pool/wanted-2.0.tar.gz", 250_000)
    run_cli("prefetch", "--config", config, "--store", store_a, f"{upstream.url}/pool/first.tar.gz")
    run_cli("seed", "export", "--store", store_a, tmp_path / "full")
    run_cli("seed", "import", "--store", store_b, tmp_path / "full")

    offline = cachesrv("--config", config, "--store", store_b, "--mode", "offline")
    assert get(f"{offline.url}/files/pool/first.tar.gz")[:3] == (200, "hit", first)
    assert get(f"{offline.url}/files/pool/wanted-2.0.tar.gz")[:2] == (404, "offline-miss")

    wanted = tmp_path / "wanted.txt"
    urls = run_cli("misses", "--store", store_b, "--format", "urls").stdout
    assert urls.split() == [f"{upstream.url}/pool/wanted-2.0.tar.gz"]
    wanted.write_text(urls)
    inventory = tmp_path / "b-inventory.json"
    run_cli("seed", "inventory", "--store", store_b, "-o", inventory)

    # Carried to the online site:
    run_cli("prefetch", "--config", config, "--store", store_a, f"@{wanted}")
    delta = tmp_path / "delta"
    out = run_cli("seed", "export", "--store", store_a, "--missing-from", inventory, delta)
    assert "1 entries, 1 objects" in out.stdout

    # Carried back, imported while the offline server keeps serving:
    run_cli("seed", "import", "--store", store_b, delta)
    assert get(f"{offline.url}/files/pool/wanted-2.0.tar.gz")[:3] == (200, "hit", wanted_body)
