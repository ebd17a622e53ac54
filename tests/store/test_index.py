"""The index: batched writes (`put_many`) against one row at a time (`put`, `add_to_seed`)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import blake3

from cachesrv.models import ArtifactKind, CacheKey, Digest, Entry
from cachesrv.store.index import Index


def entry(url: str, body: bytes, recorded: float = 1000.0) -> Entry:
    return Entry(
        CacheKey("files", url),
        Digest(blake3.blake3(body).hexdigest()),
        len(body),
        hashlib.sha256(body).hexdigest(),
        ArtifactKind.IMMUTABLE,
        etag='"e"',
        recorded=recorded,
        validated=recorded,
    )


def rows(index: Index) -> tuple[list[Entry], list[tuple[object, ...]], list[tuple[str, str]]]:
    blobs = index.db.execute(
        "SELECT digest, size, sha256, created, quarantined FROM blobs ORDER BY digest"
    ).fetchall()
    seeds = index.db.execute("SELECT seed, key FROM seed_entries ORDER BY seed, key").fetchall()
    return index.entries(), blobs, seeds


def test_put_many_records_what_put_and_add_to_seed_record(tmp_path: Path) -> None:
    u = [f"http://files.example/{i}.tar.gz" for i in range(7)]
    entries = [entry(url, f"body {i}".encode()) for i, url in enumerate(u)]
    entries.append(entry(u[1], b"body 0"))  # a key again, now sharing a blob: the later wins
    links = [("build-1", u[0]), ("build-1", u[5]), ("build-2", u[5]), ("build-1", u[0])]
    links.append(("build-2", "http://files.example/old.tar.gz"))  # a key recorded before
    old = entry("http://files.example/old.tar.gz", b"old")

    one, many = Index(tmp_path / "one.sqlite"), Index(tmp_path / "many.sqlite")
    for index in (one, many):
        index.put(old)
    for e in entries:
        one.put(e)
    for seed, url in links:
        one.add_to_seed(seed, url)
    many.put_many(entries, links, batch=3)

    assert rows(many) == rows(one)
    assert len(many.entries()) == 8 and many.get(u[1]) == entries[-1]
    for index in (one, many):
        accessed = [r[0] for r in index.db.execute("SELECT accessed FROM entries")]
        assert all(a >= 1000.0 for a in accessed)
        index.close()


def test_put_many_commits_each_entry_with_its_seeds_one_batch_at_a_time(
    tmp_path: Path,
) -> None:
    index = Index(tmp_path / "index.sqlite")
    index.put(entry("http://files.example/old.tar.gz", b"old"))
    entries = [entry(f"http://files.example/{i}.tar.gz", bytes([i])) for i in range(10)]
    links = [("pinned", e.key.url) for e in entries[::2]]
    links += [("pinned", "http://files.example/old.tar.gz")]
    want = {url for _, url in links}
    seen: list[tuple[int, int]] = []

    def on_change(key: str | None) -> None:
        # After each commit: every key recorded so far already has its memberships.
        assert key is None
        keys = {r[0] for r in index.db.execute("SELECT key FROM entries")}
        linked = {r[0] for r in index.db.execute("SELECT key FROM seed_entries")}
        assert (keys & want) - {"http://files.example/old.tar.gz"} <= linked
        seen.append((len(keys), len(linked)))

    index.on_change = on_change
    statements: list[str] = []
    index.db.conn.set_trace_callback(statements.append)
    index.put_many(entries, links, batch=4)
    index.db.conn.set_trace_callback(None)

    # 4 + 4 + 2 entries, then the membership of a key that was not among them.
    assert seen == [(5, 2), (9, 4), (11, 5), (11, 6)]
    assert statements.count("BEGIN IMMEDIATE") == 4
    assert sum(s.startswith("COMMIT") for s in statements) == 4
    index.close()
