"""The in-memory view of hot entries: what the hit path reads instead of SQLite.

A site mirror answers thousands of small hits a second; a SQLite query and a thread
hop per hit would cap it far below what the machine can serve. `HotCache` keeps the
entries recently served (with the blob's stat, for ETag and Last-Modified) and the
bodies of small ones, bounded by entry count and by bytes.

It is invalidated by key whenever this process changes the index (`Index` calls
`invalidate` on put/delete/quarantine), and wholesale when another process commits
to the index (`Index.data_version` changes; the server polls it once a second), so a
purge, a quarantine or an import by `cachesrv fsck` / `seed import` is seen at once
or within a second.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from ..models import Entry

SMALL_BODY = 64 * 1024


@dataclass(frozen=True)
class HotItem:
    entry: Entry
    path: Path
    mtime: float
    mtime_ns: int
    body: bytes | None  # the whole body when it is small

    @property
    def etag(self) -> str:
        """Exactly what aiohttp's FileResponse sends for the same file, so a client's
        conditional request matches whichever path answered it."""
        return f"{self.mtime_ns:x}-{self.entry.size:x}"

    @cached_property
    def validators(self) -> tuple[str, str]:
        """The ETag and Last-Modified header values, formatted once (as aiohttp does:
        Last-Modified is the mtime rounded up to the second)."""
        last_modified = time.strftime(
            "%a, %d %b %Y %H:%M:%S GMT", time.gmtime(math.ceil(self.mtime))
        )
        return f'"{self.etag}"', last_modified


class HotCache:
    """LRU of `HotItem`s; thread-safe (the index thread invalidates)."""

    def __init__(self, max_entries: int = 200_000, max_body_bytes: int = 128 << 20) -> None:
        self.max_entries = max_entries
        self.max_body_bytes = max_body_bytes
        self._items: OrderedDict[str, HotItem] = OrderedDict()
        self._body_bytes = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> HotItem | None:
        item = self._items.get(key)
        if item is not None:
            try:
                self._items.move_to_end(key)
            except KeyError:  # invalidated meanwhile by the index thread
                return None
        return item

    def load(self, entry: Entry, path: Path) -> HotItem | None:
        """Stat (and for small bodies read) a blob and remember it. Blocking: call off
        the event loop. None if the blob is gone."""
        try:
            st = path.stat()
            body = path.read_bytes() if st.st_size <= SMALL_BODY else None
        except FileNotFoundError:
            return None
        item = HotItem(entry, path, st.st_mtime, st.st_mtime_ns, body)
        self.put(item)
        return item

    def put(self, item: HotItem) -> None:
        with self._lock:
            old = self._items.pop(item.entry.key.url, None)
            if old is not None and old.body is not None:
                self._body_bytes -= len(old.body)
            self._items[item.entry.key.url] = item
            if item.body is not None:
                self._body_bytes += len(item.body)
            while self._items and (
                len(self._items) > self.max_entries or self._body_bytes > self.max_body_bytes
            ):
                _, dropped = self._items.popitem(last=False)
                if dropped.body is not None:
                    self._body_bytes -= len(dropped.body)

    def invalidate(self, key: str | None = None) -> None:
        """Forget one key, or everything when `key` is None."""
        with self._lock:
            if key is None:
                self._items.clear()
                self._body_bytes = 0
                return
            old = self._items.pop(key, None)
            if old is not None and old.body is not None:
                self._body_bytes -= len(old.body)

    def __len__(self) -> int:
        return len(self._items)
