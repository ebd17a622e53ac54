"""`cachesrv seed import SRC`: verify a bundle and merge it into a store.

All or nothing. First every check that needs no hashing (`reader.open_bundle`)
and the plan against the store (conflicts, blobs needed); then every object the
store lacks is streamed once from the bundle into the store's `tmp/`, hashed on
the way (size, blake3 and sha256), and kept there, fsynced, as
`tmp/seed-<digest>` only if it matches. Only when every object passed are the
staged blobs renamed into `objects/` and the index rows written. A bad bundle
therefore leaves the store exactly as it was, and lists every problem.

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

import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import blake3

from ..errors import SeedError
from ..models import ArtifactKind, Digest, Entry
from ..progress import progress
from ..store import Store
from .bundle import CHUNK, HEX64, SyncQueue, human_bytes, rate
from .reader import Bundle, BundleObject, open_bundle, read_object

STAGED_PREFIX = "seed-"


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


def import_bundle(store: Store, src: Path, *, dry_run: bool = False) -> ImportReport:
    """Verify `src` and merge it into `store`; raises SeedError listing every
    problem, leaving the store unchanged. With `dry_run`, verify and report only."""
    start = time.monotonic()
    b = open_bundle(src)
    report = ImportReport(src, dry_run=dry_run, entries=len(b.entries))
    if b.meta is None:
        raise b.reject("bad seed bundle")
    conflicts: list[str] = []
    plan = _plan(store, b, report, conflicts)
    # Once anything is wrong nothing will be imported, but every object is still
    # hashed (without copying) so that the list of problems is complete.
    check_only = dry_run or bool(b.problems or conflicts)
    staged: list[tuple[Path, Digest]] = []
    total = sum(o.size for o in plan.fetch)
    # Blobs an interrupted import verified and staged (each renamed after its fsync).
    with os.scandir(store.blobs.tmp) as it:
        ready = {de.name for de in it if HEX64.fullmatch(de.name.removeprefix(STAGED_PREFIX))}
    try:
        with progress("seed import", total, unit_bytes=True) as tick, SyncQueue() as syncq:
            for o in plan.fetch:
                final = store.blobs.tmp / f"{STAGED_PREFIX}{o.digest}"
                if o.digest in b.broken:
                    continue
                if check_only:
                    problem = read_object(b, o, tick=tick)
                elif final.name in ready and _is_blob(final, o):
                    problem = None  # staged by an interrupted import; re-checked locally
                    tick(o.size)
                else:
                    problem = _stage(b, o, final, tick, syncq)
                if problem:
                    b.problems.append(problem)
                    check_only = True  # nothing will be imported now; only list problems
                elif not check_only:
                    staged.append((final, Digest(o.digest)))
            syncq.wait()
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
        # Blobs first, then the index rows that point at them: a crash in between
        # leaves unreferenced blobs, which the next import skips.
        store.blobs.adopt(staged)
        index = store.index
        for digest in plan.release:
            index.set_quarantined(digest, False)
        for entry in plan.puts:
            index.put(entry)
        for seed, url in report.links:
            index.add_to_seed(seed, url)
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


def _stage(
    b: Bundle, o: BundleObject, final: Path, tick: Callable[[int], None], syncq: SyncQueue
) -> str | None:
    """Copy an object into the store's tmp/ while hashing it; when it matches,
    `syncq` fsyncs it and renames it to `final`. Returns the problem, or None."""
    fd, name = tempfile.mkstemp(dir=final.parent, prefix=STAGED_PREFIX, suffix=".part")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            problem = read_object(b, o, sink=out.write, tick=tick)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if problem is None:
        syncq.submit([(tmp, final)])
    else:
        tmp.unlink()
    return problem
