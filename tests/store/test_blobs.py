"""The blob store: hashing, atomic commit, dedup, abort, quarantine; the index migrations."""

from __future__ import annotations

import hashlib
from pathlib import Path

import blake3
import sqlite_utils

from cachesrv.models import ArtifactKind, CacheKey, Entry, MissReason
from cachesrv.store import Store
from cachesrv.store.index import MIGRATIONS, Index


def test_commit_names_blob_by_blake3_and_records_sha256(tmp_path: Path) -> None:
    store = Store(tmp_path)
    w = store.blobs.writer()
    w.write(b"hello ")
    w.write(b"world")
    # Nothing is visible under objects/ before commit.
    assert not any(p.is_file() for p in store.blobs.objects.rglob("*"))
    info = w.commit()
    assert info.digest.hex == blake3.blake3(b"hello world").hexdigest()
    assert info.sha256 == hashlib.sha256(b"hello world").hexdigest()
    assert store.blobs.path(info.digest).read_bytes() == b"hello world"
    assert list(store.blobs.tmp.iterdir()) == []
    store.close()


def test_identical_bodies_are_stored_once(tmp_path: Path) -> None:
    store = Store(tmp_path)
    a = store.blobs.put_bytes(b"same")
    b = store.blobs.put_bytes(b"same")
    assert a == b
    assert len([p for p in store.blobs.objects.rglob("*") if p.is_file()]) == 1
    store.close()


def test_abort_leaves_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path)
    w = store.blobs.writer()
    w.write(b"partial")
    w.abort()
    assert list(store.blobs.tmp.iterdir()) == []
    assert not any(p.is_file() for p in store.blobs.objects.rglob("*"))
    store.close()


def test_quarantine_moves_blob_out_of_objects(tmp_path: Path) -> None:
    store = Store(tmp_path)
    info = store.blobs.put_bytes(b"x")
    store.blobs.quarantine(info.digest)
    assert not store.blobs.has(info.digest)
    assert (tmp_path / "quarantine" / info.digest.hex).exists()
    store.close()


def test_migrations_apply_once_and_reopen_cleanly(tmp_path: Path) -> None:
    idx = Index(tmp_path / "index.sqlite")
    assert idx.migrations() == [name for name, _ in MIGRATIONS]
    idx.close()
    again = Index(tmp_path / "index.sqlite")
    assert again.migrations() == [name for name, _ in MIGRATIONS]
    assert again.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    again.close()


def test_index_entries_seeds_misses_and_nearest(tmp_path: Path) -> None:
    store = Store(tmp_path)
    idx = store.index
    for version in ("1.0", "1.1"):
        info = store.blobs.put_bytes(version.encode())
        url = f"http://h/debian/pool/main/h/hello/hello_{version}_all.deb"
        idx.put(
            Entry(
                CacheKey("debian", url),
                info.digest,
                info.size,
                info.sha256,
                ArtifactKind.IMMUTABLE,
                recorded=1.0,
                validated=1.0,
            )
        )
        idx.add_to_seed("b1", url)
    assert idx.get("http://h/debian/pool/main/h/hello/hello_1.0_all.deb") is not None
    assert [s["name"] for s in idx.seeds()] == ["b1"]
    missing = CacheKey("debian", "http://h/debian/pool/main/h/hello/hello_2.0_all.deb")
    assert idx.nearest(missing, "hello_") == [
        "http://h/debian/pool/main/h/hello/hello_1.1_all.deb",
        "http://h/debian/pool/main/h/hello/hello_1.0_all.deb",
    ]
    idx.log_miss(missing, MissReason.NEVER_RECORDED)
    idx.log_miss(missing, MissReason.NEVER_RECORDED)
    rows = idx.misses()
    assert len(rows) == 1 and rows[0]["count"] == 2 and rows[0]["key"] == missing.url
    store.close()


def test_an_older_index_is_upgraded_by_the_missing_migrations(tmp_path: Path) -> None:
    # A store written before migration 004: the first three applied, one entry in it.
    db = sqlite_utils.Database(tmp_path / "index.sqlite")
    db.execute("CREATE TABLE migrations (name TEXT PRIMARY KEY, applied REAL NOT NULL)")
    for name, migrate in MIGRATIONS[:3]:
        migrate(db)
        db.execute("INSERT INTO migrations VALUES (?, 0)", [name])
    db.execute("INSERT INTO blobs VALUES (?, 1234, 'sha', 5.0, 0)", ["ab" * 32])
    db.execute(
        "INSERT INTO entries VALUES ('http://h/x.deb', 'u', ?, 1234, 'sha', 'immutable', "
        "'application/octet-stream', NULL, NULL, 7.0, 7.0)",
        ["ab" * 32],
    )
    db.conn.commit()
    db.conn.close()
    again = Index(tmp_path / "index.sqlite")
    assert again.migrations() == [name for name, _ in MIGRATIONS]
    names = {r[0] for r in again.db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert {"entries_recorded", "entries_accessed"} <= names
    # 004: last access starts at the recording time; the running total counts the blob.
    assert again.db.execute("SELECT accessed FROM entries").fetchone()[0] == 7.0
    assert again.blob_totals() == (1234, 1)
    again.close()
