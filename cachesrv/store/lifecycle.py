"""Store lifecycle: quota, eviction, and garbage collection (docs/operations.md).

- `Lifecycle.make_room(size)` runs on the index's single thread, so reservations are
  serialised. It checks `[store] max_size` (blob bytes + bodies being recorded + this
  one) and `min_free` (the filesystem's free space less what recordings in progress
  will still write), evicts the least recently served entries that no seed and no pin
  holds until the body fits, and raises `InsufficientStorage` (507) when it cannot.
- `collect` (`cachesrv gc`, and the server some time after it evicted) removes blobs
  that no entry references.

A commit claims its blob in the index (`blobs.claimed`) before it puts the file in
place (renaming it into `objects/`, or touching the identical one already there), and
the entry that references it clears the claim. Removal moves the file aside, then asks
the index whether an entry references the blob or a commit claimed it, and puts it back
if so. Whatever the interleaving, a blob an entry is about to reference survives: a
claim made before the check is seen; a commit that claims after it finds the file gone
(its touch fails) and puts its own copy in place. `cachesrv gc` also spares files
younger than its grace period (by mtime), as a second guard for writers that do not
claim.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..config import StoreLimits
from ..errors import InsufficientStorage
from ..models import Digest
from .blobs import BlobStore
from .index import Index

#: `cachesrv gc`'s default grace period (file age).
GC_GRACE = 3600.0
#: A claim older than this is a crashed commit's, and no longer protects its blob.
CLAIM_TTL = 3600.0
#: After evicting, the server sweeps unreferenced blobs at most this often.
SWEEP_EVERY = 600.0


@dataclass(eq=False)
class Reservation:
    """Room promised to one body being recorded; `written` is what is on disk already."""

    size: int
    written: int = 0


@dataclass(frozen=True)
class Usage:
    """What the status page and /metrics show of the store's space."""

    blob_bytes: int
    blobs: int
    max_size: int | None
    disk_bytes: int
    disk_free: int
    min_free: int


@dataclass
class Counters:
    """Since this process started."""

    evictions: int = 0
    evicted_bytes: int = 0
    refusals: int = 0
    gc_runs: int = 0
    gc_freed_bytes: int = 0


class Lifecycle:
    """Quota and eviction for one store, in one server process."""

    def __init__(self, blobs: BlobStore, index: Index, limits: StoreLimits) -> None:
        self.blobs = blobs
        self.index = index
        self.limits = limits
        self.counters = Counters()
        self.last_eviction = 0.0
        self.last_sweep = 0.0
        self._reservations: set[Reservation] = set()
        self._lock = threading.Lock()

    def usage(self) -> Usage:
        blob_bytes, blobs = self.index.blob_totals()
        disk_bytes, disk_free = _disk(self.blobs.root)
        return Usage(
            blob_bytes=blob_bytes,
            blobs=blobs,
            max_size=self.limits.max_size,
            disk_bytes=disk_bytes,
            disk_free=disk_free,
            min_free=self.limits.min_free_bytes(disk_bytes),
        )

    # -- reservations (on the index thread) -------------------------------------------

    def make_room(self, size: int, on_disk: int = 0) -> Reservation:
        """Reserve `size` bytes for a body (`on_disk` of them written already: a body of
        undeclared size is reserved when complete), evicting what must go; 507 if it
        cannot fit.

        Nothing is evicted unless evicting can make the body fit: a disk filled by
        something else must not empty the cache for nothing."""
        with self._lock:
            short, why = self._shortfall(size, on_disk)
            if short > 0:
                short -= self._sweep_unreferenced()
            if short > 0 and self.index.evictable_bytes() >= short:
                self._evict(short)
                short, why = self._shortfall(size, on_disk)
            if short > 0:
                self.counters.refusals += 1
                raise InsufficientStorage(why)
            reservation = Reservation(size, written=on_disk)
            self._reservations.add(reservation)
            return reservation

    def release(self, reservation: Reservation) -> None:
        with self._lock:
            self._reservations.discard(reservation)

    def _shortfall(self, size: int, on_disk: int = 0) -> tuple[int, str]:
        """How many bytes over a limit this body would be, and what to tell the user."""
        pending = sum(r.size for r in self._reservations)
        unwritten = sum(max(r.size - r.written, 0) for r in self._reservations)
        usage = self.usage()
        short, why = 0, ""
        if usage.max_size is not None:
            over = usage.blob_bytes + pending + size - usage.max_size
            if over > 0:
                short = over
                why = (
                    f"the store is full: max_size {_h(usage.max_size)} holds "
                    f"{_h(usage.blob_bytes)} of blobs (and {_h(pending)} being recorded); "
                    f"this body needs {_h(size)} and nothing more may be evicted: "
                    f"{_h(self.index.pinned_bytes())} are held by seeds and pins"
                )
        over = usage.min_free + unwritten + size - on_disk - usage.disk_free
        if over > short:
            short = over
            why = (
                f"the disk of {self.blobs.root} is full: {_h(usage.disk_free)} free, "
                f"min_free keeps {_h(usage.min_free)} free and recordings in progress "
                f"need {_h(unwritten)} more; this body needs {_h(size)} and nothing more "
                "may be evicted"
            )
        if short > 0:
            why += (
                ". Free space with: cachesrv gc (unreferenced blobs), cachesrv seed delete "
                "NAME or cachesrv unpin URL (then entries may be evicted), or raise "
                "[store] max_size / lower min_free"
            )
        return short, why

    def _sweep_unreferenced(self) -> int:
        """Remove blobs no entry references (a replaced index page, a deleted entry),
        and not claimed; returns the bytes freed."""
        freed = 0
        for digest, size in self.index.unreferenced_blobs(time.time() - CLAIM_TTL).items():
            if remove_blob(self.blobs, self.index, Digest(digest)):
                freed += size
        self.counters.gc_freed_bytes += freed
        return freed

    def _evict(self, target: int) -> int:
        """Evict least recently served entries until `target` bytes are freed (or none
        is left to evict); returns the bytes freed."""
        freed = 0
        while freed < target:
            candidates = self.index.eviction_candidates(256)
            if not candidates:
                break
            batch, planned = [], 0
            for key, size in candidates:
                batch.append(key)
                planned += size
                if freed + planned >= target:
                    break
            for digest, size in self.index.evict(batch):
                if remove_blob(self.blobs, self.index, Digest(digest)):
                    freed += size
            self.counters.evictions += len(batch)
            self.last_eviction = time.time()
        self.counters.evicted_bytes += freed
        return freed

    def space(self) -> dict[str, int | bool | None]:
        """Space and lifecycle figures for the stats API, /metrics and the status page
        (on the index thread: pinned bytes are a query)."""
        usage = self.usage()
        c = self.counters
        return {
            "blob_bytes": usage.blob_bytes,
            "max_size": usage.max_size,
            "disk_bytes": usage.disk_bytes,
            "disk_free": usage.disk_free,
            "min_free": usage.min_free,
            "pinned_bytes": self.index.pinned_bytes(),
            "low_space": usage.disk_free < 2 * usage.min_free
            or (usage.max_size is not None and usage.blob_bytes > 0.9 * usage.max_size),
            "evictions": c.evictions,
            "evicted_bytes": c.evicted_bytes,
            "insufficient_storage": c.refusals,
            "gc_runs": c.gc_runs,
            "gc_freed_bytes": c.gc_freed_bytes,
        }

    def wants_sweep(self, now: float) -> bool:
        """Whether the server should run `collect` now: it evicted since the last sweep,
        and the last sweep is long enough ago."""
        return self.last_eviction > self.last_sweep and now - self.last_sweep > SWEEP_EVERY


# -- removal and garbage collection ---------------------------------------------------


def remove_blob(blobs: BlobStore, index: Index, digest: Digest, grace: float = 0.0) -> bool:
    """Remove an unreferenced, unclaimed blob's file and row; True if it went. With
    `grace`, a file younger than that many seconds is kept (see the module doc)."""
    path = blobs.path(digest)
    if grace > 0:
        with contextlib.suppress(FileNotFoundError):
            if time.time() - path.stat().st_mtime < grace:
                return False
    aside = blobs.tmp / f"gc-{digest.hex}"
    try:
        os.replace(path, aside)
        moved = True
    except FileNotFoundError:
        moved = False
    if index.is_held(digest.hex, time.time() - CLAIM_TTL):
        if moved:  # identical bytes, whoever placed a copy meanwhile
            os.replace(aside, path)
        return False
    if moved:
        aside.unlink()
    index.forget_blobs([digest.hex])
    return True


@dataclass
class GcReport:
    removed: list[tuple[str, int]] = field(default_factory=list)
    young: int = 0
    dry_run: bool = False

    @property
    def freed(self) -> int:
        return sum(size for _, size in self.removed)

    def summary(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        text = f"gc: {verb} {len(self.removed)} unreferenced blobs, {_h(self.freed)}"
        if self.young:
            text += f"; kept {self.young} younger than the grace period"
        return text


def collect(
    blobs: BlobStore,
    index: Index,
    *,
    grace: float = GC_GRACE,
    dry_run: bool = False,
    tick: Callable[[int], None] = lambda n: None,
) -> GcReport:
    """Remove blobs that no entry references and whose files are older than `grace`
    seconds (files in `objects/` without a row too, rows without a file too)."""
    report = GcReport(dry_run=dry_run)
    now = time.time()
    referenced = index.referenced_digests()
    rows = index.unreferenced_blobs(now - CLAIM_TTL)
    seen: set[str] = set()
    for digest in blobs.iter_digests():
        tick(1)
        seen.add(digest.hex)
        if digest.hex in referenced:
            continue
        size = rows.get(digest.hex)
        try:
            st = blobs.path(digest).stat()
        except FileNotFoundError:
            continue
        if now - st.st_mtime < grace:
            report.young += 1
            continue
        if dry_run or remove_blob(blobs, index, digest, grace):
            report.removed.append((digest.hex, size if size is not None else st.st_size))
    orphans = [d for d in rows if d not in seen and not index.is_referenced(d)]
    if orphans and not dry_run:
        index.forget_blobs(orphans)
    return report


def sweep(root: Path, grace: float = GC_GRACE) -> GcReport:
    """`collect` over its own index connection (another thread of the server, or any
    process: like `cachesrv gc` beside a running server)."""
    blobs = BlobStore(root)
    index = Index(root / "index.sqlite")
    try:
        return collect(blobs, index, grace=grace)
    finally:
        index.close()


def _disk(root: Path) -> tuple[int, int]:
    """(size, free for unprivileged writers) of the filesystem holding `root`."""
    with contextlib.suppress(OSError):
        st = os.statvfs(root)
        return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
    return 0, 0


def _h(n: int) -> str:
    """Bytes for people: 30.0 MiB."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
