"""`cachesrv fsck`: re-hash every blob; quarantine the corrupt ones.

A blob whose bytes no longer hash to its name is moved to `quarantine/` and
marked in the index, so it is never served again (online it is re-fetched,
offline it is a miss that says "blob quarantined"). `repair` also drops the
entries whose blob is gone or quarantined and removes stray temp files.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from .models import BlobInfo, Digest
from .progress import progress
from .store import Store


@dataclass
class FsckReport:
    checked: int = 0
    bytes: int = 0
    corrupt: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # entries whose blob is absent
    unindexed: list[str] = field(default_factory=list)  # blobs no index row knows
    temp_files: int = 0
    dropped_entries: int = 0

    @property
    def clean(self) -> bool:
        return not (self.corrupt or self.missing)

    def summary(self) -> str:
        state = "clean" if self.clean else "PROBLEMS FOUND"
        return (
            f"fsck: {state}: {self.checked} blobs ({self.bytes} bytes) re-hashed, "
            f"{len(self.corrupt)} corrupt (quarantined), {len(self.missing)} missing, "
            f"{len(self.unindexed)} unindexed, {self.temp_files} temp files"
            + (f", {self.dropped_entries} entries dropped" if self.dropped_entries else "")
        )


def fsck(store: Store, *, repair: bool = False) -> FsckReport:
    report = FsckReport()
    index = store.index
    digests = list(store.blobs.iter_digests())
    known = {d.hex for d in digests}
    total = sum(store.blobs.path(d).stat().st_size for d in digests)
    with progress("fsck", total, unit_bytes=True) as tick:
        for digest in digests:
            got, size = store.blobs.hash_file(digest)
            report.checked += 1
            report.bytes += size
            tick(size)
            if got != digest.hex:
                report.corrupt.append(digest.hex)
                store.blobs.quarantine(digest)
                index.set_quarantined(digest)
            elif index.blob(digest) is None:
                report.unindexed.append(digest.hex)
    quarantined = set(index.quarantined())
    for hexd in sorted(index.referenced_digests()):
        if hexd not in known and hexd not in quarantined:
            report.missing.append(hexd)
    report.temp_files = sum(1 for _ in store.blobs.tmp.iterdir())
    if repair:
        report.temp_files = store.blobs.clean_tmp()
        bad = set(report.missing) | quarantined
        for entry in index.entries():
            if entry.digest.hex in bad:
                index.delete(entry.key.url)
                report.dropped_entries += 1
        for hexd in report.unindexed:
            index.add_blob(store_blob_info(store, Digest(hexd)))
        report.missing = []
        report.corrupt = []
    return report


def store_blob_info(store: Store, digest: Digest) -> BlobInfo:

    h = hashlib.sha256()
    size = 0
    with store.blobs.path(digest).open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return BlobInfo(digest, size, h.hexdigest())
