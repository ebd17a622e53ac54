"""The seed bundle format (SPEC "Seed bundles"), shared by export, import and verify.

A bundle is a directory; every name in it is lowercase hex, digits, dots and a
few ASCII letters, so it survives FAT32 and exFAT::

    cachesrv-seed.json                    metadata; written last, so its absence
                                          means "incomplete" (an interrupted export)
    manifest.jsonl                        one entry per line (see `entry_line`)
    objects/<2 hex>/<64 hex>              a blob, named by its blake3-256
    objects/<2 hex>/<64 hex>.part000 ...  the pieces of a blob larger than the
                                          bundle's `split_size`, in order

The layout of an object follows from its size and the bundle's `split_size`
alone, so a reader knows exactly which files must exist and how big each is.
docs/air-gap-workflow.md describes the format for people.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import re
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from ..models import ArtifactKind, CacheKey, Digest, Entry

FORMAT = "cachesrv-seed"
VERSION = 1
METADATA = "cachesrv-seed.json"
#: The bundle's CycloneDX SBOM (seed/sbom.py), pinned by `Metadata.sbom_blake3`.
BUNDLE_SBOM = "sbom.cdx.json"
MANIFEST = "manifest.jsonl"
OBJECTS = "objects"
#: Read/write size when copying and hashing objects.
CHUNK = 4 << 20
#: The smallest `--split-size` accepted (smaller only makes millions of files).
MIN_SPLIT = 64 << 10
#: The largest file FAT32 can hold: 4 GiB minus one byte (`--split-size fat32`).
FAT32_MAX = (4 << 30) - 1
#: No line of the manifest and no metadata file is longer than this.
MAX_LINE = 1 << 20

HEX64 = re.compile(r"[0-9a-f]{64}")
FANOUT = re.compile(r"[0-9a-f]{2}")
OBJECT_NAME = re.compile(r"(?P<hex>[0-9a-f]{64})(?:\.part(?P<part>[0-9]{3,}))?")
#: Seed names as the router accepts them in `/@<seed>/`.
SEED_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
UPSTREAM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_KEY = re.compile(r"https?://[^\x00-\x20\x7f\\]{1,8000}")
#: Header values are replayed to clients: printable ASCII only (no CR/LF injection).
_HEADER_VALUE = re.compile(r"[\x20-\x7e]{0,1000}")

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)", re.IGNORECASE)


def parse_size(text: str) -> int:
    """`1MiB`, `500M`, `4GiB`, `2GB`, `1048576` or `fat32` -> bytes.

    `K M G T` and `KiB MiB GiB TiB` are powers of 1024 (as `split -b` reads them);
    `KB MB GB TB` are powers of 1000. `fat32` is 4 GiB - 1 byte, the largest file
    FAT32 holds (`4GiB` itself is one byte too big for it).
    """
    t = text.strip()
    if t.lower() == "fat32":
        return FAT32_MAX
    m = _SIZE.fullmatch(t)
    if not m:
        raise ValueError(f"cannot read size {text!r}; use e.g. 1MiB, 500M, 4GiB or fat32")
    number, prefix, suffix = m.group(1), m.group(2).lower(), m.group(3).lower()
    if suffix == "i":
        raise ValueError(f"cannot read size {text!r}; did you mean {number}{prefix.upper()}iB?")
    power = "kmgt".index(prefix) + 1 if prefix else 0
    base = 1000 if (prefix and suffix == "b") else 1024
    try:
        return int(float(number) * base**power)
    except OverflowError:  # more digits than a float holds
        raise ValueError(f"size {text[:40]!r} is too large") from None


def piece_count(size: int, split: int | None) -> int:
    """How many `.partNNN` pieces hold an object; 0 when it is one whole file."""
    return 0 if split is None or size <= split else math.ceil(size / split)


def piece_name(digest: str, index: int | None) -> str:
    """An object file's path relative to the bundle (`index` None: the whole file)."""
    base = f"{OBJECTS}/{digest[:2]}/{digest}"
    return base if index is None else f"{base}.part{index:03d}"


def iter_object_files(digest: str, size: int, split: int | None) -> Iterator[tuple[str, int]]:
    """The files holding one object, in order: (path relative to the bundle, size).
    A generator: a hostile manifest may claim any size."""
    count = piece_count(size, split)
    if count == 0:
        yield piece_name(digest, None), size
        return
    assert split is not None
    for i in range(count):
        yield piece_name(digest, i), min(split, size - i * split)


def object_files(digest: str, size: int, split: int | None) -> list[tuple[str, int]]:
    return list(iter_object_files(digest, size, split))


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- manifest lines -----------------------------------------------------------


def entry_line(entry: Entry, in_bundle: bool) -> str:
    """One manifest line. `in_bundle` is false when the receiving store already
    holds the blob (`--missing-from`): the entry is listed so that its index learns
    the key, but the object is not shipped."""
    return json.dumps(
        {
            "key": entry.key.url,
            "upstream": entry.key.upstream,
            "digest": entry.digest.hex,
            "size": entry.size,
            "sha256": entry.sha256,
            "kind": entry.kind.value,
            "content_type": entry.content_type,
            "etag": entry.etag,
            "last_modified": entry.last_modified,
            "recorded": entry.recorded,
            "validated": entry.validated,
            "seeds": sorted(entry.seeds),
            "in_bundle": in_bundle,
        },
        separators=(",", ":"),
        ensure_ascii=True,
    )


def parse_entry(raw: bytes) -> tuple[Entry, bool]:
    """Read and validate one manifest line; ValueError names the first bad field."""
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deeply
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    digest = _field(obj, "digest", str)
    if not HEX64.fullmatch(digest):
        # The one field that names a file: refuse anything but 64 lowercase hex
        # (so `../`, `/etc/...` and `C:` never reach a path).
        raise ValueError(f"digest {digest[:100]!r} is not 64 lowercase hex characters")
    key = _field(obj, "key", str)
    if not _KEY.fullmatch(key):
        raise ValueError(f"key {key[:100]!r} is not an http(s) URL without spaces or controls")
    upstream = _field(obj, "upstream", str)
    if not UPSTREAM_NAME.fullmatch(upstream):
        raise ValueError(f"upstream {upstream[:100]!r} is not a valid upstream name")
    size = _field(obj, "size", int)
    if size < 0:
        raise ValueError(f"size {size} is negative")
    sha256 = _field(obj, "sha256", str)
    if not HEX64.fullmatch(sha256):
        raise ValueError(f"sha256 {sha256[:100]!r} is not 64 lowercase hex characters")
    kind = _field(obj, "kind", str)
    if kind not in ("immutable", "mutable"):
        raise ValueError(f"kind {kind[:100]!r} is neither 'immutable' nor 'mutable'")
    headers: dict[str, str | None] = {}
    for name in ("content_type", "etag", "last_modified"):
        value = obj.get(name)
        if value is not None and not (isinstance(value, str) and _HEADER_VALUE.fullmatch(value)):
            raise ValueError(f"{name} {str(value)[:100]!r} is not printable ASCII")
        headers[name] = value
    recorded = _time(obj, "recorded")
    validated = _time(obj, "validated") if obj.get("validated") is not None else recorded
    seeds = obj.get("seeds", [])
    if not isinstance(seeds, list) or not all(
        isinstance(s, str) and SEED_NAME.fullmatch(s) for s in seeds
    ):
        raise ValueError(f"seeds {str(seeds)[:100]} is not a list of seed names")
    in_bundle = obj.get("in_bundle", True)
    if not isinstance(in_bundle, bool):
        raise ValueError("in_bundle is not true or false")
    entry = Entry(
        key=CacheKey(upstream, key),
        digest=Digest(digest),
        size=size,
        sha256=sha256,
        kind=ArtifactKind(kind),
        content_type=headers["content_type"] or "application/octet-stream",
        etag=headers["etag"],
        last_modified=headers["last_modified"],
        recorded=recorded,
        validated=validated,
        seeds=tuple(sorted(set(seeds))),
    )
    return entry, in_bundle


def _field(obj: dict[str, Any], name: str, typ: type[Any]) -> Any:
    value = obj.get(name)
    # bool is an int to Python; never to us.
    if not isinstance(value, typ) or isinstance(value, bool):
        raise ValueError(f"{name} is missing or not a {typ.__name__}")
    return value


def _time(obj: dict[str, Any], name: str) -> float:
    value = obj.get(name)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError(f"{name} is missing or not a number")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} {value} is not a time")
    return float(value)


# -- metadata -------------------------------------------------------------------


@dataclass(frozen=True)
class Metadata:
    """`cachesrv-seed.json`: what the bundle holds; its presence marks it complete."""

    entries: int
    objects: int
    bytes: int
    manifest_blake3: str
    split_size: int | None = None
    created: str = field(default_factory=now_iso)
    source_host: str = ""
    selection: dict[str, Any] = field(default_factory=dict)
    #: The blake3 of `sbom.cdx.json`, so that the metadata (and its signature) pins it.
    sbom_blake3: str | None = None

    def to_json(self) -> str:
        return (
            json.dumps(
                {
                    "format": FORMAT,
                    "version": VERSION,
                    "created": self.created,
                    "source_host": self.source_host,
                    "entries": self.entries,
                    "objects": self.objects,
                    "bytes": self.bytes,
                    "split_size": self.split_size,
                    "manifest_blake3": self.manifest_blake3,
                    "selection": self.selection,
                    **({"sbom_blake3": self.sbom_blake3} if self.sbom_blake3 else {}),
                },
                indent=2,
            )
            + "\n"
        )


class UnsupportedBundle(ValueError):
    """Not a cachesrv seed bundle, or a version this cachesrv cannot read."""


def parse_metadata(raw: bytes) -> Metadata:
    """Validate `cachesrv-seed.json`. `UnsupportedBundle` when nothing else in
    the bundle can be interpreted; ValueError for a bad field."""
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deeply
        raise UnsupportedBundle(f"{METADATA} is not JSON ({exc})") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise UnsupportedBundle(f"{METADATA}: format is not {FORMAT!r}: not a cachesrv seed bundle")
    version = obj.get("version")
    if version != VERSION or isinstance(version, bool):
        raise UnsupportedBundle(
            f"{METADATA}: unsupported format version {version!r} (this cachesrv reads "
            f"version {VERSION}; import it with a cachesrv that knows that version)"
        )
    for name in ("entries", "objects", "bytes"):
        value = obj.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{METADATA}: {name} is missing or not a count")
    digest = obj.get("manifest_blake3")
    if not isinstance(digest, str) or not HEX64.fullmatch(digest):
        raise ValueError(f"{METADATA}: manifest_blake3 is missing or not 64 hex characters")
    split = obj.get("split_size")
    if split is not None and (not isinstance(split, int) or isinstance(split, bool) or split < 1):
        raise ValueError(f"{METADATA}: split_size {split!r} is not a positive size")
    selection = obj.get("selection")
    sbom = obj.get("sbom_blake3")
    if sbom is not None and (not isinstance(sbom, str) or not HEX64.fullmatch(sbom)):
        raise ValueError(f"{METADATA}: sbom_blake3 is not 64 hex characters")
    return Metadata(
        entries=obj["entries"],
        objects=obj["objects"],
        bytes=obj["bytes"],
        manifest_blake3=digest,
        split_size=split,
        created=str(obj.get("created", "")),
        source_host=str(obj.get("source_host", "")),
        selection=selection if isinstance(selection, dict) else {},
        sbom_blake3=sbom,
    )


# -- crash-safe writes on removable disks ----------------------------------------


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        # Some filesystems (and FUSE exFAT drivers) refuse fsync on directories.
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def temp_name(path: Path) -> Path:
    """Where `path` is written before it is renamed into place (same directory)."""
    return path.with_name(f".{path.name}.tmp")


def write_atomic(path: Path, data: bytes) -> None:
    """Write, fsync, rename into place, fsync the directory."""
    tmp = temp_name(path)
    try:
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


class SyncQueue:
    """fsync and rename files on worker threads while the caller writes the next ones.

    The caller writes a temp file (without fsync) and submits (temp, final) pairs; a
    worker fsyncs every temp of the submission, then renames them into place. So a
    final name still never holds bytes that may not be on disk, but the fsyncs of
    thousands of small files overlap (about twice as fast as fsyncing in line),
    and the data itself is still written in order by one thread (no interleaved
    allocation on FAT). At most `backlog` submissions are pending. `wait` raises
    the first error of a worker.
    """

    def __init__(self, workers: int = 4, backlog: int = 64) -> None:
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="fsync")
        self._slots = threading.BoundedSemaphore(backlog)
        self._pending: list[Future[None]] = []

    def submit(self, moves: list[tuple[Path, Path]]) -> None:
        self._reap()
        self._slots.acquire()
        try:
            self._pending.append(self._pool.submit(self._sync_and_rename, moves))
        except BaseException:
            self._slots.release()
            raise

    def _sync_and_rename(self, moves: list[tuple[Path, Path]]) -> None:
        try:
            for tmp, _ in moves:
                fd = os.open(tmp, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            for tmp, final in moves:
                os.replace(tmp, final)
        finally:
            self._slots.release()

    def _reap(self) -> None:
        still: list[Future[None]] = []
        for fut in self._pending:
            if fut.done():
                fut.result()
            else:
                still.append(fut)
        self._pending = still

    def wait(self) -> None:
        for fut in self._pending:
            fut.result()
        self._pending = []

    def __enter__(self) -> SyncQueue:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def rate(nbytes: int, seconds: float) -> str:
    """Throughput in MB/s (10^6 bytes, as disks are sold)."""
    return f"{nbytes / 1e6 / seconds:.1f} MB/s" if seconds > 0 else "- MB/s"
