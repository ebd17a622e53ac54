"""Store lifecycle against a real Store on tmp_path: quota, LRU eviction, pins and seeds,
batched last access, gc and its grace period, and the `[store]` config keys.

Bodies are recorded the way a Flight records them (`make_room`, write, claim, place,
`put` with its seeds, `release`). Blob files are aged with `os.utime` where a test needs
entries that were recorded "a while ago" (gc spares files younger than its grace)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cachesrv.config import StoreLimits, parse_config
from cachesrv.errors import ConfigError, InsufficientStorage
from cachesrv.fsck import fsck
from cachesrv.models import ArtifactKind, BlobInfo, CacheKey, Digest, Entry
from cachesrv.store import Store
from cachesrv.store.index import Index
from cachesrv.store.lifecycle import GC_GRACE, collect

KiB = 1024
UNIT = 64 * KiB
BASE = "http://files.example/"
#: A while ago, but young enough for gc's default grace.
RECENTLY = 60.0


MakeStore = Callable[..., Store]


@pytest.fixture
def make_store(tmp_path: Path) -> Iterator[MakeStore]:
    opened: list[Store] = []

    def make(max_units: int | None = 10, min_free: int | float = 0) -> Store:
        limits = StoreLimits(
            max_size=None if max_units is None else max_units * UNIT, min_free=min_free
        )
        store = Store(tmp_path / "store", limits)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


def record(store: Store, name: str, data: bytes | None = None, seed: str | None = None) -> Entry:
    """Record a body as a Flight does; 507 (InsufficientStorage) if it cannot fit."""
    body = os.urandom(UNIT) if data is None else data
    reservation = store.lifecycle.make_room(len(body))
    try:
        writer = store.blobs.writer()
        writer.write(body)
        info = writer.finish()
        store.index.claim_blobs([info])
        writer.place(info)
        entry = entry_for(name, info)
        store.index.put(entry, [seed] if seed else [])
    finally:
        store.lifecycle.release(reservation)
    return entry


def entry_for(name: str, info: BlobInfo) -> Entry:
    now = time.time()
    return Entry(
        key=CacheKey("files", BASE + name),
        digest=info.digest,
        size=info.size,
        sha256=info.sha256,
        kind=ArtifactKind.IMMUTABLE,
        recorded=now,
        validated=now,
    )


def age(store: Store, seconds: float, digest: Digest | None = None) -> None:
    """Set blob files' mtime `seconds` into the past (one blob, or all of them)."""
    when = time.time() - seconds
    paths = [store.blobs.path(digest)] if digest else blob_files(store)
    for path in paths:
        os.utime(path, (when, when))


def blob_files(store: Store) -> list[Path]:
    return sorted(p for p in store.blobs.objects.rglob("*") if p.is_file())


def disk_bytes(store: Store) -> int:
    return sum(p.stat().st_size for p in blob_files(store))


def keys(store: Store) -> set[str]:
    return {e.key.url for e in store.index.entries()}


def name_of(url: str) -> str:
    return url.removeprefix(BASE)


# -- eviction -----------------------------------------------------------------------


def test_recording_past_max_size_evicts_least_recently_served_never_seed_or_pin(
    make_store: MakeStore,
) -> None:
    st = make_store(max_units=10)
    seed = [record(st, f"s1/{i}", seed="s1") for i in range(3)]
    pinned = record(st, "pinned")
    assert st.index.pin(pinned.key.url)
    a = record(st, "a")
    b = record(st, "b")
    # `a` was recorded before `b` but served after it: it is the more recently used.
    st.note_access(a.key.url)
    st.flush_access()
    fill = [record(st, f"n{i}") for i in range(4)]
    assert len(keys(st)) == 10 and st.index.blob_totals() == (10 * UNIT, 10)

    evicted_in_order: list[str] = []
    for i in range(4, 10):
        age(st, RECENTLY)
        before = keys(st)
        record(st, f"n{i}")
        gone = before - keys(st)
        assert len(gone) == 1, f"n{i} should evict exactly one entry, evicted {gone}"
        evicted_in_order.append(name_of(gone.pop()))
        assert disk_bytes(st) <= 10 * UNIT and st.index.blob_totals()[0] <= 10 * UNIT

    assert evicted_in_order == ["b", "a", "n0", "n1", "n2", "n3"]
    # The evicted bodies are gone from disk; pinned and seeded ones are all still there.
    for entry in (a, b, *fill):
        assert not st.blobs.has(entry.digest)
    for entry in (*seed, pinned):
        assert st.blobs.path(entry.digest).stat().st_size == UNIT
    assert {e.key.url for e in (*seed, pinned)} <= keys(st)
    assert st.lifecycle.counters.evictions == 6
    assert st.lifecycle.counters.evicted_bytes == 6 * UNIT


def test_recording_past_max_size_right_after_filling_it_evicts_one_entry(
    make_store: MakeStore,
) -> None:
    st = make_store(max_units=10)
    for i in range(10):
        record(st, f"f{i}")
    record(st, "f10")  # today: InsufficientStorage, and all ten entries were evicted
    assert keys(st) == {BASE + f"f{i}" for i in range(1, 11)}


def test_no_eviction_when_evicting_cannot_make_room(make_store: MakeStore) -> None:
    st = make_store(max_units=10)
    for i in range(6):
        record(st, f"s1/{i}", seed="s1")
    record(st, "a")
    record(st, "b")
    age(st, RECENTLY)
    before = keys(st)
    # 8 units stored, 2 evictable: 5 more cannot fit whatever is evicted.
    with pytest.raises(InsufficientStorage) as exc:
        record(st, "big", os.urandom(5 * UNIT))
    text = str(exc.value)
    assert exc.value.status == 507
    assert "the store is full: max_size 640.0 KiB" in text
    assert "this body needs 320.0 KiB" in text
    assert "384.0 KiB are held by seeds and pins" in text
    assert "cachesrv gc" in text and "cachesrv seed delete NAME" in text
    # Nothing was evicted for nothing, nothing partial was written.
    assert keys(st) == before and st.lifecycle.counters.evictions == 0
    assert st.lifecycle.counters.refusals == 1
    assert len(blob_files(st)) == 8 and list(st.blobs.tmp.iterdir()) == []
    # A body bigger than max_size itself is refused too, still evicting nothing.
    with pytest.raises(InsufficientStorage):
        record(st, "huge", os.urandom(11 * UNIT))
    assert keys(st) == before


def test_min_free_refusal_says_the_disk_is_full_and_evicts_nothing(
    make_store: MakeStore, tmp_path: Path
) -> None:
    st = make_store(max_units=None)
    record(st, "a")
    age(st, RECENTLY)
    vfs = os.statvfs(tmp_path)
    # Ask to keep more free than the disk has: evicting one small entry cannot help.
    st.lifecycle.limits = StoreLimits(min_free=vfs.f_bavail * vfs.f_frsize + 10 * UNIT)
    with pytest.raises(InsufficientStorage) as exc:
        record(st, "b")
    assert f"the disk of {st.root} is full" in str(exc.value)
    assert "min_free keeps" in str(exc.value)
    assert keys(st) == {BASE + "a"} and st.lifecycle.counters.evictions == 0


def test_unreferenced_blobs_are_swept_before_any_entry_is_evicted(make_store: MakeStore) -> None:
    st = make_store(max_units=10)
    entries = [record(st, f"f{i}") for i in range(10)]
    assert st.index.delete(entries[5].key.url)  # its blob stays until swept
    age(st, RECENTLY)
    record(st, "new")
    assert not st.blobs.has(entries[5].digest)
    assert keys(st) == {e.key.url for e in entries if e is not entries[5]} | {BASE + "new"}
    assert st.lifecycle.counters.evictions == 0


def test_bodies_being_recorded_count_against_max_size(make_store: MakeStore) -> None:
    st = make_store(max_units=10)
    held = st.lifecycle.make_room(6 * UNIT)  # a 6-unit body in flight
    with pytest.raises(InsufficientStorage) as exc:
        st.lifecycle.make_room(5 * UNIT)
    assert "384.0 KiB being recorded" in str(exc.value)
    st.lifecycle.release(held)
    st.lifecycle.release(st.lifecycle.make_room(5 * UNIT))


# -- pins, seeds, last access -------------------------------------------------------


def test_pins_and_seeds_hold_entries_until_unpinned_or_deleted(make_store: MakeStore) -> None:
    st = make_store(max_units=None)
    s1 = [record(st, f"s1/{i}", seed="s1") for i in range(2)]
    p = record(st, "p")
    free = record(st, "free")
    assert st.index.pin(p.key.url)
    assert not st.index.pin(BASE + "never-recorded")
    candidates = [k for k, _ in st.index.eviction_candidates(100)]
    assert candidates == [free.key.url]
    assert st.index.pinned_bytes() == 3 * UNIT and st.index.evictable_bytes() == UNIT

    # Deleting the seed keeps its entries, which become evictable (oldest first).
    assert st.index.delete_seed("s1") == 2
    assert {e.key.url for e in s1} <= keys(st)
    assert [k for k, _ in st.index.eviction_candidates(100)] == [
        s1[0].key.url,
        s1[1].key.url,
        free.key.url,
    ]
    assert st.index.unpin(p.key.url) and not st.index.unpin(p.key.url)
    assert len(st.index.eviction_candidates(100)) == 4 and st.index.pinned_bytes() == 0


def test_last_access_is_written_in_batches(make_store: MakeStore) -> None:
    st = make_store(max_units=None)
    a, b = record(st, "a"), record(st, "b")
    st.note_access(a.key.url)
    # Served, but not written yet: the index still has recording order.
    assert [k for k, _ in st.index.eviction_candidates(2)] == [a.key.url, b.key.url]
    st.flush_access()
    assert [k for k, _ in st.index.eviction_candidates(2)] == [b.key.url, a.key.url]
    assert st.accessed == {}


# -- gc -----------------------------------------------------------------------------


def test_collect_removes_exactly_the_old_unreferenced_blobs(make_store: MakeStore) -> None:
    st = make_store(max_units=None)
    gone = [record(st, "a"), record(st, "b", os.urandom(2 * UNIT))]
    shared = os.urandom(UNIT)
    one, other = record(st, "one", shared), record(st, "other", shared)
    young = record(st, "young")
    kept = record(st, "kept")
    for e in (*gone, one, young):
        st.index.delete(e.key.url)
    age(st, 2 * GC_GRACE)
    age(st, 0, young.digest)
    # A file in objects/ that no row knows (an interrupted import, say), old as well.
    stray = st.blobs.put_bytes(os.urandom(UNIT // 2))
    age(st, 2 * GC_GRACE, stray.digest)
    files_before = blob_files(st)
    bytes_before = disk_bytes(st)

    dry = collect(st.blobs, st.index, dry_run=True)
    assert {d for d, _ in dry.removed} == {e.digest.hex for e in gone} | {stray.digest.hex}
    assert dry.freed == 3 * UNIT + UNIT // 2 and dry.young == 1
    assert dry.summary() == (
        "gc: would remove 3 unreferenced blobs, 224.0 KiB; kept 1 younger than the grace period"
    )
    assert blob_files(st) == files_before

    report = collect(st.blobs, st.index)
    assert sorted(report.removed) == sorted(dry.removed)
    assert report.summary().startswith("gc: removed 3 unreferenced blobs, 224.0 KiB")
    assert disk_bytes(st) == bytes_before - report.freed == bytes_before - 3 * UNIT - UNIT // 2
    for digest in (*(e.digest for e in gone), stray.digest):
        assert not st.blobs.has(digest)
    # The blob shared with a deleted key, the young one and the referenced one stay.
    for e in (other, young, kept):
        assert st.blobs.path(e.digest).read_bytes()
    assert st.index.unreferenced_blobs(time.time()) == {young.digest.hex: UNIT}
    assert fsck(st).clean


def test_gc_grace_protects_a_commit_whose_entry_is_not_written_yet(
    make_store: MakeStore, tmp_path: Path
) -> None:
    """A commit renames the blob into objects/ (or touches the identical one there)
    before its entry is written. `cachesrv gc` in another process sees an unreferenced
    blob; only the mtime grace keeps it. With --grace 0 it is removed, and the entry
    written next points at nothing (what `--grace 0` beside a running server risks)."""
    st = make_store(max_units=None)
    gc_index = Index(tmp_path / "store" / "index.sqlite")  # another process's connection
    try:
        for grace, survives in ((GC_GRACE, True), (0.0, False)):
            writer = st.blobs.writer()
            writer.write(os.urandom(UNIT))
            info = writer.commit()  # in objects/, no entry yet
            report = collect(st.blobs, gc_index, grace=grace)
            assert st.blobs.has(info.digest) is survives
            assert (report.young, len(report.removed)) == ((1, 0) if survives else (0, 1))
            st.index.put(entry_for(f"grace-{grace}", info))
            assert (info.digest.hex in fsck(st).missing) is not survives
    finally:
        gc_index.close()


def test_committing_identical_bytes_makes_an_old_unreferenced_blob_young(
    make_store: MakeStore,
) -> None:
    st = make_store(max_units=None)
    body = os.urandom(UNIT)
    old = record(st, "old", body)
    st.index.delete(old.key.url)
    age(st, 2 * GC_GRACE)
    writer = st.blobs.writer()
    writer.write(body)
    assert writer.commit().digest == old.digest  # the identical blob is touched, not copied
    report = collect(st.blobs, st.index)
    assert report.removed == [] and report.young == 1
    assert st.blobs.verify(old.digest)


# -- config -------------------------------------------------------------------------


def test_store_limits_config() -> None:
    limits = parse_config({"store": {"max_size": "10MiB", "min_free": "5%"}}).limits
    assert limits.max_size == 10 * 1024 * 1024
    assert limits.min_free == 0.05 and limits.min_free_bytes(48 * 1024 * 1024) == 2516582
    assert parse_config({"store": {"min_free": "200GiB"}}).limits.min_free == 200 * 1024**3
    default = parse_config({}).limits
    assert default.max_size is None and default.min_free_bytes(1000) == 10


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max_size", "ten"),
        ("max_size", "10 MiBs"),
        ("max_size", -1),
        ("max_size", True),
        ("min_free", "105%"),
        ("min_free", "-5%"),
        ("min_free", "plenty"),
    ],
)
def test_bad_store_limits_name_the_key(key: str, value: object) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config({"store": {key: value}}, source="site.toml")
    assert str(exc.value).startswith(f"site.toml:store.{key}: ")
