"""The offline source: lookups only. It opens no connection, whatever is asked.

A miss raises `NotCached` carrying a `Diagnosis` (what is missing, why, the
nearest recorded entries and the commands that fix it) and is logged in the
store's miss log, so `cachesrv misses` lists exactly what to fetch.
"""

from __future__ import annotations

import asyncio

from .errors import NotCached
from .models import CacheKey, Diagnosis, Entry, MissReason
from .source import Answer, Outcome, Request, Stored
from .store import Store
from .upstreams import package_prefix
from .upstreams.router import INTERCEPT


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
        await index.run(
            index.log_miss,
            route.key,
            reason,
            seed=route.seed,
            method=request.method,
            user_agent=request.user_agent,
        )
        raise NotCached(await self.diagnose(route.key, reason, route.seed))

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

    async def diagnose(self, key: CacheKey, reason: MissReason, seed: str | None) -> Diagnosis:
        index = self.store.index
        nearest = await index.run(index.nearest, key, package_prefix(key.filename))
        return Diagnosis(
            key=key, reason=reason, seed=seed, nearest=tuple(nearest), fixes=fix_commands(key, seed)
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
