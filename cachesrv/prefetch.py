"""`cachesrv prefetch`: fetch URLs into the store as a client would (online only)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from .config import Config
from .errors import BadRequest, CachesrvError
from .metrics import Metrics
from .progress import progress
from .sources.base import Outcome, Request, Stored
from .sources.chains import online_source
from .sources.online import make_session
from .store import Store
from .upstreams import git
from .upstreams.router import Router


@dataclass
class PrefetchReport:
    new: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    bytes: int = 0

    def summary(self) -> str:
        return (
            f"prefetch: {len(self.new)} recorded, {len(self.present)} already stored, "
            f"{len(self.failed)} failed, {self.bytes} bytes"
        )


async def prefetch(
    config: Config, urls: list[str], *, seed: str | None = None, concurrency: int = 4
) -> PrefetchReport:
    """Resolve each URL against the configured upstreams and record it."""
    report = PrefetchReport()
    router = Router(config.upstreams, config.server.max_url_length, config.tls)
    store = Store(config.store, config.limits)
    try:
        async with make_session(config) as session:
            source = online_source(config, store, session, Metrics())
            limit = asyncio.Semaphore(concurrency)
            with progress("prefetch", len(urls)) as tick:

                async def one(url: str) -> None:
                    async with limit:
                        try:
                            route = router.resolve(_as_target(url, seed))
                            if git.endpoint(route.path.split("#", 1)[0]) is not None:
                                raise BadRequest(
                                    "git exchanges cannot be prefetched; record the clone: "
                                    + git.record_command(url, seed)
                                )
                            answer = await source.open(Request(route=route, needs_complete=True))
                        except CachesrvError as exc:
                            report.failed.append((url, str(exc)))
                        else:
                            hit = answer.outcome is Outcome.HIT
                            (report.present if hit else report.new).append(route.url)
                            if isinstance(answer, Stored):
                                report.bytes += answer.entry.size
                        tick()

                await asyncio.gather(*(one(u) for u in urls))
            await source.close()
    finally:
        store.close()
    return report


def _as_target(url: str, seed: str | None) -> str:
    """A URL given on the command line as the router's request target."""
    url = url.strip()
    if seed is None:
        return url
    if url.startswith("/"):
        return f"/@{seed}{url}"
    return f"/@{seed}/{url}"
