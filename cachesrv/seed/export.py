"""`cachesrv seed export DEST`: write (part of) a store as a bundle on a USB disk.

Resumable: re-running the same export into the same DEST keeps every object
already there whose size *and* blake3 are right (re-reading is cheaper than
re-writing on a USB disk, and it catches an object damaged since), rewrites the
rest and removes what the new selection does not hold. Each object file is
written beside its final name, fsynced and renamed (`SyncQueue`), so a name is
never a half-written file; the directories are fsynced, then `manifest.jsonl`,
then `sbom.cdx.json` (a CycloneDX SBOM of the listed artifacts, `sbom.py`), then
`cachesrv-seed.json`, last. An existing `cachesrv-seed.json` is removed first,
so a bundle is marked incomplete for as long as it is being changed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import errno
import os
import socket
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import blake3

from ..errors import SeedError
from ..models import Digest, Entry
from ..progress import progress
from ..store import Store
from .bundle import (
    CHUNK,
    FANOUT,
    MANIFEST,
    METADATA,
    MIN_SPLIT,
    OBJECT_NAME,
    OBJECTS,
    Metadata,
    SyncQueue,
    entry_line,
    fsync_dir,
    human_bytes,
    object_files,
    rate,
    temp_name,
    write_atomic,
)
from .inventory import read_inventory
from .sbom import BUNDLE_SBOM, collect, sbom_cyclonedx
from .signing import SIGNATURE, load_private, signature_document


@dataclass(frozen=True)
class ExportOptions:
    #: Only entries in these named seeds (and only these memberships are carried).
    seeds: tuple[str, ...] = ()
    #: Only entries recorded at or after this time (epoch seconds).
    since: float | None = None
    #: An inventory of the receiving store: export only what it lacks.
    missing_from: Path | None = None
    #: Split objects larger than this into `.partNNN` pieces of this size.
    split_size: int | None = None
    #: Upstream name -> kind, from the config (how the SBOM names artifacts).
    upstream_kinds: Mapping[str, str] = field(default_factory=dict)
    #: An ed25519 private key (`seed keygen`) to sign the bundle's metadata with.
    sign: Path | None = None


@dataclass
class Selection:
    #: (entry with its seeds, whether its blob is shipped), ordered by key
    entries: list[tuple[Entry, bool]] = field(default_factory=list)
    #: Blobs to ship: digest -> size
    objects: dict[str, int] = field(default_factory=dict)
    #: Entries left out, and why (printed as warnings)
    skipped: list[str] = field(default_factory=list)
    description: dict[str, object] = field(default_factory=dict)


@dataclass
class ExportReport:
    dest: Path
    entries: int = 0
    objects: int = 0
    bytes: int = 0
    written: int = 0
    written_bytes: int = 0
    reused: int = 0
    removed: int = 0
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        done = f"{self.written} written, {self.reused} already there"
        if self.removed:
            done += f", {self.removed} stale files removed"
        speed = (
            f"{human_bytes(self.written_bytes)} written in {self.seconds:.1f} s, "
            f"{rate(self.written_bytes, self.seconds)}"
            if self.written
            else f"nothing to write ({self.seconds:.1f} s)"
        )
        return (
            f"seed export: {self.entries} entries, {self.objects} objects "
            f"({human_bytes(self.bytes)}) -> {self.dest} [{done}]; {speed}"
            + (f"; {len(self.skipped)} skipped (listed above)" if self.skipped else "")
        )


def select(store: Store, opts: ExportOptions) -> Selection:
    """The entries to list and the blobs to ship, per the options."""
    index = store.index
    sel = Selection()
    names = [r["name"] for r in index.seeds()]
    unknown = [s for s in opts.seeds if s not in names]
    if unknown:
        raise SeedError(
            f"no seed named {', '.join(map(repr, unknown))} in {store.root} "
            "(see `cachesrv seed list`)"
        )
    members: dict[str, set[str]] = {}
    for name in opts.seeds or names:
        for key in index.seed_keys(name):
            members.setdefault(key, set()).add(name)
    entries = index.entries()
    if opts.seeds:
        have = {e.key.url for e in entries}
        sel.skipped += [
            f"{k}: in seed(s) {', '.join(sorted(s))} but has no entry"
            for k, s in sorted(members.items())
            if k not in have
        ]
        entries = [e for e in entries if e.key.url in members]
    if opts.since is not None:
        since = opts.since
        entries = [e for e in entries if e.recorded >= since]
    inv = read_inventory(opts.missing_from) if opts.missing_from else None
    quarantined = set(index.quarantined())
    for e in entries:
        seeds = members.get(e.key.url, set())
        e = dataclasses.replace(e, seeds=tuple(sorted(seeds)))
        d = e.digest.hex
        if inv is not None:
            if inv.entries.get(e.key.url) == d and seeds <= inv.seeds_of.get(e.key.url, set()):
                continue  # the other side has this entry, blob and memberships
            if d in inv.digests:
                sel.entries.append((e, False))
                continue
        why = _unusable(store, e, quarantined)
        if why:
            sel.skipped.append(f"{e.key.url}: {why} (run `cachesrv fsck`)")
            continue
        sel.entries.append((e, True))
        sel.objects[d] = e.size
    sel.description = {
        "seeds": list(opts.seeds),
        "since": (
            dt.datetime.fromtimestamp(opts.since, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            if opts.since is not None
            else None
        ),
        "missing_from": {"host": inv.host, "created": inv.created} if inv else None,
    }
    return sel


def _unusable(store: Store, e: Entry, quarantined: set[str]) -> str | None:
    if e.digest.hex in quarantined:
        return f"blob {e.digest} is quarantined"
    try:
        size = store.blobs.path(e.digest).stat().st_size
    except FileNotFoundError:
        return f"blob {e.digest} is missing from the store"
    if size != e.size:
        return f"blob {e.digest} is {size} bytes, its entry says {e.size}"
    return None


def export_bundle(store: Store, dest: Path, opts: ExportOptions) -> ExportReport:
    """Write the selection to `dest` as a bundle; resumable (see the module doc)."""
    start = time.monotonic()
    if opts.split_size is not None and opts.split_size < MIN_SPLIT:
        raise SeedError(f"--split-size must be at least {human_bytes(MIN_SPLIT)}")
    signing_key = load_private(opts.sign) if opts.sign is not None else None
    sel = select(store, opts)
    report = ExportReport(dest, skipped=list(sel.skipped))
    try:
        existing = _prepare(dest)
        split = opts.split_size
        wanted = {
            rel: size for d, n in sel.objects.items() for rel, size in object_files(d, n, split)
        }
        for rel in sorted(set(existing) - set(wanted)):
            (dest / rel).unlink()
            report.removed += 1
        bad: set[str] = set()
        touched: set[Path] = set()
        total = sum(sel.objects.values())
        with progress("seed export", total, unit_bytes=True) as tick, SyncQueue() as syncq:
            for d, size in sorted(sel.objects.items()):
                files = object_files(d, size, split)
                complete = all(existing.get(rel) == n for rel, n in files)
                if complete and _hash_files(dest, files, tick) == d:
                    report.reused += 1
                    continue
                sub = dest / OBJECTS / d[:2]
                if sub not in touched:
                    sub.mkdir(exist_ok=True)
                    touched.add(sub)
                problem = _copy(store.blobs.path(Digest(d)), dest, d, files, tick, syncq)
                if problem:
                    bad.add(d)
                    report.skipped.append(problem)
                    for rel, _ in files:  # an older copy left from an earlier export
                        (dest / rel).unlink(missing_ok=True)
                    continue
                report.written += 1
                report.written_bytes += size
            syncq.wait()
        for sub in sorted(touched):
            fsync_dir(sub)
        fsync_dir(dest / OBJECTS)
        listed = [(e, shipped) for e, shipped in sel.entries if e.digest.hex not in bad]
        manifest = "".join(entry_line(e, shipped) + "\n" for e, shipped in listed).encode()
        write_atomic(dest / MANIFEST, manifest)
        artifacts = collect(store, [e for e, _ in listed], opts.upstream_kinds)
        subject = "seed bundle of " + (
            "seed " + ", ".join(opts.seeds) if opts.seeds else f"store {store.root}"
        )
        sbom = sbom_cyclonedx(artifacts, subject).encode()
        write_atomic(dest / BUNDLE_SBOM, sbom)
        objects = {d: n for d, n in sel.objects.items() if d not in bad}
        meta = Metadata(
            entries=len(listed),
            objects=len(objects),
            bytes=sum(objects.values()),
            manifest_blake3=blake3.blake3(manifest).hexdigest(),
            sbom_blake3=blake3.blake3(sbom).hexdigest(),
            split_size=split,
            source_host=socket.gethostname(),
            selection=sel.description,
        )
        metadata = meta.to_json().encode()
        if signing_key is not None:  # before the metadata, which is written last
            write_atomic(dest / SIGNATURE, signature_document(signing_key, metadata))
        write_atomic(dest / METADATA, metadata)
    except OSError as exc:
        hint = " (a FAT32 disk holds files up to 4 GiB - 1: use --split-size fat32)"
        raise SeedError(
            f"export stopped: {exc.filename or dest}: {exc.strerror}"
            + (hint if exc.errno == errno.EFBIG else "")
            + "; the bundle is incomplete: fix this and run the same export again to resume"
        ) from None
    report.entries, report.objects, report.bytes = meta.entries, meta.objects, meta.bytes
    report.seconds = time.monotonic() - start
    return report


def _prepare(dest: Path) -> dict[str, int]:
    """Make `dest` a bundle being written: empty, or an earlier (maybe partial)
    bundle of ours. Returns the object files already there: path -> size."""
    if dest.exists() and not dest.is_dir():
        raise SeedError(f"{dest}: not a directory")
    dest.mkdir(parents=True, exist_ok=True)
    ours = {METADATA, MANIFEST, OBJECTS, BUNDLE_SBOM, SIGNATURE}
    ours |= {temp_name(Path(n)).name for n in ours}
    with os.scandir(dest) as it:
        strangers = sorted(de.name for de in it if de.name not in ours)
    if strangers:
        raise SeedError(
            f"{dest} is neither empty nor a seed bundle; choose an empty directory",
            [f"{n}: not part of a seed bundle" for n in strangers[:20]],
        )
    # From here on the bundle is incomplete until the metadata is written again.
    (dest / METADATA).unlink(missing_ok=True)
    (dest / SIGNATURE).unlink(missing_ok=True)  # made anew, or the bundle is unsigned
    for n in (METADATA, MANIFEST, BUNDLE_SBOM, SIGNATURE):
        temp_name(dest / n).unlink(missing_ok=True)
    fsync_dir(dest)
    objects = dest / OBJECTS
    if objects.is_symlink():
        raise SeedError(f"{objects}: a symlink; a bundle holds only plain files")
    objects.mkdir(exist_ok=True)
    found: dict[str, int] = {}
    with os.scandir(objects) as top:
        subs = [(sub.name, sub.path, sub.is_dir(follow_symlinks=False)) for sub in top]
    for name, path, is_dir in subs:
        if not (is_dir and FANOUT.fullmatch(name)):
            strangers.append(f"{OBJECTS}/{name}")
            continue
        with os.scandir(path) as it:
            files = list(it)
        for de in files:
            rel = f"{OBJECTS}/{name}/{de.name}"
            st = de.stat(follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                strangers.append(rel)
            elif OBJECT_NAME.fullmatch(de.name) and de.name.startswith(name):
                found[rel] = st.st_size
            elif OBJECT_NAME.fullmatch(de.name.removeprefix(".").removesuffix(".tmp")):
                os.unlink(de.path)  # left by an interrupted export
            else:
                strangers.append(rel)
    if strangers:
        raise SeedError(
            f"{dest}: files that no export wrote are in {OBJECTS}/; remove them or "
            "choose an empty directory",
            strangers[:20],
        )
    return found


def _hash_files(dest: Path, files: list[tuple[str, int]], tick: Callable[[int], None]) -> str:
    h = blake3.blake3()
    for rel, _ in files:
        with (dest / rel).open("rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
                tick(len(chunk))
    return str(h.hexdigest())


def _copy(
    src: Path,
    dest: Path,
    digest: str,
    files: list[tuple[str, int]],
    tick: Callable[[int], None],
    syncq: SyncQueue,
) -> str | None:
    """Copy a store blob into its bundle files, checking its blake3 on the way;
    `syncq` fsyncs them and renames them into place. Returns why the blob was not
    exported (a damaged store blob), or None."""
    h = blake3.blake3()
    temps: list[tuple[Path, Path]] = []
    try:
        try:
            f = src.open("rb")
        except FileNotFoundError:
            return f"blob {digest} vanished from the store during the export"
        with f:
            for rel, size in files:
                final = dest / rel
                tmp = temp_name(final)
                temps.append((tmp, final))
                with tmp.open("wb") as out:
                    left = size
                    while left:
                        chunk = f.read(min(CHUNK, left))
                        if not chunk:
                            return f"blob {digest} is shorter than its entry (run `cachesrv fsck`)"
                        h.update(chunk)
                        out.write(chunk)
                        left -= len(chunk)
                        tick(len(chunk))
        if h.hexdigest() != digest:
            return f"blob {digest} in the store is corrupt, not exported (run `cachesrv fsck`)"
        syncq.submit(temps)
        temps = []
        return None
    finally:
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)
