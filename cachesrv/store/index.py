"""The SQLite index of the store (sqlite-utils, WAL, named migrations).

Tables (docs/store-format.md): `entries` (one row per cache key), `blobs` (one
per digest: size, sha256, quarantined), `seed_entries` (named seeds), `misses`
(the offline miss log) and `migrations` (names of the applied migrations).

Every method is synchronous. Under asyncio, call them through `Index.run`, which
runs them on the index's single worker thread: one writer, and no SQLite call on
the event loop.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import sqlite_utils

from ..models import ArtifactKind, BlobInfo, CacheKey, Digest, Entry, MissReason

P = ParamSpec("P")
T = TypeVar("T")


def _m001_initial(db: sqlite_utils.Database) -> None:
    db.executescript(
        """
        CREATE TABLE entries (
            key TEXT PRIMARY KEY,
            upstream TEXT NOT NULL,
            digest TEXT NOT NULL,
            size INTEGER NOT NULL,
            sha256 TEXT NOT NULL,
            kind TEXT NOT NULL,
            content_type TEXT NOT NULL,
            etag TEXT,
            last_modified TEXT,
            recorded REAL NOT NULL,
            validated REAL NOT NULL
        );
        CREATE INDEX entries_digest ON entries(digest);
        CREATE INDEX entries_upstream ON entries(upstream);
        CREATE TABLE blobs (
            digest TEXT PRIMARY KEY,
            size INTEGER NOT NULL,
            sha256 TEXT NOT NULL,
            created REAL NOT NULL,
            quarantined INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX blobs_sha256 ON blobs(sha256);
        CREATE TABLE seed_entries (
            seed TEXT NOT NULL,
            key TEXT NOT NULL,
            added REAL NOT NULL,
            PRIMARY KEY (seed, key)
        );
        CREATE TABLE misses (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            time REAL NOT NULL,
            key TEXT NOT NULL,
            upstream TEXT NOT NULL,
            reason TEXT NOT NULL,
            seed TEXT,
            method TEXT,
            user_agent TEXT
        );
        CREATE INDEX misses_time ON misses(time);
        """
    )


def _m002_declared_hashes(db: sqlite_utils.Database) -> None:
    """Hashes that index pages declare for files (pip's `#sha256=`, snap's sha3-384)."""
    db.executescript(
        """
        CREATE TABLE declared_hashes (
            key TEXT PRIMARY KEY,
            algorithm TEXT NOT NULL,
            hexdigest TEXT NOT NULL,
            page TEXT NOT NULL
        );
        CREATE TABLE pages_indexed (
            page TEXT PRIMARY KEY,
            digest TEXT NOT NULL
        );
        """
    )


def _m003_entries_by_recorded(db: sqlite_utils.Database) -> None:
    """The status page and `seed export --since` ask for entries by recording time."""
    db.execute("CREATE INDEX entries_recorded ON entries(recorded)")


def _m004_lifecycle(db: sqlite_utils.Database) -> None:
    """Store lifecycle: when each entry was last served (LRU eviction, written in
    batches), single-entry pins, a running total of blob bytes kept by triggers (a
    quota check costs one row, not a scan), and `blobs.claimed`: set by a commit
    before its blob is put in place, cleared when its entry is written, so that no
    process removes a blob an entry is about to reference (store/lifecycle.py)."""
    db.executescript(
        """
        ALTER TABLE entries ADD COLUMN accessed REAL NOT NULL DEFAULT 0;
        UPDATE entries SET accessed = recorded;
        CREATE INDEX entries_accessed ON entries(accessed);
        ALTER TABLE blobs ADD COLUMN claimed REAL;
        CREATE TABLE pins (
            key TEXT PRIMARY KEY,
            added REAL NOT NULL
        );
        CREATE TABLE totals (
            id INTEGER PRIMARY KEY CHECK (id = 0),
            blob_bytes INTEGER NOT NULL,
            blobs INTEGER NOT NULL
        );
        INSERT INTO totals SELECT 0, coalesce(sum(size), 0), count(*) FROM blobs;
        CREATE TRIGGER blobs_added AFTER INSERT ON blobs BEGIN
            UPDATE totals SET blob_bytes = blob_bytes + NEW.size, blobs = blobs + 1;
        END;
        CREATE TRIGGER blobs_removed AFTER DELETE ON blobs BEGIN
            UPDATE totals SET blob_bytes = blob_bytes - OLD.size, blobs = blobs - 1;
        END;
        """
    )


#: Named migrations, applied in order, each once. Append; never edit or reorder.
MIGRATIONS: list[tuple[str, Callable[[sqlite_utils.Database], None]]] = [
    ("001_initial", _m001_initial),
    ("002_declared_hashes", _m002_declared_hashes),
    ("003_entries_by_recorded", _m003_entries_by_recorded),
    ("004_lifecycle", _m004_lifecycle),
]

_ENTRY_COLS = (
    "key, upstream, digest, size, sha256, kind, content_type, etag, last_modified, "
    "recorded, validated"
)


class Index:
    """The store's SQLite index."""

    def __init__(self, path: Path) -> None:
        self.path = path
        conn = sqlite3.connect(path, check_same_thread=False, timeout=30, isolation_level=None)
        self.db = sqlite_utils.Database(conn)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self._executor: ThreadPoolExecutor | None = None
        #: Called with a key (or None: everything) whenever this process changes what
        #: a key serves; the hot-entry cache listens here.
        self.on_change: Callable[[str | None], None] = lambda key: None
        self._migrate()

    # -- plumbing -----------------------------------------------------------

    def _migrate(self) -> None:
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied REAL NOT NULL)"
        )
        done = {r[0] for r in self.db.execute("SELECT name FROM migrations").fetchall()}
        for name, fn in MIGRATIONS:
            if name in done:
                continue
            with self.db.conn:
                self.db.execute("BEGIN IMMEDIATE")
                # Another process may have applied it while we waited for the lock.
                if self.db.execute("SELECT 1 FROM migrations WHERE name=?", [name]).fetchone():
                    continue
                fn(self.db)
                self.db.execute(
                    "INSERT INTO migrations (name, applied) VALUES (?, ?)", [name, time.time()]
                )

    def migrations(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT name FROM migrations ORDER BY name")]

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run one of this index's methods on its single worker thread."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="index")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self.db.conn.close()

    def _rows(self, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        cur = self.db.execute(sql, list(params))
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

    # -- entries ------------------------------------------------------------

    def get(self, url: str) -> Entry | None:
        rows = self._rows(f"SELECT {_ENTRY_COLS} FROM entries WHERE key = ?", [url])
        return _entry(rows[0]) if rows else None

    def put(self, entry: Entry, seeds: Iterable[str] = ()) -> None:
        """Record (or replace) the entry for a key, its blob row and its membership of
        `seeds`, atomically (an entry is never visible unpinned by its seeds); the
        blob's claim is cleared."""
        with self.db.conn:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute(
                "INSERT INTO blobs (digest, size, sha256, created) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(digest) DO UPDATE SET claimed = NULL",
                [entry.digest.hex, entry.size, entry.sha256, entry.recorded],
            )
            now = time.time()
            self.db.conn.executemany(
                "INSERT OR IGNORE INTO seed_entries (seed, key, added) VALUES (?, ?, ?)",
                [(seed, entry.key.url, now) for seed in seeds],
            )
            self.db.execute(
                f"INSERT OR REPLACE INTO entries ({_ENTRY_COLS}, accessed) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    entry.key.url,
                    entry.key.upstream,
                    entry.digest.hex,
                    entry.size,
                    entry.sha256,
                    entry.kind.value,
                    entry.content_type,
                    entry.etag,
                    entry.last_modified,
                    entry.recorded,
                    entry.validated,
                    max(entry.recorded, time.time()),
                ],
            )
        self.on_change(entry.key.url)

    def put_many(
        self,
        entries: Iterable[Entry],
        links: Iterable[tuple[str, str]] = (),
        *,
        batch: int = 1000,
    ) -> None:
        """Record entries as `put` does and seed memberships `(seed, url)` as
        `add_to_seed` does, with one transaction per `batch` entries instead of one
        per row (seed import writes thousands).

        A key's memberships are committed with its entry, so an imported entry is
        never visible unpinned by its seeds; memberships of keys not among `entries`
        follow, `batch` per transaction. Each transaction is atomic; a crash between
        two leaves the earlier ones recorded (an import run again completes them).
        Calls `on_change(None)` once per transaction.
        """
        rows = list(entries)
        seeds_of: dict[str, list[str]] = {}
        for seed, url in links:
            seeds_of.setdefault(url, []).append(seed)
        batches: list[tuple[list[Entry], list[tuple[str, str]]]] = []
        for i in range(0, len(rows), batch):
            chunk = rows[i : i + batch]
            own = [(s, e.key.url) for e in chunk for s in seeds_of.pop(e.key.url, [])]
            batches.append((chunk, own))
        rest = [(s, url) for url, seeds in seeds_of.items() for s in seeds]
        batches += [([], rest[i : i + batch]) for i in range(0, len(rest), batch)]
        for chunk, chunk_links in batches:
            now = time.time()
            with self.db.conn:
                self.db.execute("BEGIN IMMEDIATE")
                self.db.conn.executemany(
                    "INSERT INTO blobs (digest, size, sha256, created) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(digest) DO UPDATE SET claimed = NULL",
                    [(e.digest.hex, e.size, e.sha256, e.recorded) for e in chunk],
                )
                self.db.conn.executemany(
                    f"INSERT OR REPLACE INTO entries ({_ENTRY_COLS}, accessed) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            e.key.url,
                            e.key.upstream,
                            e.digest.hex,
                            e.size,
                            e.sha256,
                            e.kind.value,
                            e.content_type,
                            e.etag,
                            e.last_modified,
                            e.recorded,
                            e.validated,
                            max(e.recorded, now),
                        )
                        for e in chunk
                    ],
                )
                self.db.conn.executemany(
                    "INSERT OR IGNORE INTO seed_entries (seed, key, added) VALUES (?, ?, ?)",
                    [(s, url, now) for s, url in chunk_links],
                )
            self.on_change(None)

    def touch(self, url: str, when: float | None = None) -> None:
        """Mark a mutable entry as revalidated upstream (a 304)."""
        self.db.execute(
            "UPDATE entries SET validated = ? WHERE key = ?", [when or time.time(), url]
        )

    def delete(self, url: str) -> bool:
        with self.db.conn:
            cur = self.db.execute("DELETE FROM entries WHERE key = ?", [url])
            self.db.execute("DELETE FROM seed_entries WHERE key = ?", [url])
        self.on_change(url)
        return cur.rowcount > 0

    def entries(self, prefix: str = "", limit: int | None = None) -> list[Entry]:
        sql = f"SELECT {_ENTRY_COLS} FROM entries WHERE key >= ? AND key < ? ORDER BY key"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [_entry(r) for r in self._rows(sql, [prefix, prefix + "\U0010ffff"])]

    def recent_entries(self, limit: int = 10) -> list[Entry]:
        """The `limit` most recently recorded entries, newest first (status page)."""
        sql = f"SELECT {_ENTRY_COLS} FROM entries ORDER BY recorded DESC LIMIT ?"
        return [_entry(r) for r in self._rows(sql, [limit])]

    def nearest(self, key: CacheKey, package: str | None, limit: int = 5) -> list[str]:
        """Up to `limit` recorded keys in the same directory or of the same package."""
        found: list[str] = []
        if package:
            like = key.directory + package
            for r in self.db.execute(
                "SELECT key FROM entries WHERE key >= ? AND key < ? AND key != ? "
                "ORDER BY key DESC LIMIT ?",
                [like, like + "\U0010ffff", key.url, limit],
            ):
                found.append(r[0])
        if len(found) < limit:
            d = key.directory
            for r in self.db.execute(
                "SELECT key FROM entries WHERE key >= ? AND key < ? AND key != ? "
                "AND instr(substr(key, ?), '/') = 0 ORDER BY key LIMIT ?",
                [d, d + "\U0010ffff", key.url, len(d) + 1, limit * 2],
            ):
                if r[0] not in found:
                    found.append(r[0])
        return found[:limit]

    # -- blobs --------------------------------------------------------------

    def blob(self, digest: Digest) -> BlobInfo | None:
        row = self.db.execute(
            "SELECT size, sha256 FROM blobs WHERE digest = ?", [digest.hex]
        ).fetchone()
        return BlobInfo(digest, row[0], row[1]) if row else None

    def add_blob(self, info: BlobInfo) -> None:
        self.db.execute(
            "INSERT INTO blobs (digest, size, sha256, created) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(digest) DO NOTHING",
            [info.digest.hex, info.size, info.sha256, time.time()],
        )

    def is_quarantined(self, digest: Digest) -> bool:
        row = self.db.execute(
            "SELECT quarantined FROM blobs WHERE digest = ?", [digest.hex]
        ).fetchone()
        return bool(row and row[0])

    def set_quarantined(self, digest: Digest, quarantined: bool = True) -> None:
        self.db.execute(
            "UPDATE blobs SET quarantined = ? WHERE digest = ?", [int(quarantined), digest.hex]
        )
        self.on_change(None)  # many keys may share the blob

    def data_version(self) -> int:
        """Changes whenever another connection (process) commits to the index."""
        return int(self.db.execute("PRAGMA data_version").fetchone()[0])

    def quarantined(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT digest FROM blobs WHERE quarantined = 1")]

    def referenced_digests(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT DISTINCT digest FROM entries")}

    def is_referenced(self, digest: str) -> bool:
        return bool(self.db.execute("SELECT 1 FROM entries WHERE digest = ?", [digest]).fetchone())

    def claim_blobs(self, blobs: Iterable[BlobInfo]) -> None:
        """Mark blobs as about to be referenced (before they are put in place): no
        process removes a claimed blob (store/lifecycle.py). `put` clears the claim."""
        now = time.time()
        with self.db.conn:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.conn.executemany(
                "INSERT INTO blobs (digest, size, sha256, created, claimed) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT(digest) DO UPDATE SET claimed = ?",
                [(b.digest.hex, b.size, b.sha256, now, now, now) for b in blobs],
            )

    def is_held(self, digest: str, claimed_after: float) -> bool:
        """Whether an entry references the blob, or a commit claimed it after
        `claimed_after` (an older claim is a crashed commit's)."""
        row = self.db.execute(
            "SELECT EXISTS (SELECT 1 FROM entries WHERE digest = ?) "
            "OR EXISTS (SELECT 1 FROM blobs WHERE digest = ? AND claimed > ?)",
            [digest, digest, claimed_after],
        ).fetchone()
        return bool(row[0])

    def stored_keys(self, keys: list[str], seed: str | None = None) -> set[str]:
        """Which of `keys` have a recorded, unquarantined body (and are in `seed`)."""
        found: set[str] = set()
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            marks = ",".join("?" * len(chunk))
            sql = (
                "SELECT e.key FROM entries e JOIN blobs b ON b.digest = e.digest "
                f"WHERE b.quarantined = 0 AND e.key IN ({marks})"
            )
            params: list[str] = list(chunk)
            if seed is not None:
                sql += " AND e.key IN (SELECT key FROM seed_entries WHERE seed = ?)"
                params.append(seed)
            found.update(r[0] for r in self.db.execute(sql, params))
        return found

    def stored_under(self, prefix: str, seed: str | None = None) -> set[str]:
        """The keys starting with `prefix` that have a recorded, unquarantined body (and
        are in `seed`)."""
        sql = (
            "SELECT e.key FROM entries e JOIN blobs b ON b.digest = e.digest "
            "WHERE b.quarantined = 0 AND e.key >= ? AND e.key < ?"
        )
        params = [prefix, prefix + "\U0010ffff"]
        if seed is not None:
            sql += " AND e.key IN (SELECT key FROM seed_entries WHERE seed = ?)"
            params.append(seed)
        return {r[0] for r in self.db.execute(sql, params)}

    # -- declared hashes ----------------------------------------------------

    def declare_hashes(self, page: str, digest: str, rows: list[tuple[str, str, str]]) -> None:
        """Remember the hashes a page (with body `digest`) declares for its files."""
        with self.db.conn:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.conn.executemany(
                "INSERT OR REPLACE INTO declared_hashes (key, algorithm, hexdigest, page) "
                "VALUES (?, ?, ?, ?)",
                [(k, a, h, page) for k, a, h in rows],
            )
            self.db.execute(
                "INSERT OR REPLACE INTO pages_indexed (page, digest) VALUES (?, ?)", [page, digest]
            )

    def page_indexed(self, page: str, digest: str) -> bool:
        row = self.db.execute("SELECT digest FROM pages_indexed WHERE page = ?", [page]).fetchone()
        return bool(row and row[0] == digest)

    def declared_hash(self, key: str) -> tuple[str, str] | None:
        row = self.db.execute(
            "SELECT algorithm, hexdigest FROM declared_hashes WHERE key = ?", [key]
        ).fetchone()
        return (row[0], row[1]) if row else None

    # -- seeds --------------------------------------------------------------

    def add_to_seed(self, seed: str, url: str) -> None:
        self.db.execute(
            "INSERT OR IGNORE INTO seed_entries (seed, key, added) VALUES (?, ?, ?)",
            [seed, url, time.time()],
        )

    def in_seed(self, seed: str, url: str) -> bool:
        return (
            self.db.execute(
                "SELECT 1 FROM seed_entries WHERE seed = ? AND key = ?", [seed, url]
            ).fetchone()
            is not None
        )

    def seeds(self) -> list[dict[str, Any]]:
        return self._rows(
            "SELECT s.seed AS name, count(*) AS entries, coalesce(sum(e.size), 0) AS bytes, "
            "sum(e.key IS NULL) AS dangling "
            "FROM seed_entries s LEFT JOIN entries e ON e.key = s.key "
            "GROUP BY s.seed ORDER BY s.seed"
        )

    def seed_keys(self, seed: str) -> list[str]:
        return [
            r[0]
            for r in self.db.execute(
                "SELECT key FROM seed_entries WHERE seed = ? ORDER BY key", [seed]
            )
        ]

    def seeds_of(self, url: str) -> list[str]:
        return [
            r[0]
            for r in self.db.execute(
                "SELECT seed FROM seed_entries WHERE key = ? ORDER BY seed", [url]
            )
        ]

    def seed_bodies(self, seed: str) -> list[tuple[str, str | None, bool]]:
        """(key, digest or None if the entry is gone, quarantined) of a seed's keys."""
        return [
            (r[0], r[1], bool(r[2]))
            for r in self.db.execute(
                "SELECT s.key, e.digest, coalesce(b.quarantined, 0) FROM seed_entries s "
                "LEFT JOIN entries e ON e.key = s.key LEFT JOIN blobs b ON b.digest = e.digest "
                "WHERE s.seed = ? ORDER BY s.key",
                [seed],
            )
        ]

    def delete_seed(self, seed: str) -> int:
        """Forget a seed; its entries stay (no longer pinned by it). Returns how many
        entries it had."""
        with self.db.conn:
            cur = self.db.execute("DELETE FROM seed_entries WHERE seed = ?", [seed])
        return cur.rowcount

    # -- lifecycle (store/lifecycle.py) -------------------------------------

    def blob_totals(self) -> tuple[int, int]:
        """(bytes, count) of the blobs the index knows, from the running total."""
        row = self.db.execute("SELECT blob_bytes, blobs FROM totals").fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)

    def record_access(self, accessed: dict[str, float]) -> None:
        """When keys were last served (a batch from `Store.note_access`)."""
        with self.db.conn:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.conn.executemany(
                "UPDATE entries SET accessed = ? WHERE key = ? AND accessed < ?",
                [(t, k, t) for k, t in accessed.items()],
            )

    def pin(self, url: str) -> bool:
        """Pin one entry against eviction; False if no such entry."""
        if self.get(url) is None:
            return False
        self.db.execute("INSERT OR IGNORE INTO pins (key, added) VALUES (?, ?)", [url, time.time()])
        return True

    def unpin(self, url: str) -> bool:
        with self.db.conn:
            cur = self.db.execute("DELETE FROM pins WHERE key = ?", [url])
        return cur.rowcount > 0

    def pinned_bytes(self) -> int:
        """Bytes of the blobs that entries in a seed or pinned hold (never evicted)."""
        row = self.db.execute(
            "SELECT coalesce(sum(size), 0) FROM blobs WHERE digest IN ("
            "SELECT digest FROM entries WHERE key IN (SELECT key FROM seed_entries) "
            "OR key IN (SELECT key FROM pins))"
        ).fetchone()
        return int(row[0])

    def evictable_bytes(self) -> int:
        """Bytes eviction could free: blobs that only unpinned entries reference."""
        row = self.db.execute(
            "SELECT coalesce(sum(size), 0) FROM blobs WHERE digest IN "
            "(SELECT digest FROM entries) AND digest NOT IN (SELECT digest FROM entries "
            "WHERE key IN (SELECT key FROM seed_entries) OR key IN (SELECT key FROM pins))"
        ).fetchone()
        return int(row[0])

    def eviction_candidates(self, limit: int) -> list[tuple[str, int]]:
        """(key, size) of entries no seed and no pin holds, least recently served first."""
        return [
            (r[0], int(r[1]))
            for r in self.db.execute(
                "SELECT key, size FROM entries "
                "WHERE key NOT IN (SELECT key FROM seed_entries) "
                "AND key NOT IN (SELECT key FROM pins) ORDER BY accessed LIMIT ?",
                [limit],
            )
        ]

    def evict(self, keys: list[str]) -> list[tuple[str, int]]:
        """Delete these entries (re-checking that nothing pins them now); returns the
        (digest, size) of blobs that no entry references any more."""
        with self.db.conn:
            self.db.execute("BEGIN IMMEDIATE")
            digests: set[str] = set()
            for key in keys:
                row = self.db.execute(
                    "DELETE FROM entries WHERE key = ? "
                    "AND key NOT IN (SELECT key FROM seed_entries) "
                    "AND key NOT IN (SELECT key FROM pins) RETURNING digest",
                    [key],
                ).fetchone()
                if row:
                    digests.add(row[0])
            freed: list[tuple[str, int]] = []
            for d in sorted(digests):
                if self.db.execute("SELECT 1 FROM entries WHERE digest = ?", [d]).fetchone():
                    continue  # another key holds the same body
                row = self.db.execute("SELECT size FROM blobs WHERE digest = ?", [d]).fetchone()
                if row is not None:
                    freed.append((d, int(row[0])))
        self.on_change(None)
        return freed

    def unreferenced_blobs(self, claimed_before: float) -> dict[str, int]:
        """Blob rows (digest -> size) that no entry references and no commit claimed
        after `claimed_before`."""
        return {
            r[0]: int(r[1])
            for r in self.db.execute(
                "SELECT digest, size FROM blobs WHERE coalesce(claimed, 0) <= ? "
                "AND digest NOT IN (SELECT digest FROM entries)",
                [claimed_before],
            )
        }

    def forget_blobs(self, digests: list[str]) -> None:
        """Drop the rows of blobs whose files are gone, unless an entry took them again."""
        with self.db.conn:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.conn.executemany(
                "DELETE FROM blobs WHERE digest = ? AND digest NOT IN (SELECT digest FROM entries)",
                [(d,) for d in digests],
            )

    # -- misses -------------------------------------------------------------

    def log_miss(
        self,
        key: CacheKey,
        reason: MissReason,
        *,
        seed: str | None = None,
        method: str = "GET",
        user_agent: str | None = None,
    ) -> None:
        self.db.execute(
            "INSERT INTO misses (time, key, upstream, reason, seed, method, user_agent) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [time.time(), key.url, key.upstream, reason.name.lower(), seed, method, user_agent],
        )

    def misses(self, since: float = 0.0) -> list[dict[str, Any]]:
        """Misses since `since`, one row per key: first/last time, count, reason."""
        return self._rows(
            "SELECT key, upstream, min(time) AS first, max(time) AS last, count(*) AS count, "
            "reason, seed FROM misses WHERE time >= ? GROUP BY key ORDER BY min(time)",
            [since],
        )

    # -- stats --------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        e = self.db.execute("SELECT count(*), coalesce(sum(size), 0) FROM entries").fetchone()
        b = self.db.execute("SELECT count(*), coalesce(sum(size), 0) FROM blobs").fetchone()
        by_upstream = {
            r[0]: {"entries": r[1], "bytes": r[2]}
            for r in self.db.execute(
                "SELECT upstream, count(*), sum(size) FROM entries GROUP BY upstream"
            )
        }
        misses = self.db.execute("SELECT count(*) FROM misses").fetchone()[0]
        return {
            "entries": e[0],
            "entry_bytes": e[1],
            "blobs": b[0],
            "blob_bytes": b[1],
            "by_upstream": by_upstream,
            "misses_logged": misses,
            "quarantined": len(self.quarantined()),
        }


def _entry(r: dict[str, Any]) -> Entry:
    return Entry(
        key=CacheKey(r["upstream"], r["key"]),
        digest=Digest(r["digest"]),
        size=r["size"],
        sha256=r["sha256"],
        kind=ArtifactKind(r["kind"]),
        content_type=r["content_type"],
        etag=r["etag"],
        last_modified=r["last_modified"],
        recorded=r["recorded"],
        validated=r["validated"],
    )
