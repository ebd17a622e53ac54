"""Reading a bundle without trusting it: every check that `seed verify` and
`seed import` make.

`open_bundle` makes the checks that need no hashing (metadata, manifest, every
path, file type and size) and collects every problem rather than stopping at
the first. `read_object` streams one object's bytes (reassembling pieces in
order) through blake3 and sha256, so a caller can hash and copy in one read.
Nothing here writes anywhere.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import blake3

from ..errors import SeedError
from ..models import Entry
from ..progress import progress
from .bundle import (
    BUNDLE_SBOM,
    CHUNK,
    FANOUT,
    MANIFEST,
    MAX_LINE,
    METADATA,
    OBJECT_NAME,
    OBJECTS,
    Metadata,
    UnsupportedBundle,
    iter_object_files,
    parse_entry,
    parse_metadata,
    piece_count,
    piece_name,
)


@dataclass(frozen=True)
class BundleObject:
    """One blob the bundle ships; its files follow from its size and the split size."""

    digest: str
    size: int
    sha256: str
    split: int | None = None

    @property
    def pieces(self) -> int:
        return piece_count(self.size, self.split)

    def files(self) -> Iterator[tuple[str, int]]:
        return iter_object_files(self.digest, self.size, self.split)

    def expected_size(self, part: str | None) -> int | None:
        """The size of the file with this `.partNNN` suffix (None: the whole file),
        or None when the object's layout has no such file."""
        if part is None:
            return self.size if self.pieces == 0 else None
        i = int(part)
        if self.split is None or f"{i:03d}" != part or i >= self.pieces:
            return None
        return min(self.split, self.size - i * self.split)

    @property
    def label(self) -> str:
        whole = piece_name(self.digest, None)
        return whole if self.pieces == 0 else f"{whole}.part000-{self.pieces - 1:03d}"


@dataclass
class Bundle:
    """What `open_bundle` found. `problems` is empty for a bundle that passed."""

    root: Path
    meta: Metadata | None = None
    entries: list[Entry] = field(default_factory=list)
    #: Blobs in the bundle, by digest.
    shipped: dict[str, BundleObject] = field(default_factory=dict)
    #: Blobs the entries need that the bundle does not ship (`--missing-from`):
    #: digest -> (size, sha256). The receiving store must already hold them.
    assumed: dict[str, tuple[int, str]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    #: Shipped objects already reported missing or of the wrong size (not worth hashing).
    broken: set[str] = field(default_factory=set)

    @property
    def bytes(self) -> int:
        return sum(o.size for o in self.shipped.values())

    def reject(self, what: str) -> SeedError:
        n = len(self.problems)
        return SeedError(
            f"{what} {self.root}: {n} problem{'s' if n != 1 else ''}", list(self.problems)
        )


def open_bundle(root: Path) -> Bundle:
    """Check everything that needs no hashing; collect every problem found."""
    if not root.is_dir():
        raise SeedError(f"{root}: not a directory (a seed bundle is a directory)")
    b = Bundle(root)
    try:
        top = _scan_top(b)
    except OSError as exc:
        raise SeedError(f"{root}: cannot read: {exc.strerror}") from None
    if METADATA not in top:
        b.problems.append(
            f"{METADATA} is missing: the bundle is incomplete (an interrupted export? "
            "run the same `cachesrv seed export` into it again to finish it)"
        )
    else:
        try:
            b.meta = parse_metadata(read_small(root / METADATA))
        except UnsupportedBundle as exc:
            # Nothing else can be interpreted with certainty: check no further.
            b.problems.append(str(exc))
            return b
        except (ValueError, OSError) as exc:
            b.problems.append(str(exc))
    if MANIFEST in top:
        try:
            _read_manifest(b)
        except OSError as exc:
            b.problems.append(f"{MANIFEST}: cannot read: {exc.strerror}")
    else:
        b.problems.append(f"{MANIFEST} is missing")
    if b.meta is not None:
        _check_counts(b, b.meta)
        _check_sbom(b, b.meta)
    if OBJECTS in top:
        try:
            _check_objects(b)
        except OSError as exc:
            b.broken.update(b.shipped)
            b.problems.append(f"{exc.filename}: cannot read: {exc.strerror}")
    elif b.shipped:
        b.broken.update(b.shipped)
        b.problems.append(f"{OBJECTS}/ is missing ({len(b.shipped)} objects expected)")
    return b


def _check_sbom(b: Bundle, meta: Metadata) -> None:
    """The SBOM a bundle carries must be the one its metadata (and signature) pins."""
    if meta.sbom_blake3 is None:
        return  # an older bundle: its SBOM, if any, is informational
    path = b.root / BUNDLE_SBOM
    try:
        digest = _blake3_of(path)
    except OSError as exc:
        b.problems.append(f"{BUNDLE_SBOM}: cannot read: {exc.strerror}")
        return
    except ValueError as exc:
        b.problems.append(f"{BUNDLE_SBOM}: {exc}")
        return
    if digest != meta.sbom_blake3:
        b.problems.append(
            f"{BUNDLE_SBOM}: blake3 is {digest}, the metadata says {meta.sbom_blake3}"
        )


def _scan_top(b: Bundle) -> set[str]:
    """The bundle's own top-level names that are present with the right type.

    Other names are not part of the bundle and are never read (a USB disk may hold
    other files); but a symlink or device anywhere is refused.
    """
    found: set[str] = set()
    wanted = {METADATA: stat.S_ISREG, MANIFEST: stat.S_ISREG, OBJECTS: stat.S_ISDIR}
    with os.scandir(b.root) as it:
        for de in it:
            mode = de.stat(follow_symlinks=False).st_mode
            if stat.S_ISLNK(mode) or not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                b.problems.append(f"{de.name}: {_kind(mode)}; a bundle holds only plain files")
            elif de.name in wanted:
                if wanted[de.name](mode):
                    found.add(de.name)
                else:
                    b.problems.append(f"{de.name}: {_kind(mode)} where a bundle has a file")
    return found


def _open_plain(path: Path) -> int:
    """A descriptor of a plain file of the bundle: never through a symlink (OSError),
    never a FIFO or device (ValueError; O_NONBLOCK: opening a FIFO must not block)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise ValueError(f"{path.name}: {_kind(mode)}; a bundle holds only plain files")
    return fd


def read_small(path: Path) -> bytes:
    """A small file of the bundle (metadata, signature): plain, at most `MAX_LINE`
    bytes; ValueError or OSError otherwise."""
    with os.fdopen(_open_plain(path), "rb") as f:
        data = f.read(MAX_LINE + 1)
    if len(data) > MAX_LINE:
        raise ValueError(f"{path.name} is larger than {MAX_LINE} bytes")
    return data


def _blake3_of(path: Path) -> str:
    h = blake3.blake3()
    with os.fdopen(_open_plain(path), "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _read_manifest(b: Bundle) -> None:
    h = blake3.blake3()
    seen: dict[str, int] = {}
    objects: dict[str, tuple[int, str, bool, int]] = {}
    fd = os.open(b.root / MANIFEST, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        lineno = 0
        while raw := f.readline(MAX_LINE + 1):
            lineno += 1
            h.update(raw)
            where = f"{MANIFEST} line {lineno}"
            if len(raw) > MAX_LINE:
                b.problems.append(f"{where}: longer than {MAX_LINE} bytes")
                # Skip the rest of this line without keeping it.
                while raw and not raw.endswith(b"\n"):
                    raw = f.readline(MAX_LINE)
                    h.update(raw)
                continue
            if not raw.strip():
                b.problems.append(f"{where}: empty line")
                continue
            try:
                entry, in_bundle = parse_entry(raw)
            except ValueError as exc:
                b.problems.append(f"{where}: {exc}")
                continue
            url, d = entry.key.url, entry.digest.hex
            if url in seen:
                b.problems.append(f"{where}: key {url} is listed again (first on line {seen[url]})")
                continue
            seen[url] = lineno
            prev = objects.get(d)
            if prev is None:
                objects[d] = (entry.size, entry.sha256, in_bundle, lineno)
            elif prev[:3] != (entry.size, entry.sha256, in_bundle):
                b.problems.append(
                    f"{where}: digest {d} has a different size, sha256 or in_bundle "
                    f"than on line {prev[3]}"
                )
                continue
            b.entries.append(entry)
    if b.meta is not None and h.hexdigest() != b.meta.manifest_blake3:
        b.problems.append(
            f"{MANIFEST} does not match {METADATA} (blake3 {h.hexdigest()}, "
            f"expected {b.meta.manifest_blake3}): changed or damaged after export"
        )
    split = b.meta.split_size if b.meta is not None else None
    for d, (size, sha256, in_bundle, _) in sorted(objects.items()):
        if in_bundle:
            b.shipped[d] = BundleObject(d, size, sha256, split)
        else:
            b.assumed[d] = (size, sha256)


def _check_counts(b: Bundle, meta: Metadata) -> None:
    got = {"entries": len(b.entries), "objects": len(b.shipped), "bytes": b.bytes}
    for name, value in got.items():
        want = getattr(meta, name)
        if want != value:
            b.problems.append(f"{METADATA} says {want} {name}, {MANIFEST} lists {value}")


def _check_objects(b: Bundle) -> None:
    """Every file under objects/ is expected, plain and of the right size; none is missing.

    Driven by what is on the disk, not by the sizes the manifest claims, so that a
    hostile size (10^18 bytes in 64 KiB pieces) costs nothing.
    """
    found: dict[str, set[int]] = {}  # digest -> piece indexes found (-1: whole file)
    objects = b.root / OBJECTS
    with os.scandir(objects) as top:
        subs = sorted((de.name, de.path, de.stat(follow_symlinks=False).st_mode) for de in top)
    for sub, path, mode in subs:
        if not stat.S_ISDIR(mode) or not FANOUT.fullmatch(sub):
            b.problems.append(f"{OBJECTS}/{sub}: unexpected {_kind(mode)} in {OBJECTS}/")
            continue
        with os.scandir(path) as it:
            files = sorted((de.name, de.stat(follow_symlinks=False)) for de in it)
        for name, st in files:
            rel = f"{OBJECTS}/{sub}/{name}"
            if not stat.S_ISREG(st.st_mode):
                b.problems.append(f"{rel}: {_kind(st.st_mode)}; a bundle holds only plain files")
                continue
            if b.meta is None:
                continue  # the layout (split size) is unknown: the missing metadata is the problem
            m = OBJECT_NAME.fullmatch(name)
            part: str | None = m["part"] if m else None
            o = b.shipped.get(m["hex"]) if m and name.startswith(sub) else None
            want = o.expected_size(part) if o is not None else None
            if o is None or want is None:
                why = "not in the manifest" if m else "not an object name"
                b.problems.append(f"{rel}: unexpected file ({why})")
            elif st.st_size != want:
                b.broken.add(o.digest)
                b.problems.append(
                    f"{rel}: {st.st_size} bytes, the manifest needs {want}"
                    + (" (truncated)" if st.st_size < want else "")
                )
            else:
                found.setdefault(o.digest, set()).add(-1 if part is None else int(part))
    if b.meta is None:
        return
    for o in b.shipped.values():
        got = found.get(o.digest, set())
        if o.pieces == 0 and -1 not in got:
            b.broken.add(o.digest)
            b.problems.append(f"{o.label}: missing (object {o.digest} of the manifest)")
        elif o.pieces and len(got) < o.pieces:
            b.broken.add(o.digest)
            first = next(i for i in range(o.pieces) if i not in got)
            b.problems.append(
                f"{piece_name(o.digest, first)}: missing ({o.pieces - len(got)} of "
                f"{o.pieces} pieces of object {o.digest} are)"
            )


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symlink"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISREG(mode):
        return "a file"
    return "a special file (device, fifo or socket)"


# -- content ----------------------------------------------------------------------


def read_object(
    b: Bundle,
    o: BundleObject,
    sink: Callable[[bytes], object] | None = None,
    tick: Callable[[int], None] | None = None,
) -> str | None:
    """Stream an object's bytes (pieces in order) through blake3 and sha256 into
    `sink`. Returns a problem, or None when size, digest and sha256 all match.
    An error reading the bundle is a problem; an error raised by `sink` propagates."""
    b3 = blake3.blake3()
    s256 = hashlib.sha256()
    for rel, size in o.files():
        try:
            # O_NOFOLLOW: the tree was checked; refuse a file swapped for a symlink since.
            fd = os.open(b.root / rel, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as exc:
            return f"{rel}: cannot open: {exc.strerror}"
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return f"{rel}: not a plain file"
            left = size
            while left:
                try:
                    chunk = f.read(min(CHUNK, left))
                except OSError as exc:
                    return f"{rel}: cannot read: {exc.strerror}"
                if not chunk:
                    return f"{rel}: shorter than {size} bytes (truncated)"
                left -= len(chunk)
                b3.update(chunk)
                s256.update(chunk)
                if sink is not None:
                    sink(chunk)
                if tick is not None:
                    tick(len(chunk))
            if f.read(1):
                return f"{rel}: longer than {size} bytes"
    if b3.hexdigest() != o.digest:
        return (
            f"{o.label}: content does not match its digest (blake3 {b3.hexdigest()}): "
            "damaged on the way or tampered with"
        )
    if s256.hexdigest() != o.sha256:
        return f"{MANIFEST}: sha256 of {o.digest} is wrong (the object's is {s256.hexdigest()})"
    return None


@dataclass
class VerifyReport:
    bundle: Bundle
    seconds: float

    def summary(self) -> str:
        b, meta = self.bundle, self.bundle.meta
        assert meta is not None
        rate = b.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0
        assumed = f", {len(b.assumed)} blobs expected at the receiving store" if b.assumed else ""
        return (
            f"seed verify: OK: {len(b.entries)} entries, {len(b.shipped)} objects, "
            f"{b.bytes} bytes{assumed}; exported {meta.created} on {meta.source_host or '?'}; "
            f"{rate:.1f} MB/s"
        )


def verify_bundle(root: Path) -> VerifyReport:
    """Every check of `seed import`, on the bundle alone; raises SeedError listing
    every problem. (Conflicts with a given store: `seed import --dry-run`.)"""
    start = time.monotonic()
    b = open_bundle(root)
    if b.meta is not None:
        with progress("seed verify", b.bytes, unit_bytes=True) as tick:
            for o in b.shipped.values():
                if o.digest in b.broken:
                    continue
                problem = read_object(b, o, tick=tick)
                if problem:
                    b.problems.append(problem)
    if b.problems:
        raise b.reject("bad seed bundle")
    return VerifyReport(b, time.monotonic() - start)
