"""kill -9 while recording: no partial blob, fsck clean, the next fetch is whole."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tests.conftest import CachesrvProcess, run_cli
from tests.fakes.upstream import FakeUpstream, Fault


def test_kill_9_during_recording_leaves_no_partial_blob(
    tmp_path: Path,
    upstream: FakeUpstream,
    write_config: Callable[..., Path],
    cachesrv: Callable[..., CachesrvProcess],
) -> None:
    body = os.urandom(40 * 1024 * 1024)
    (upstream.root / "big.tar.gz").write_bytes(body)
    upstream.faults["/big.tar.gz"] = Fault.slow(chunk_size=256 * 1024, delay=0.02, times=1)
    config = write_config({"files": ("generic", upstream.url)})
    store = tmp_path / "store"
    server = cachesrv("--config", config, "--store", store)

    got_some = threading.Event()

    def download() -> None:
        try:
            with urllib.request.urlopen(f"{server.url}/files/big.tar.gz", timeout=60) as r:
                r.read(1024 * 1024)
                got_some.set()
                r.read()
        except Exception:
            got_some.set()

    t = threading.Thread(target=download)
    t.start()
    assert got_some.wait(60)
    # The temp blob exists mid-download; nothing is in objects/ yet.
    assert list((store / "tmp").iterdir())
    assert not any((store / "objects").rglob("*/*"))
    server.stop(signal.SIGKILL)
    t.join(60)

    # Restart: start-up removes the temp file; nothing partial is visible.
    server = cachesrv("--config", config, "--store", store)
    assert list((store / "tmp").iterdir()) == []
    assert not any(p.is_file() for p in (store / "objects").rglob("*"))
    fsck = run_cli("fsck", "--store", store)
    assert "clean" in fsck.stdout and "0 corrupt" in fsck.stdout
    with urllib.request.urlopen(f"{server.url}/files/big.tar.gz", timeout=60) as r:
        again = r.read()
    assert hashlib.sha256(again).digest() == hashlib.sha256(body).digest()
    assert upstream.count("/big.tar.gz") == 2
