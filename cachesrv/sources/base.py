"""What a source answers: the `Source` protocol shared by online and offline wiring.

The web layer asks a `Source` to `open` a `Request` and serves whatever `Answer`
comes back. `online.OnlineSource` may fetch upstream; `offline.OfflineSource` only
looks up the store and raises `NotCached` with a diagnosis. The app factory picks
one by mode; handlers never test the mode.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ..models import Entry
from ..store.hot import HotItem
from ..upstreams.router import Route

if TYPE_CHECKING:
    from .online import Flight


class Outcome(enum.Enum):
    """How a request was answered (metrics labels and the access log)."""

    HIT = "hit"
    RECORDED = "recorded"
    REVALIDATED = "revalidated"
    STALE = "stale"
    OFFLINE_MISS = "offline_miss"
    REFUSED = "refused"
    UPSTREAM_ERROR = "upstream_error"
    #: A body that could not fit in the store (507, or a recording cut by a full disk).
    INSUFFICIENT_STORAGE = "insufficient_storage"
    PASSTHROUGH = "passthrough"


@dataclass(frozen=True)
class Request:
    route: Route
    method: str = "GET"
    user_agent: str | None = None
    accept: str | None = None
    #: The request body (snap store API and git upload-pack POSTs carry one).
    body: bytes | None = None
    #: The client's request headers (the snap store decorator forwards some upstream).
    headers: tuple[tuple[str, str], ...] = ()
    #: The client wants the whole body at once (HEAD, Range): wait for the
    #: fetch to complete and answer from the store rather than streaming.
    needs_complete: bool = False
    #: The upstream's root as the client reaches it through cachesrv, ending in "/"
    #: (`http://cache:3142/@seed/npm/`); None for proxy-form and tunnelled requests.
    #: Index documents whose links must be absolute (npm tarballs) are rewritten to it.
    served: str | None = None
    #: An index document (read whole and parsed): `[fetch] max_document` applies.
    document: bool = False


@dataclass(frozen=True)
class Stored:
    """Answer from a committed blob."""

    entry: Entry
    path: Path
    outcome: Outcome
    #: The hot-cache view (stat, and the body when small), when the hit came from memory.
    hot: HotItem | None = None


@dataclass(frozen=True)
class Streaming:
    """Answer by tailing an in-flight upstream fetch."""

    flight: Flight
    outcome: Outcome = Outcome.RECORDED


@dataclass(frozen=True)
class Generated:
    """Answer with a body made for this request (a rewritten index page)."""

    body: bytes
    content_type: str
    outcome: Outcome
    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()


Answer = Stored | Streaming | Generated


class Source(Protocol):
    async def open(self, request: Request) -> Answer: ...

    async def close(self) -> None: ...
