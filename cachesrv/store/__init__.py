"""The store: blobs on disk (`blobs.BlobStore`) and their SQLite index (`index.Index`)."""

from __future__ import annotations

from pathlib import Path

from .blobs import BlobStore, BlobWriter
from .hot import HotCache, HotItem
from .index import Index

__all__ = ["BlobStore", "BlobWriter", "HotCache", "HotItem", "Index", "Store"]


class Store:
    """A store directory: `objects/` + `tmp/` + `quarantine/` and `index.sqlite`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = BlobStore(root)
        self.index = Index(root / "index.sqlite")
        self.hot = HotCache()
        self.index.on_change = self.hot.invalidate

    def close(self) -> None:
        self.index.close()
