"""`cachesrv seed import SRC`: verify a bundle and merge it into a store.

All or nothing. First every check that needs no hashing (`reader.open_bundle`)
and the plan against the store (conflicts, blobs needed); then every object the
store lacks is streamed once from the bundle into the store's `tmp/`, hashed on
the way (size, blake3 and sha256), and kept there only if it matches: synced to
disk (in batches, see `_Stager`) and then named `tmp/seed-<digest>`. Only when
every object passed are the staged blobs renamed into `objects/` and the index
rows written (in batches, `Index.put_many`). A bad bundle therefore leaves the
store exactly as it was, and lists every problem.

Resumable and idempotent: blobs the store already has are neither read nor
copied; blobs staged by an interrupted import are re-hashed from the local disk
and reused rather than read from the USB disk again (start-up of `cachesrv
serve` clears `tmp/`, which only costs the re-read); a second import of the
same bundle finds nothing to do.

Merging rules, per key:
- absent from the store: added;
- present with the same digest: unchanged (seed memberships are added);
- present with another digest, both mutable (Release files, index pages): the
  later `recorded` wins, the other copy is left alone;
- present with another digest and immutable: a problem; an immutable URL never
  changes, so one of the two copies is wrong and a person must choose.
Seed memberships are only ever added. A blob the store has quarantined is
replaced by the bundle's verified copy and released from quarantine.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import blake3

from ..errors import SeedError
from ..models import ArtifactKind, BlobInfo, Digest, Entry
from ..progress import progress
from ..store import Store
from ..store.blobs import BatchSync, BlobStore
from .bundle import CHUNK, HEX64, human_bytes, rate
from .reader import Bundle, BundleObject, open_bundle, read_object
from .signing import check_trust

STAGED_PREFIX = "seed-"
#: Bytes staged between two syncs of the store's disk: what an interrupted import
#: may have to read from the bundle again (what was synced before stays staged).
#: A sync costs a journal commit and a cache flush: at 256 MiB, nothing to speak of.
SYNC_BYTES = 256 << 20
#: How far past the object being hashed the kernel is asked to read the bundle.
READAHEAD = 32 << 20


@dataclass
class ImportReport:
    src: Path
    dry_run: bool = False
    entries: int = 0
    new: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    #: Mutable entries whose local copy is newer than the bundle's
    kept: list[str] = field(default_factory=list)
    unchanged: int = 0
    links: list[tuple[str, str]] = field(default_factory=list)
    objects: int = 0
    bytes: int = 0
    present: int = 0
    released: int = 0
    seconds: float = 0.0
    #: Who signed the bundle (seed/signing.py), as `seed verify` says it.
    signer: str = "not signed"

    @property
    def changed(self) -> bool:
        return bool(self.new or self.updated or self.links or self.objects)

    def details(self) -> list[str]:
        would = "would " if self.dry_run else ""
        lines = [f"{would}add     {k}" for k in self.new]
        lines += [f"{would}update  {k}" for k in self.updated]
        lines += [f"kept    {k} (this store's copy is newer)" for k in self.kept]
        lines += [f"{would}link    {k} -> seed {s}" for s, k in self.links]
        return lines

    def summary(self) -> str:
        head = "seed import --dry-run (nothing changed):" if self.dry_run else "seed import:"
        if not self.changed:
            return (
                f"{head} nothing to do: the store already has all {self.entries} entries "
                "of this bundle and their blobs"
                + (f" ({len(self.kept)} in a newer copy)" if self.kept else "")
            )
        would = "would import" if self.dry_run else "imported"
        return (
            f"{head} {self.entries} entries ({len(self.new)} new, {len(self.updated)} updated, "
            f"{len(self.kept)} kept newer here, {self.unchanged} unchanged), "
            f"{len(self.links)} seed memberships; {would} {self.objects} objects "
            f"({human_bytes(self.bytes)}), {self.present} already in the store"
            + (f", {self.released} released from quarantine" if self.released else "")
            + f"; {self.seconds:.1f} s, {rate(self.bytes, self.seconds)}"
        )


@dataclass
class _Plan:
    puts: list[Entry] = field(default_factory=list)
    fetch: list[BundleObject] = field(default_factory=list)
    release: list[Digest] = field(default_factory=list)


def import_bundle(
    store: Store,
    src: Path,
    *,
    dry_run: bool = False,
    trusted: Sequence[Path] = (),
    allow_unsigned: bool = False,
) -> ImportReport:
    """Verify `src` and merge it into `store`; raises SeedError listing every
    problem, leaving the store unchanged. With `dry_run`, verify and report only.
    With `trusted` keys, a bundle that none of them signed is refused first
    (seed/signing.py), unless `allow_unsigned`."""
    start = time.monotonic()
    signer = check_trust(src, trusted, allow_unsigned=allow_unsigned)
    b = open_bundle(src)
    report = ImportReport(src, dry_run=dry_run, entries=len(b.entries))
    report.signer = signer.describe()
    if b.meta is None:
        raise b.reject("bad seed bundle")
    conflicts: list[str] = []
    plan = _plan(store, b, report, conflicts)
    # Once anything is wrong nothing will be imported, but every object is still
    # hashed (without copying) so that the list of problems is complete.
    check_only = dry_run or bool(b.problems or conflicts)
    staged: list[tuple[Path, Digest]] = []
    total = sum(o.size for o in plan.fetch)
    # Blobs an interrupted import verified and staged (each renamed once synced).
    with os.scandir(store.blobs.tmp) as it:
        ready = {de.name for de in it if HEX64.fullmatch(de.name.removeprefix(STAGED_PREFIX))}
    try:
        with progress("seed import", total, unit_bytes=True) as tick, _Stager(store.blobs) as st:
            ahead = _Readahead(b, plan.fetch)
            for i, o in enumerate(plan.fetch):
                final = store.blobs.tmp / f"{STAGED_PREFIX}{o.digest}"
                if o.digest in b.broken:
                    continue
                ahead.reach(i)
                if check_only:
                    problem = read_object(b, o, tick=tick)
                elif final.name in ready and _is_blob(final, o):
                    problem = None  # staged by an interrupted import; re-checked locally
                    tick(o.size)
                else:
                    problem = st.stage(b, o, final, tick)
                if problem:
                    b.problems.append(problem)
                    check_only = True  # nothing will be imported now; only list problems
                elif not check_only:
                    staged.append((final, Digest(o.digest)))
            if not check_only:
                st.finish()
            # else leaving `st` drops what it wrote and had not synced yet
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        raise SeedError(
            f"import of {src} stopped: {where}{exc.strerror}; nothing was imported yet "
            "(verified objects stay staged in the store's tmp/): fix this and run it again"
        ) from None
    if b.problems or conflicts:
        for path, _ in staged:
            path.unlink(missing_ok=True)
        what = "bad seed bundle" if b.problems else "cannot import"
        b.problems += conflicts
        raise b.reject(what)
    report.objects = len(plan.fetch)
    report.bytes = sum(o.size for o in plan.fetch)
    report.released = len(plan.release)
    if not dry_run:
        index = store.index
        # Claimed first, so that no gc or eviction (another process's) removes a blob
        # the entries below will reference, new or already here (store/lifecycle.py);
        # `put_many` clears the claims.
        index.claim_blobs(
            BlobInfo(e.digest, e.size, e.sha256) for e in {e.digest: e for e in plan.puts}.values()
        )
        # Blobs, then the index rows that point at them: a crash in between leaves
        # unreferenced blobs, which the next import skips.
        store.blobs.adopt(staged)
        for digest in plan.release:
            index.set_quarantined(digest, False)
        index.put_many(plan.puts, report.links)
    report.seconds = time.monotonic() - start
    return report


def _plan(store: Store, b: Bundle, report: ImportReport, problems: list[str]) -> _Plan:
    """Decide, per entry, what changes; list conflicts and missing blobs as problems."""
    index = store.index
    plan = _Plan()
    needed: dict[str, Entry] = {}
    for e in b.entries:
        url = e.key.url
        cur = index.get(url)
        if cur is None:
            report.new.append(url)
            plan.puts.append(e)
        elif cur.digest == e.digest:
            report.unchanged += 1
        elif e.kind is ArtifactKind.MUTABLE and cur.kind is ArtifactKind.MUTABLE:
            if e.recorded > cur.recorded:
                report.updated.append(url)
                plan.puts.append(e)
            else:
                # Ours is newer; the key's seed memberships still travel.
                report.kept.append(url)
                report.links += [(s, url) for s in e.seeds if not index.in_seed(s, url)]
                continue
        else:
            problems.append(
                f"{url}: immutable, and this store has other content for it "
                f"({cur.digest}, {cur.size} bytes) than the bundle ({e.digest}, {e.size} "
                "bytes); an immutable URL must not change: delete the wrong entry on one "
                "side (DELETE /_cachesrv/api/v1/entries?url=...) and try again"
            )
            continue
        needed.setdefault(e.digest.hex, e)
        report.links += [(s, url) for s in e.seeds if not index.in_seed(s, url)]
    quarantined = set(index.quarantined())
    for d, e in sorted(needed.items()):
        digest = Digest(d)
        if d not in quarantined and store.blobs.has(digest):
            report.present += 1
            _check_known(store, e, problems)
        elif d in b.shipped:
            plan.fetch.append(b.shipped[d])
            if d in quarantined:
                plan.release.append(digest)
        else:
            problems.append(
                f"{e.key.url}: needs blob {d}, which is neither in the bundle nor in this "
                "store (was the inventory for --missing-from made from another store?)"
            )
    want = sum(o.size for o in plan.fetch)
    free = shutil.disk_usage(store.blobs.tmp).free
    if want > free:
        problems.append(
            f"{store.root}: {human_bytes(want)} to import, {human_bytes(free)} free on its disk"
        )
    return plan


def _check_known(store: Store, e: Entry, problems: list[str]) -> None:
    """A blob the store has is not read from the bundle, so the manifest's size and
    sha256 for it must agree with the store's (they end up in the index)."""
    size = store.blobs.path(e.digest).stat().st_size
    if size != e.size:
        problems.append(
            f"manifest: {e.digest} is {e.size} bytes, the store's blob with that digest {size}"
        )
        return
    info = store.index.blob(e.digest)
    sha256 = info.sha256 if info is not None else _sha256(store.blobs.path(e.digest))
    if sha256 != e.sha256:
        problems.append(f"manifest: sha256 of {e.digest} is wrong (the store's blob: {sha256})")


def _is_blob(path: Path, o: BundleObject) -> bool:
    h = blake3.blake3()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return size == o.size and h.hexdigest() == o.digest


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


class _Readahead:
    """Asks the kernel to read the bundle's next objects (`READAHEAD` bytes past the
    one being read) while this one is hashed and written.

    Objects are read one file after the other; on a cold cache (a bundle on a USB
    disk) the disk would otherwise idle while a file is hashed, and the CPU while
    the next is read (cold, a 1 GiB import of small objects took 3.6 s instead of 4.8).
    Only a hint (posix_fadvise): what it cannot open is left to `read_object`.
    """

    def __init__(self, b: Bundle, objects: list[BundleObject]) -> None:
        self._b = b
        self._objects = objects
        self._starts = list(itertools.accumulate((o.size for o in objects), initial=0))
        self._next = 0  # the first object not asked for yet

    def reach(self, i: int) -> None:
        """Object `i` is read next: ask for those that start within `READAHEAD` of it."""
        if not hasattr(os, "posix_fadvise"):
            return
        limit = self._starts[i] + READAHEAD
        while self._next < len(self._objects) and self._starts[self._next] < limit:
            o = self._objects[self._next]
            self._next += 1
            if o.digest in self._b.broken:
                # Not read at all; and its size may be a lie (10^18 bytes in pieces of
                # one byte: 2^25 names to try before READAHEAD bytes are reached).
                continue
            left = READAHEAD  # of one big object, the kernel's own readahead reads on
            for rel, size in o.files():
                if left <= 0:
                    break
                with contextlib.suppress(OSError):
                    # O_NONBLOCK: a FIFO in a hostile bundle must not block the import.
                    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                    fd = os.open(self._b.root / rel, flags)
                    try:
                        os.posix_fadvise(fd, 0, min(size, left), os.POSIX_FADV_WILLNEED)
                    finally:
                        os.close(fd)
                left -= size


@dataclass
class _Piece:
    """Bytes of one object for the writer thread: all of a small object in one piece
    (a hand-over costs a thread switch), a big one in pieces of about `CHUNK`."""

    final: Path
    chunks: list[bytes]
    #: The object's last piece, and whether it matched (else its file goes).
    last: bool = False
    keep: bool = False


class _Stager:
    """Writes the objects being imported into the store's `tmp/`, on a thread of its own.

    The caller reads and hashes the bundle on its thread, one object after the
    other (`read_object`), and hands the bytes over; this thread creates and fills
    the `tmp/seed-*.part` files. So hashing (blake3 and sha256 of every byte)
    overlaps the store's file creation and writes, while the bundle is still read
    in order by one reader (two would make a USB hard disk seek between them), and
    what is written is exactly what was hashed.

    Files are not fsynced one by one: every `SYNC_BYTES`, and at `finish`, the
    files written since the last sync are made durable at once (`BatchSync`: one
    syncfs of the store's filesystem, the guarantee of an fsync of each; see there),
    and only then is each renamed `seed-<digest>`, the name that tells an import
    resumed after an interruption that a file is verified and on disk. A third
    thread syncs and renames a batch while the next one is written (one batch at a
    time). The first error of either is raised in the caller's next call; files
    that had not been synced are then removed, and so they are when the stager is
    left without `finish` (a bad bundle).
    """

    def __init__(self, blobs: BlobStore) -> None:
        self._tmp = blobs.tmp
        self._sync = BatchSync(blobs)  # before any file of the batch is written
        #: Pieces; an Event: sync, then set it; None: stop.
        self._q: queue.Queue[_Piece | threading.Event | None] = queue.Queue(maxsize=32)
        self.error: BaseException | None = None
        # Owned by the writer thread:
        self._fd = -1
        self._part: Path | None = None
        self._size = 0
        self._batch: list[tuple[Path, Path]] = []
        self._batch_bytes = 0
        self._syncer = ThreadPoolExecutor(1, thread_name_prefix="seed-sync")
        self._syncing: tuple[Future[None], list[tuple[Path, Path]]] | None = None
        self._thread = threading.Thread(target=self._run, name="seed-stage", daemon=True)
        self._thread.start()

    def __enter__(self) -> _Stager:
        return self

    def __exit__(self, *exc: object) -> None:
        self._q.put(None)
        self._thread.join()
        self._syncer.shutdown()
        self._sync.close()

    # -- the caller's side

    def stage(
        self, b: Bundle, o: BundleObject, final: Path, tick: Callable[[int], None]
    ) -> str | None:
        """Copy an object into `tmp/` while hashing it; once it is synced, it is
        renamed `final` if it matched. Returns the problem, or None."""
        piece = _Piece(final, [])
        held = 0

        def sink(chunk: bytes) -> None:
            nonlocal piece, held
            piece.chunks.append(chunk)
            held += len(chunk)
            if held >= CHUNK:
                self._put(piece)
                piece, held = _Piece(final, []), 0

        problem = read_object(b, o, sink=sink, tick=tick)
        piece.last, piece.keep = True, problem is None
        self._put(piece)
        return problem

    def finish(self) -> None:
        """Sync and rename every file staged so far; raises the thread's first error."""
        done = threading.Event()
        self._put(done)
        done.wait()
        if self.error is not None:
            raise self.error

    def _put(self, item: _Piece | threading.Event) -> None:
        if self.error is not None:
            raise self.error
        self._q.put(item)

    # -- the writer thread

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                self._drop()
                return
            try:
                if self.error is not None:
                    pass  # drain what the caller sent before it saw the error
                elif isinstance(item, threading.Event):
                    self._flush()
                    self._synced()
                else:
                    self._write(item)
            except BaseException as exc:
                self.error = exc
                self._drop()
            finally:
                if isinstance(item, threading.Event):
                    item.set()  # only now: `finish` must see the error of its own sync

    def _write(self, piece: _Piece) -> None:
        if piece.last and not piece.keep:
            self._drop_current()  # a bad object: its bytes need not reach the disk
            return
        if self._part is None:
            fd, name = tempfile.mkstemp(dir=self._tmp, prefix=STAGED_PREFIX, suffix=".part")
            self._fd, self._part, self._size = fd, Path(name), 0
        for chunk in piece.chunks:
            view = memoryview(chunk)
            while view:
                view = view[os.write(self._fd, view) :]
            self._size += len(chunk)
        if not piece.last:
            return
        part, self._part = self._part, None
        fd, self._fd = self._fd, -1
        try:
            os.close(fd)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        self._batch.append((part, piece.final))
        self._batch_bytes += self._size
        if self._batch_bytes >= SYNC_BYTES:
            self._flush()

    def _flush(self) -> None:
        """Have the batch synced and renamed, once the previous one is."""
        self._synced()
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        self._syncing = (self._syncer.submit(self._sync_and_rename, batch), batch)

    def _synced(self) -> None:
        """Wait for the batch being synced; raise its error."""
        if self._syncing is not None:
            fut = self._syncing[0]
            fut.result()
            self._syncing = None

    def _sync_and_rename(self, batch: list[tuple[Path, Path]]) -> None:
        self._sync.sync([part for part, _ in batch])
        for part, final in batch:
            os.replace(part, final)

    def _drop_current(self) -> None:
        """Remove the file being written, if any (best effort: whatever stays is a
        `.part`, which no import reuses and start-up removes)."""
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
        if self._part is not None:
            with contextlib.suppress(OSError):
                self._part.unlink(missing_ok=True)
            self._part = None

    def _drop(self) -> None:
        """Remove the file being written and those not synced yet."""
        self._drop_current()
        if self._syncing is not None:
            fut, batch = self._syncing
            self._syncing = None
            with contextlib.suppress(BaseException):
                fut.result()
            self._batch += batch  # those renamed are gone from their .part names
        for part, _ in self._batch:
            with contextlib.suppress(OSError):
                part.unlink(missing_ok=True)
        self._batch, self._batch_bytes = [], 0
