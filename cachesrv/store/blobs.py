"""The content-addressed blob store.

Layout (see docs/store-format.md): `objects/<2 hex>/<64 hex>` named by blake3-256,
`tmp/` for writes in progress, `quarantine/` for blobs that failed verification.
A blob is written to `tmp/`, fsynced and renamed into place, so it never appears
half-written; whatever a crash leaves in `tmp/` is removed at start-up.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import blake3

from ..errors import StoreError
from ..models import BlobInfo, Digest

CHUNK = 1 << 20


class BlobWriter:
    """Hashes (blake3 and sha256) while writing to a temp file in `tmp/`.

    `write` is synchronous and unbuffered (plain `os.write`), so readers that
    tail the temp file see every byte as soon as `write` returns. Call `commit`
    once the body is complete and verified, or `abort` to throw it away.
    """

    def __init__(self, store: BlobStore, extra_hash: str | None = None) -> None:
        self._store = store
        #: A further hash an upstream may declare (snap's sha3-384), by hashlib name.
        self.extra = hashlib.new(extra_hash) if extra_hash else None
        fd, name = tempfile.mkstemp(dir=store.tmp, prefix="blob-")
        self.fd = fd
        self.path = Path(name)
        self.size = 0
        self._blake3 = blake3.blake3()
        self._sha256 = hashlib.sha256()
        self._done = False

    def write(self, data: bytes) -> None:
        self._blake3.update(data)
        self._sha256.update(data)
        if self.extra is not None:
            self.extra.update(data)
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        self.size += len(data)

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()

    def commit(self) -> BlobInfo:
        """`finish`, then `place`: for writers that need no claim in between."""
        info = self.finish()
        self.place(info)
        return info

    def finish(self) -> BlobInfo:
        """fsync and close the temp file; the blob's digest, size and sha256."""
        if self._done:
            raise StoreError("blob writer already finished")
        self._done = True
        os.fsync(self.fd)
        os.close(self.fd)
        return BlobInfo(digest=Digest(self._blake3.hexdigest()), size=self.size, sha256=self.sha256)

    def place(self, info: BlobInfo) -> None:
        """Rename the temp file into `objects/`, unless the identical blob is there:
        then touch that one (a remover that moved it aside meanwhile makes the touch
        fail, and this copy goes in place instead)."""
        final = self._store.path(info.digest)
        if _touch(final):
            self.path.unlink(missing_ok=True)
            return
        if not final.parent.is_dir():
            final.parent.mkdir(exist_ok=True)
            _fsync_dir(final.parent.parent)  # the new fanout directory's own entry
        os.replace(self.path, final)
        _fsync_dir(final.parent)

    def abort(self) -> None:
        """Throw the body away (also after `finish`, if it is not to be placed)."""
        if not self._done:
            self._done = True
            with contextlib.suppress(OSError):
                os.close(self.fd)
        self.path.unlink(missing_ok=True)


class BlobStore:
    """Blobs by blake3 digest. Safe for one writer process and many readers."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.objects = root / "objects"
        self.tmp = root / "tmp"
        self.quarantine_dir = root / "quarantine"
        try:
            for d in (self.objects, self.tmp, self.quarantine_dir):
                d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create store at {root}: {exc.strerror}") from None

    def path(self, digest: Digest) -> Path:
        return self.objects / digest.fanout / digest.hex

    def has(self, digest: Digest) -> bool:
        return self.path(digest).is_file()

    def writer(self, extra_hash: str | None = None) -> BlobWriter:
        return BlobWriter(self, extra_hash)

    def put_bytes(self, data: bytes) -> BlobInfo:
        w = self.writer()
        try:
            w.write(data)
            return w.commit()
        except BaseException:
            w.abort()
            raise

    def hash_file(self, digest: Digest) -> tuple[str, int]:
        """Re-hash a stored blob: (blake3 hex, size)."""
        h = blake3.blake3()
        size = 0
        with self.path(digest).open("rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
                size += len(chunk)
        return h.hexdigest(), size

    def verify(self, digest: Digest) -> bool:
        try:
            return self.hash_file(digest)[0] == digest.hex
        except FileNotFoundError:
            return False

    def quarantine(self, digest: Digest) -> None:
        """Move a blob out of `objects/` so that it can never be served."""
        src = self.path(digest)
        if src.exists():
            os.replace(src, self.quarantine_dir / digest.hex)

    def iter_digests(self) -> Iterator[Digest]:
        for sub in sorted(self.objects.iterdir()):
            if not sub.is_dir():
                continue
            for f in sorted(sub.iterdir()):
                with contextlib.suppress(ValueError):
                    yield Digest(f.name)

    def clean_tmp(self) -> int:
        """Remove what a crash left in `tmp/`; returns how many files went."""
        n = 0
        for f in self.tmp.iterdir():
            with contextlib.suppress(FileNotFoundError):
                f.unlink()
                n += 1
        return n

    def adopt(self, files: Iterable[tuple[Path, Digest]]) -> int:
        """Rename verified, fsynced files from `tmp/` into `objects/` under their digests.

        The caller has checked that each file's blake3 is its digest (seed import
        stages a whole bundle this way, so that a bad bundle adds nothing); an
        existing blob is replaced by identical bytes. Each directory is fsynced
        once. Returns how many files were moved.
        """
        dirs: set[Path] = set()
        moved = 0
        for src, digest in files:
            final = self.path(digest)
            if final.parent not in dirs and not final.parent.is_dir():
                final.parent.mkdir(exist_ok=True)
                dirs.add(self.objects)
            os.replace(src, final)
            _touch(final)  # staged long ago, perhaps: young again for gc's grace period
            dirs.add(final.parent)
            moved += 1
        for d in sorted(dirs):
            _fsync_dir(d)
        return moved


class BatchSync:
    """Makes many files written into `tmp/` without an fsync durable at once.

    An fsync costs a journal commit and a flush of the disk's cache per file: for
    the thousands of small files of a seed import that was most of its time (about
    4 ms a file here, even with 4 threads overlapping them, and it held up the
    creation of the next files behind those commits). `syncfs(2)` writes back every
    dirty page and inode of the store's filesystem, waits for them, commits and
    flushes once: for the files given, the guarantee of an fsync of each (that it
    also writes back whatever else is dirty on that filesystem costs time, never
    safety). Since Linux 5.8 it also returns the writeback errors (EIO, ENOSPC) the
    filesystem met since the previous `sync` through the same descriptor, or since
    it was opened: so it is opened here, before the first file is written. Older
    kernels return 0 whatever happened, so there (and where libc has no syncfs)
    each file is fsynced instead, 4 at a time.
    """

    def __init__(self, store: BlobStore) -> None:
        self._tmp = store.tmp
        self._syncfs = _syncfs()
        self._fd = -1
        if self._syncfs is not None:
            self._fd = os.open(store.tmp, os.O_RDONLY | os.O_DIRECTORY)

    def sync(self, paths: Sequence[Path]) -> None:
        """Return once every byte of `paths` (files in `tmp/`, all written since this
        object was made) is on disk; raise OSError if writing any of it back failed."""
        if not paths:
            return
        if self._syncfs is None:
            with ThreadPoolExecutor(4, thread_name_prefix="fsync") as pool:
                list(pool.map(_fsync_file, paths))
            return
        err = self._syncfs(self._fd)
        if err:
            raise OSError(err, os.strerror(err), str(self._tmp))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


@functools.cache
def _syncfs() -> Callable[[int], int] | None:
    """libc's syncfs(2) as fd -> errno (0: done), where it reports writeback errors
    (Linux 5.8 and later); else None."""
    m = re.match(r"(\d+)\.(\d+)", os.uname().release) if sys.platform == "linux" else None
    if m is None or (int(m[1]), int(m[2])) < (5, 8):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int

    def syncfs(fd: int) -> int:
        # ctypes releases the GIL for the call: the caller's other threads go on.
        return ctypes.get_errno() if fn(fd) != 0 else 0

    return syncfs


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _touch(path: Path) -> bool:
    """Set a file's mtime to now; False if there is no such file."""
    try:
        os.utime(path)
    except FileNotFoundError:
        return False
    return True


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
