"""The store: blobs on disk (`blobs.BlobStore`) and their SQLite index (`index.Index`)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from pathlib import Path

from ..config import StoreLimits
from ..models import BlobInfo
from .blobs import BlobStore, BlobWriter
from .hot import HotCache, HotItem
from .index import Index
from .lifecycle import Lifecycle

__all__ = ["BlobStore", "BlobWriter", "HotCache", "HotItem", "Index", "Store"]

log = logging.getLogger("cachesrv.store")


class Store:
    """A store directory: `objects/` + `tmp/` + `quarantine/` and `index.sqlite`."""

    def __init__(self, root: Path, limits: StoreLimits | None = None) -> None:
        self.root = root
        self.blobs = BlobStore(root)
        self.index = Index(root / "index.sqlite")
        self.hot = HotCache()
        self.index.on_change = self.hot.invalidate
        self.lifecycle = Lifecycle(self.blobs, self.index, limits or StoreLimits())
        #: Keys served since the last flush, and when: last access is written in
        #: batches (LRU eviction), never once per hit.
        self.accessed: dict[str, float] = {}

    async def put_bytes(self, data: bytes) -> BlobInfo:
        """Store a small body as a recording does (under asyncio): claimed in the index
        before it is in place (store/lifecycle.py), so that no gc or eviction removes it
        before the caller's entry references it."""
        loop = asyncio.get_running_loop()
        writer = self.blobs.writer()
        try:
            await loop.run_in_executor(None, writer.write, data)
            info = await loop.run_in_executor(None, writer.finish)  # fsync: off the loop
            await self.index.run(self.index.claim_blobs, [info])
            await loop.run_in_executor(None, writer.place, info)
        except BaseException:
            writer.abort()
            raise
        return info

    def note_access(self, key: str) -> None:
        self.accessed[key] = time.time()

    def flush_access(self) -> None:
        """Write the batch of last-access times (on the index thread, under asyncio)."""
        batch, self.accessed = self.accessed, {}
        if not batch:
            return
        try:
            self.index.record_access(batch)
        except sqlite3.OperationalError as exc:  # a full disk must not stop the hits
            log.warning("cannot record last access of %d entries: %s", len(batch), exc)

    def close(self) -> None:
        self.flush_access()
        self.index.close()
