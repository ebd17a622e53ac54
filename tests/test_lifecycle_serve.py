"""Store lifecycle as users meet it: `cachesrv serve` subprocesses, the `cachesrv` command
line, a fake upstream on 127.0.0.1, a real HTTP client.

- `[store] max_size`: LRU eviction that spares seeds and pins, then an offline server
  that still serves the seed byte for byte;
- bodies that cannot fit: 507 before streaming when the size is declared, a broken
  response when it is not, a real full disk (a 48 MiB tmpfs, root only);
- `cachesrv gc` (exact sizes, grace period) beside a running server, raced against a
  recording in flight and against eviction;
- `cachesrv pin`/`unpin`, `seed delete`, `seed list`, bad `[store]` values.

gc spares blob files younger than its grace period, so tests that record "long ago"
age the blob files with `os.utime`.
"""

from __future__ import annotations

import http.client
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from cachesrv.models import ArtifactKind, CacheKey, Entry
from cachesrv.store import Store
from cachesrv.store.index import Index
from cachesrv.store.lifecycle import GC_GRACE
from tests.conftest import REPO, CachesrvProcess, Upstreams, config_text, run_cli
from tests.fakes.server import ThreadedServer
from tests.fakes.upstream import FakeUpstream, Fault

MiB = 1024 * 1024
TOKEN = "lifecycle-admin-token"
#: A while ago, but young enough for gc's default grace.
RECENTLY = 60.0

Serve = Callable[..., CachesrvProcess]


# -- helpers --------------------------------------------------------------------------


def get(url: str, method: str = "GET", token: str | None = None) -> tuple[int, str, bytes, str]:
    """(status, X-Cachesrv-Status, body, reason), through no proxy."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    req = urllib.request.Request(url, method=method)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with opener.open(req, timeout=30) as r:
            return r.status, r.headers.get("X-Cachesrv-Status", ""), r.read(), r.reason
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers.get("X-Cachesrv-Status", ""), exc.read(), exc.reason


def publish(root: Path, rel: str, size: int, body: bytes | None = None) -> bytes:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    data = os.urandom(size) if body is None else body
    path.write_bytes(data)
    return data


def write_config(path: Path, store: Path, upstreams: Upstreams, **limits: str) -> Path:
    """A config with `server.store` (so every command finds the store) and `[store]`."""
    text = config_text(upstreams, store=str(store), admin_token=TOKEN)
    text += "[store]\n" + "".join(f'{k} = "{v}"\n' for k, v in limits.items())
    path.write_text(text)
    return path


def keys(store: Path) -> set[str]:
    index = Index(store / "index.sqlite")
    try:
        return {e.key.url for e in index.entries()}
    finally:
        index.close()


def quota_config(tmp_path: Path, store: Path, name: str, url: str) -> Path:
    """`[store] max_size = "10MiB"`, and min_free 0 (whatever the test disk has free)."""
    upstreams: Upstreams = {name: ("generic", url)}
    return write_config(tmp_path / "c.toml", store, upstreams, max_size="10MiB", min_free="0")


def digest_of(store: Path, key: str) -> str:
    index = Index(store / "index.sqlite")
    try:
        entry = index.get(key)
    finally:
        index.close()
    assert entry is not None, key
    return entry.digest.hex


def blob_files(store: Path) -> dict[str, int]:
    """name -> size of every file under objects/."""
    return {p.name: p.stat().st_size for p in (store / "objects").rglob("*") if p.is_file()}


def age_blobs(store: Path, seconds: float, names: set[str] | None = None) -> None:
    when = time.time() - seconds
    for p in (store / "objects").rglob("*"):
        if p.is_file() and (names is None or p.name in names):
            os.utime(p, (when, when))


def metric(server: CachesrvProcess, name: str, **labels: str) -> float:
    _, _, text, _ = get(f"{server.url}/metrics")
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


class ChunkedUpstream(ThreadedServer[Any]):
    """Serves `bodies[path]` with chunked transfer encoding: no Content-Length."""

    def __init__(self) -> None:
        super().__init__()
        self.bodies: dict[str, bytes] = {}
        self.answered: list[str] = []
        self.url = ""

    async def _setup(self) -> None:
        self.url = f"http://127.0.0.1:{await self._listen(self._handle)}"

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        body = self.bodies.get(request.path)
        if body is None:
            return web.Response(status=404)
        resp = web.StreamResponse(headers={"Content-Type": "application/gzip"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(0, len(body), 256 * 1024):
            await resp.write(body[i : i + 256 * 1024])
        await resp.write_eof()
        self.answered.append(request.path)
        return resp


@pytest.fixture
def chunked() -> Iterator[ChunkedUpstream]:
    with ChunkedUpstream() as server:
        yield server


def read_broken(url: str) -> tuple[int, str | None, int]:
    """GET a response expected to break mid-body: (status, Content-Length, bytes read)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=60) as r:
        status, length = r.status, r.headers.get("Content-Length")
        got = 0
        with pytest.raises((http.client.IncompleteRead, ConnectionError)):
            while chunk := r.read(64 * 1024):
                got += len(chunk)
        return status, length, got


# -- quota and eviction ---------------------------------------------------------------


def test_lru_eviction_spares_seed_and_pins_and_the_seed_serves_offline(
    tmp_path: Path, upstream: FakeUpstream, cachesrv: Serve
) -> None:
    store = tmp_path / "store"
    config = quota_config(tmp_path, store, "files", upstream.url)
    names = ["s1/0", "s1/1", "s1/2", "pinned", "a", "b"] + [f"n{i}" for i in range(12)]
    bodies = {n: publish(upstream.root, f"{n}.tar.gz", MiB) for n in names}
    key = {n: f"{upstream.url}/{n}.tar.gz" for n in names}

    server = cachesrv("--config", config)
    for n in ("s1/0", "s1/1", "s1/2"):  # recorded into seed s1, first of all
        assert get(f"{server.url}/@s1/files/{n}.tar.gz")[::2] == (200, bodies[n])
    for n in ("pinned", "a", "b"):
        assert get(f"{server.url}/files/{n}.tar.gz")[::2] == (200, bodies[n])
    pin = run_cli("pin", "--config", config, key["pinned"])
    assert pin.stdout == f"pinned {key['pinned']}\n"
    # `a`, recorded before `b`, is served again: it is now the more recently used.
    assert get(f"{server.url}/files/a.tar.gz")[:3] == (200, "hit", bodies["a"])
    server.stop()  # last access is written on shutdown (else every 10 s)

    server = cachesrv("--config", config)
    evicted: list[str] = []
    for i in range(12):
        age_blobs(store, RECENTLY)  # everything so far was recorded "a while ago"
        before = keys(store)
        status, outcome, body, _ = get(f"{server.url}/files/n{i}.tar.gz")
        assert (status, outcome, body == bodies[f"n{i}"]) == (200, "recorded", True)
        evicted += sorted(n for n in names if key[n] in before - keys(store))
        assert sum(blob_files(store).values()) <= 10 * MiB
    # 6 MiB held by the seed and the pin, 4 MiB of room: n0..n3 fit, then one goes per
    # recording, least recently served first.
    assert evicted == ["b", "a", "n0", "n1", "n2", "n3", "n4", "n5"]
    assert metric(server, "cachesrv_evictions_total") == 8
    server.stop()

    listing = run_cli("seed", "list", "--config", config).stdout
    assert listing.split() == ["s1", "3", "entries", str(3 * MiB), "bytes", "complete"]
    offline = cachesrv("--config", config, "--mode", "offline")
    upstream.reset_log()
    for n in ("s1/0", "s1/1", "s1/2"):
        assert get(f"{offline.url}/@s1/files/{n}.tar.gz")[:3] == (200, "hit", bodies[n])
    assert get(f"{offline.url}/files/pinned.tar.gz")[::2] == (200, bodies["pinned"])
    assert get(f"{offline.url}/files/n11.tar.gz")[::2] == (200, bodies["n11"])
    status, _, _, reason = get(f"{offline.url}/files/a.tar.gz")
    assert (status, reason) == (404, "Not in offline seed")
    assert upstream.requests == []


def test_recording_past_max_size_in_quick_succession(
    tmp_path: Path, upstream: FakeUpstream, cachesrv: Serve
) -> None:
    store = tmp_path / "store"
    config = quota_config(tmp_path, store, "files", upstream.url)
    bodies = [publish(upstream.root, f"f{i}.tar.gz", MiB) for i in range(11)]
    server = cachesrv("--config", config)
    for i in range(10):
        assert get(f"{server.url}/files/f{i}.tar.gz")[::2] == (200, bodies[i])
    # Today: 507 "the store is full ... 0 B are held by seeds and pins", and all ten
    # entries were evicted.
    assert get(f"{server.url}/files/f10.tar.gz")[::2] == (200, bodies[10])
    assert keys(store) == {f"{upstream.url}/f{i}.tar.gz" for i in range(1, 11)}


def test_a_declared_body_that_cannot_fit_is_507_and_leaves_nothing(
    tmp_path: Path, upstream: FakeUpstream, cachesrv: Serve
) -> None:
    store = tmp_path / "store"
    config = quota_config(tmp_path, store, "files", upstream.url)
    for i in range(4):
        publish(upstream.root, f"s1/{i}.tar.gz", MiB)
    loose = publish(upstream.root, "loose.tar.gz", MiB)
    publish(upstream.root, "big.tar.gz", 8 * MiB)
    server = cachesrv("--config", config)
    for i in range(4):
        assert get(f"{server.url}/@s1/files/s1/{i}.tar.gz")[0] == 200
    assert get(f"{server.url}/files/loose.tar.gz")[0] == 200
    age_blobs(store, RECENTLY)
    files, entries = blob_files(store), keys(store)

    # 5 MiB stored, 4 of them in seed s1: evicting `loose` cannot make 8 MiB fit.
    status, outcome, body, reason = get(f"{server.url}/files/big.tar.gz")
    assert (status, reason, outcome) == (507, "Insufficient Storage", "InsufficientStorage")
    text = body.decode()
    assert text.startswith("the store is full: max_size 10.0 MiB holds 5.0 MiB of blobs")
    assert "this body needs 8.0 MiB" in text and "4.0 MiB are held by seeds and pins" in text
    assert "cachesrv gc" in text and "cachesrv seed delete NAME" in text
    # Upstream answered (the size comes from its headers); nothing partial was kept and
    # nothing was evicted for nothing.
    assert [(r.path, r.status) for r in upstream.requests[-1:]] == [("/big.tar.gz", 200)]
    assert blob_files(store) == files and keys(store) == entries
    assert list((store / "tmp").iterdir()) == []
    assert get(f"{server.url}/files/loose.tar.gz")[:3] == (200, "hit", loose)
    assert metric(server, "cachesrv_insufficient_storage_total") == 1
    outcome_label = {"outcome": "insufficient_storage", "upstream": "files"}
    assert metric(server, "cachesrv_requests_total", **outcome_label) == 1


def test_an_undeclared_body_over_quota_is_a_broken_response_and_not_recorded(
    tmp_path: Path, chunked: ChunkedUpstream, cachesrv: Serve
) -> None:
    store = tmp_path / "store"
    config = quota_config(tmp_path, store, "chunks", chunked.url)
    small = chunked.bodies["/small.tar.gz"] = os.urandom(300 * 1024)
    chunked.bodies["/big.tar.gz"] = os.urandom(12 * MiB)
    server = cachesrv("--config", config)
    # Control: a chunked body that fits is recorded whole.
    assert get(f"{server.url}/chunks/small.tar.gz")[:3] == (200, "recorded", small)
    files, entries = blob_files(store), keys(store)

    # Over max_size, known only once the body is complete: the 200 is already out, so
    # the response breaks (never a clean short 200) and nothing is recorded.
    status, length, got = read_broken(f"{server.url}/chunks/big.tar.gz")
    assert (status, length) == (200, None) and got < 12 * MiB
    assert chunked.answered == ["/small.tar.gz", "/big.tar.gz"]
    assert blob_files(store) == files and keys(store) == entries
    assert list((store / "tmp").iterdir()) == []
    outcome_label = {"outcome": "insufficient_storage", "upstream": "chunks"}
    assert metric(server, "cachesrv_requests_total", **outcome_label) == 1
    assert "this body needs 12.0 MiB" in server.output()


# -- a real full disk -----------------------------------------------------------------


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 48 MiB tmpfs (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=True)


def test_full_disk_is_507_before_streaming_and_hits_still_serve(
    tmpfs: Path, tmp_path: Path, upstream: FakeUpstream, chunked: ChunkedUpstream, cachesrv: Serve
) -> None:
    store = tmpfs / "store"
    # No [store] limits: min_free is its default, 1% of the 48 MiB.
    ups: Upstreams = {"files": ("generic", upstream.url), "chunks": ("generic", chunked.url)}
    config = write_config(tmp_path / "c.toml", store, ups)
    rels = [f"pool/s{i}.tar.gz" for i in range(3)]
    small = {rel: publish(upstream.root, rel, 256 * 1024) for rel in rels}
    publish(upstream.root, "pool/big.tar.gz", 30 * MiB)
    chunked.bodies["/big.tar.gz"] = os.urandom(30 * MiB)
    server = cachesrv("--config", config)
    for rel, body in small.items():
        assert get(f"{server.url}/files/{rel}")[:3] == (200, "recorded", body)

    # Something else fills the disk: about 12 MiB stay free.
    vfs = os.statvfs(tmpfs)
    filler = tmpfs / "filler"
    with filler.open("wb") as f:
        f.truncate(0)
        os.posix_fallocate(f.fileno(), 0, vfs.f_bavail * vfs.f_frsize - 12 * MiB)
    free = os.statvfs(tmpfs).f_bavail * os.statvfs(tmpfs).f_frsize
    assert 11 * MiB < free <= 12 * MiB
    files, entries = blob_files(store), keys(store)

    status, outcome, body, reason = get(f"{server.url}/files/pool/big.tar.gz")
    assert (status, reason) == (507, "Insufficient Storage")
    assert body.decode().startswith(f"the disk of {store} is full: ")
    assert "this body needs 30.0 MiB" in body.decode() and "cachesrv gc" in body.decode()
    # Undeclared size: the disk fills mid-body (ENOSPC): a broken response, no temp left.
    status, length, got = read_broken(f"{server.url}/chunks/big.tar.gz")
    assert (status, length) == (200, None) and got < 12 * MiB
    assert list((store / "tmp").iterdir()) == []
    assert abs(os.statvfs(tmpfs).f_bavail * os.statvfs(tmpfs).f_frsize - free) < MiB
    for upstream_name in ("files", "chunks"):
        labels = {"outcome": "insufficient_storage", "upstream": upstream_name}
        assert metric(server, "cachesrv_requests_total", **labels) == 1

    # Hits are served while the disk is full (also as files: Range skips the memory cache),
    # and nothing was evicted.
    for rel, body in small.items():
        assert get(f"{server.url}/files/{rel}")[:3] == (200, "hit", body)
        req = urllib.request.Request(f"{server.url}/files/{rel}", headers={"Range": "bytes=10-19"})
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req) as r:
            assert (r.status, r.read()) == (206, body[10:20])
    assert blob_files(store) == files and keys(store) == entries
    assert metric(server, "cachesrv_evictions_total") == 0
    server.stop()


# -- gc -------------------------------------------------------------------------------


def test_gc_frees_exactly_the_unreferenced_blobs(
    tmp_path: Path, upstream: FakeUpstream, cachesrv: Serve
) -> None:
    store = tmp_path / "store"
    config = write_config(tmp_path / "c.toml", store, {"files": ("generic", upstream.url)})
    shared = os.urandom(MiB)
    bodies = {
        "a": publish(upstream.root, "a.tar.gz", MiB),
        "b": publish(upstream.root, "b.tar.gz", 2 * MiB),
        "one": publish(upstream.root, "one.tar.gz", MiB, shared),
        "other": publish(upstream.root, "other.tar.gz", MiB, shared),
        "young": publish(upstream.root, "young.tar.gz", 512 * 1024),
        "kept": publish(upstream.root, "kept.tar.gz", MiB),
    }
    server = cachesrv("--config", config)
    for n, body in bodies.items():
        assert get(f"{server.url}/files/{n}.tar.gz")[::2] == (200, body)
    digests = {n: digest_of(store, f"{upstream.url}/{n}.tar.gz") for n in bodies}
    api = f"{server.url}/_cachesrv/api/v1/entries?url="
    for n in ("a", "b", "one", "young"):  # DELETE leaves the blobs unreferenced
        assert get(f"{api}{upstream.url}/{n}.tar.gz", "DELETE", TOKEN)[0] == 200
    age_blobs(store, 2 * GC_GRACE, {digests[n] for n in ("a", "b", "one", "kept")})
    before = blob_files(store)

    dry = run_cli("gc", "--dry-run", "--config", config)
    assert dry.stdout == (
        "gc: would remove 2 unreferenced blobs, 3.0 MiB; kept 1 younger than the grace period\n"
    )
    assert blob_files(store) == before

    done = run_cli("gc", "--config", config)
    assert done.stdout == (
        "gc: removed 2 unreferenced blobs, 3.0 MiB; kept 1 younger than the grace period\n"
    )
    after = blob_files(store)
    assert set(before) - set(after) == {digests["a"], digests["b"]}
    assert sum(before.values()) - sum(after.values()) == 3 * MiB
    # The blob `one` shared with `other` stays and is served; so are the young and kept ones.
    assert digests["one"] == digests["other"] and digests["one"] in after
    assert get(f"{server.url}/files/other.tar.gz")[:3] == (200, "hit", shared)
    assert get(f"{server.url}/files/kept.tar.gz")[:3] == (200, "hit", bodies["kept"])

    young = run_cli("gc", "--grace", "0", "--config", config)
    assert young.stdout == "gc: removed 1 unreferenced blobs, 512.0 KiB\n"
    assert set(after) - set(blob_files(store)) == {digests["young"]}
    assert "clean" in run_cli("fsck", "--config", config).stdout


def test_gc_and_eviction_race_a_recording_in_flight(
    tmp_path: Path, upstream: FakeUpstream, cachesrv: Serve
) -> None:
    """`cachesrv gc` (default grace) in a loop and eviction pressure while a slow body
    is recorded; its bytes equal an old unreferenced blob that gc is removing.

    Not `--grace 0`: between a commit (the blob renamed into objects/) and its entry
    being written, an unreferenced young blob is exactly what a commit in flight looks
    like; only the grace period tells them apart (tests/store/test_lifecycle.py shows
    `--grace 0` removing it)."""
    store = tmp_path / "store"
    config = quota_config(tmp_path, store, "files", upstream.url)
    body = publish(upstream.root, "slow.tar.gz", MiB)
    publish(upstream.root, "old.tar.gz", 0, body)
    junk = [publish(upstream.root, f"junk{i}.tar.gz", 256 * 1024) for i in range(4)]
    fillers = [publish(upstream.root, f"fill{i}.tar.gz", MiB) for i in range(6)]
    pressure = [publish(upstream.root, f"p{i}.tar.gz", MiB) for i in range(4)]
    server = cachesrv("--config", config)
    for n in ["old"] + [f"junk{i}" for i in range(4)] + [f"fill{i}" for i in range(6)]:
        assert get(f"{server.url}/files/{n}.tar.gz")[0] == 200
    junk_digests = {digest_of(store, f"{upstream.url}/junk{i}.tar.gz") for i in range(4)}
    api = f"{server.url}/_cachesrv/api/v1/entries?url="
    for n in ["old"] + [f"junk{i}" for i in range(4)]:
        assert get(f"{api}{upstream.url}/{n}.tar.gz", "DELETE", TOKEN)[0] == 200
    age_blobs(store, 2 * GC_GRACE)
    assert sum(blob_files(store).values()) == 7 * MiB + sum(len(j) for j in junk)

    upstream.faults["/slow.tar.gz"] = Fault.slow(chunk_size=64 * 1024, delay=0.1, times=1)
    result: list[tuple[int, str, bytes, str]] = []
    download = threading.Thread(
        target=lambda: result.append(get(f"{server.url}/@race/files/slow.tar.gz"))
    )
    download.start()
    runs, overlapped = 0, 0
    while download.is_alive() or runs < 2:
        out = run_cli("gc", "--config", config).stdout
        assert out.startswith("gc: removed ")
        overlapped += download.is_alive()
        for i in range(2 * runs, min(2 * runs + 2, len(pressure))):
            # Recordings that must evict old fillers meanwhile (1 MiB more than fits).
            assert get(f"{server.url}/files/p{i}.tar.gz")[::2] == (200, pressure[i])
        runs += 1
    download.join()

    assert result[0][:3] == (200, "recorded", body)
    assert get(f"{server.url}/files/slow.tar.gz")[:3] == (200, "hit", body)
    assert overlapped >= 1, "no gc run finished while the body was in flight"
    assert 0 < metric(server, "cachesrv_evictions_total") <= len(fillers)
    server.stop()
    fsck = run_cli("fsck", "--config", config)
    assert "clean" in fsck.stdout and "0 missing" in fsck.stdout
    # The junk went, the seed of the race is complete, the store is within max_size.
    assert not junk_digests & set(blob_files(store))
    assert sum(blob_files(store).values()) <= 10 * MiB
    assert "complete" in run_cli("seed", "list", "--config", config).stdout


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace to hold gc mid-removal")
def test_gc_spares_an_old_blob_that_a_commit_touches_while_gc_removes_it(tmp_path: Path) -> None:
    root = tmp_path / "store"
    st = Store(root)
    try:
        body = os.urandom(4096)
        info = st.blobs.put_bytes(body)  # unreferenced (its entry was deleted long ago)
        age_blobs(root, 2 * GC_GRACE)
        trace = tmp_path / "gc.strace"
        # strace holds every rename for 1 s: gc has checked the mtime, not moved it yet.
        gc = subprocess.Popen(
            [
                "strace", "-f", "-qq", "-o", str(trace),
                "-e", "trace=rename,renameat,renameat2",
                "-e", "inject=rename,renameat,renameat2:delay_enter=1000000",
                sys.executable, "-m", "cachesrv", "gc", "--store", str(root),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while info.digest.hex not in (trace.read_text() if trace.exists() else ""):
            if gc.poll() is not None or time.monotonic() > deadline:
                gc.kill()
                pytest.skip(f"strace could not hold gc here: {gc.communicate()[1].strip()}")
            time.sleep(0.01)  # gc's start-up under strace; nothing to wait on but the trace
        # A recording of the same bytes commits as a Flight does: claim, place (touching
        # the blob, or putting its own copy in place if gc moved it aside), then entry.
        writer = st.blobs.writer()
        writer.write(body)
        done = writer.finish()
        assert done.digest == info.digest
        st.index.claim_blobs([done])
        writer.place(done)
        gc.communicate(timeout=60)
        now = time.time()
        key = CacheKey("files", "http://files.example/again.tar.gz")
        kind = ArtifactKind.IMMUTABLE
        st.index.put(
            Entry(key, info.digest, info.size, info.sha256, kind, "", None, None, now, now)
        )
        assert st.blobs.verify(info.digest)
    finally:
        st.close()


# -- pins, seeds, config --------------------------------------------------------------


def test_pin_unpin_seed_delete_and_seed_list(
    tmp_path: Path, upstream: FakeUpstream, cachesrv: Serve
) -> None:
    store = tmp_path / "store"
    config = write_config(tmp_path / "c.toml", store, {"files": ("generic", upstream.url)})
    for n in ("s1/0", "s1/1", "p", "free"):
        publish(upstream.root, f"{n}.tar.gz", 100_000)
    key = {n: f"{upstream.url}/{n}.tar.gz" for n in ("s1/0", "s1/1", "p", "free", "nope")}
    server = cachesrv("--config", config)
    for n in ("s1/0", "s1/1"):
        assert get(f"{server.url}/@s1/files/{n}.tar.gz")[0] == 200
    for n in ("p", "free"):
        assert get(f"{server.url}/files/{n}.tar.gz")[0] == 200

    def candidates() -> set[str]:
        index = Index(store / "index.sqlite")
        try:
            return {k for k, _ in index.eviction_candidates(100)}
        finally:
            index.close()

    # Keys are upstream URLs, as `prefetch` takes them.
    assert run_cli("pin", "--config", config, key["p"]).stdout == f"pinned {key['p']}\n"
    assert candidates() == {key["free"]}
    bad = run_cli("pin", "--config", config, key["nope"], check=False)
    assert bad.returncode != 0 and "not in the store" in bad.stderr
    assert "Traceback" not in bad.stderr and bad.stderr.count("\n") == 1

    listing = run_cli("seed", "list", "--config", config).stdout
    assert listing.split() == ["s1", "2", "entries", "200000", "bytes", "complete"]
    lost = digest_of(store, key["s1/1"])
    (store / "objects" / lost[:2] / lost).unlink()  # lost by hand
    listing = run_cli("seed", "list", "--config", config).stdout
    assert listing.split()[-5:] == ["bytes", "INCOMPLETE:", "1", "bodies", "missing"]

    deleted = run_cli("seed", "delete", "s1", "--config", config)
    assert deleted.stdout.startswith("seed s1 deleted (2 entries stay in the store")
    assert run_cli("seed", "list", "--config", config).stdout == "no seeds\n"
    # Its entries stay (and are served), no longer held: they may be evicted now.
    assert {key["s1/0"], key["s1/1"]} <= keys(store)
    assert get(f"{server.url}/files/s1/0.tar.gz")[:2] == (200, "hit")
    assert candidates() == {key["s1/0"], key["s1/1"], key["free"]}
    missing = run_cli("seed", "delete", "s1", "--config", config, check=False)
    assert missing.returncode != 0 and "no seed named 's1'" in missing.stderr

    assert run_cli("unpin", "--config", config, key["p"]).stdout == f"unpinned {key['p']}\n"
    assert key["p"] in candidates()
    again = run_cli("unpin", "--config", config, key["p"], check=False)
    assert again.returncode != 0 and "not pinned" in again.stderr


@pytest.mark.parametrize(
    ("table", "key"),
    [('max_size = "lots"', "store.max_size"), ('min_free = "150%"', "store.min_free")],
)
def test_bad_store_limits_fail_with_one_line_naming_the_key(
    tmp_path: Path, table: str, key: str
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(f"[store]\n{table}\n")
    done = run_cli("gc", "--dry-run", "--config", config, "--store", tmp_path / "s", check=False)
    assert done.returncode != 0 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and f"{config}:{key}: " in done.stderr
