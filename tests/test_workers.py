"""`serve --workers N`: N processes share one listening socket and one store."""

from __future__ import annotations

import signal
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tests.conftest import CachesrvProcess
from tests.fakes.upstream import FakeUpstream


def children_of(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()]


def test_workers_share_socket_and_store_and_stop_together(
    upstream: FakeUpstream,
    write_config: Callable[..., Path],
    cachesrv: Callable[..., CachesrvProcess],
    tmp_path: Path,
) -> None:
    body = b"w" * 100_000
    (upstream.root / "w.tar.gz").write_bytes(body)
    config = write_config({"files": ("generic", upstream.url)})
    server = cachesrv("--config", config, "--store", tmp_path / "store", "--workers", "2")
    assert server.proc is not None
    workers = children_of(server.proc.pid)
    assert len(workers) == 2
    # Many fresh connections: whichever worker takes each, all see one store.
    for _ in range(20):
        with urllib.request.urlopen(f"{server.url}/files/w.tar.gz", timeout=30) as r:
            assert r.read() == body
    assert upstream.count("/w.tar.gz") == 1
    assert server.stop(signal.SIGTERM) == 0
    for pid in workers:
        assert (
            not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
        )
