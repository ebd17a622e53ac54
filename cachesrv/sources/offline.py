"""The offline source: lookups only. It opens no connection, whatever is asked.

A miss raises `NotCached` carrying a `Diagnosis` (what is missing, why, the
nearest recorded entries and the commands that fix it) and is logged in the
store's miss log, so `cachesrv misses` lists exactly what to fetch.

Recorded apt Release files age: past their `Valid-Until`, apt refuses them unless
the client sets `Acquire::Check-Valid-Until "false"`. `expired_releases` lists them
(the status page, `/metrics`, and the diagnosis of a missed apt index).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..config import UpstreamConfig
from ..errors import NotCached
from ..models import CacheKey, Diagnosis, Entry, MissReason
from ..store import Store
from ..upstreams import apt, package_prefix
from ..upstreams.router import INTERCEPT
from .base import Answer, Outcome, Request, Stored


class OfflineSource:
    """Serves what the store recorded; with `strict`, only a seed's own entries."""

    def __init__(self, store: Store, *, strict: bool = False) -> None:
        self.store = store
        self.strict = strict

    async def open(self, request: Request) -> Answer:
        route = request.route
        if route.seed is None:
            # The hit path: memory only, no SQLite, no thread (see store/hot.py).
            item = self.store.hot.get(route.url)
            if item is not None:
                return Stored(item.entry, item.path, Outcome.HIT, item)
        index = self.store.index
        entry = await index.run(index.get, route.url)
        reason = await self._why_unusable(entry, route.seed)
        if reason is None:
            assert entry is not None
            if route.seed and not self.strict:
                await index.run(index.add_to_seed, route.seed, route.url)
            path = self.store.blobs.path(entry.digest)
            loop = asyncio.get_running_loop()
            item = await loop.run_in_executor(None, self.store.hot.load, entry, path)
            return Stored(entry, path, Outcome.HIT, item)
        # Misses are told by the URL the client asked (not an internal key of a format).
        shown = CacheKey(route.key.upstream, route.shown_url)
        await index.run(
            index.log_miss,
            shown,
            reason,
            seed=route.seed,
            method=request.method,
            user_agent=request.user_agent,
        )
        raise NotCached(await self.diagnose(shown, reason, route.seed, route.upstream))

    async def _why_unusable(self, entry: Entry | None, seed: str | None) -> MissReason | None:
        index = self.store.index
        if entry is None:
            return MissReason.NEVER_RECORDED
        if self.strict and seed and not await index.run(index.in_seed, seed, entry.key.url):
            return MissReason.NOT_IN_SEED
        if await index.run(index.is_quarantined, entry.digest):
            return MissReason.QUARANTINED
        if not self.store.blobs.has(entry.digest):
            return MissReason.BLOB_MISSING
        return None

    async def diagnose(
        self,
        key: CacheKey,
        reason: MissReason,
        seed: str | None,
        upstream: UpstreamConfig | None = None,
    ) -> Diagnosis:
        index = self.store.index
        nearest = await index.run(index.nearest, key, package_prefix(key.filename))
        notes: tuple[str, ...] = ()
        if upstream is not None and upstream.kind == "apt":
            notes = await index.run(expiry_notes, self.store, upstream, key)
        return Diagnosis(
            key=key,
            reason=reason,
            seed=seed,
            nearest=tuple(nearest),
            fixes=fix_commands(key, seed),
            notes=notes,
        )

    async def close(self) -> None:
        return None


def fix_commands(key: CacheKey, seed: str | None) -> tuple[str, ...]:
    seed_opt = f" --seed {seed}" if seed else ""
    if key.upstream == INTERCEPT:
        # A host outside the upstreams: recorded by a wrapped build, or by prefetch once
        # the host is in [tls] intercept.
        fetch = (
            f"cachesrv wrap{seed_opt} -- curl -fLO {key.url}    # on the online side "
            f"(or add the host to [tls] intercept, then cachesrv prefetch{seed_opt} URL)"
        )
    else:
        fetch = f"cachesrv prefetch{seed_opt} {key.url}    # on the online side"
    return (
        fetch,
        f"cachesrv seed export{seed_opt} /media/usb/seed    # then carry it here",
        "cachesrv seed import /media/usb/seed    # here, then ask again",
    )


# -- apt Release files past their Valid-Until -----------------------------------------


@dataclass(frozen=True)
class ExpiredRelease:
    """A recorded `InRelease`/`Release` whose `Valid-Until` has passed."""

    key: CacheKey
    valid_until: float
    date: float | None


def expired_releases(
    store: Store, upstreams: Iterable[UpstreamConfig], now: float, under: str = "dists/"
) -> list[ExpiredRelease]:
    """The recorded Release files of the apt `upstreams` (below `under`, a path under
    each) whose `Valid-Until` is before `now`, oldest expiry first.

    Synchronous: call it through `Index.run`. Bodies are read once per digest (the
    header only), so a scrape costs one index query per apt upstream.
    """
    found: list[ExpiredRelease] = []
    for upstream in upstreams:
        if upstream.kind != "apt":
            continue
        base = upstream.base + "/"
        for entry in store.index.entries(base + under):
            if not apt.is_release(entry.key.url[len(base) :]):
                continue
            dates = _release_dates(store.blobs.path(entry.digest))
            if dates is not None and dates.valid_until is not None and dates.expired(now):
                found.append(ExpiredRelease(entry.key, dates.valid_until, dates.date))
    return sorted(found, key=lambda r: (r.valid_until, r.key.url))


def expiry_notes(store: Store, upstream: UpstreamConfig, key: CacheKey) -> tuple[str, ...]:
    """For a missed apt index (anything under `dists/<suite>/`): the suite's recorded
    Release files that apt refuses for their `Valid-Until`, and the setting that fixes it.
    Synchronous: call it through `Index.run`."""
    base = upstream.base + "/"
    if not key.url.startswith(base):
        return ()
    suite = apt.suite_dir(key.url[len(base) :])
    if suite is None:
        return ()
    return tuple(
        f"the recorded {r.key.url} expired {_utc(r.valid_until)} (Valid-Until); apt "
        f"refuses it as expired unless the client sets {apt.OFFLINE_SETTINGS[0]} "
        "(see cachesrv client-config apt --offline)"
        for r in expired_releases(store, [upstream], time.time(), suite)
    )


def _release_dates(path: Path) -> apt.ReleaseDates | None:
    try:
        return _read_release_dates(path)
    except OSError:  # gone or quarantined meanwhile; not cached
        return None


@functools.lru_cache(maxsize=4096)
def _read_release_dates(path: Path) -> apt.ReleaseDates:
    """A blob's path names its digest and a blob never changes, so the dates of a
    recorded Release body are read once per digest."""
    with path.open("rb") as f:
        return apt.release_dates(f.read(apt.RELEASE_HEAD_BYTES))


def _utc(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
