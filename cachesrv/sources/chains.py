"""The source chains, wired in one place for the server and the command line.

Both chains are the base source (online: fetch and record; offline: lookups only)
wrapped by the decorators: `IndexDocuments` for every kind's index documents (by
the kind's rules), `SnapStore` for the snap store API and `GitSmartHttp` for git
clones on any generic host. Other requests pass straight through.
"""

from __future__ import annotations

import aiohttp

from ..config import Config
from ..metrics import Metrics
from ..store import Store
from .base import Source
from .documents import IndexDocuments
from .githttp import GitSmartHttp
from .offline import OfflineSource
from .online import OnlineSource
from .snapstore import SnapStore


def online_source(
    config: Config, store: Store, session: aiohttp.ClientSession, metrics: Metrics
) -> Source:
    base = OnlineSource(
        store, session, metrics, limits=config.fetch, headers_timeout=config.server.read_timeout
    )
    snaps = SnapStore(
        IndexDocuments(base, store, offline=False),
        store,
        offline=False,
        session=session,
        metrics=metrics,
    )
    return GitSmartHttp(snaps)


def offline_source(store: Store, *, strict: bool) -> Source:
    base = OfflineSource(store, strict=strict)
    pages = IndexDocuments(base, store, offline=True, strict=strict)
    return GitSmartHttp(SnapStore(pages, store, offline=True))
