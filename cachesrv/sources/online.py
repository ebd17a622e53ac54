"""The online source: one upstream fetch per key, teed to every client and the store.

A `Flight` is the single fetch of one cache key. The first request for an
uncached (or revalidating) key starts it; requests for the same key that arrive
meanwhile join it. The flight writes the body into a temp blob while hashing it;
each client tails that temp file at its own pace through a duplicated file
descriptor, so memory stays bounded whatever the size and a slow client never
slows the fetch. A client is never sent the last byte of a body until the body is
complete, verified and recorded: a truncated or lying upstream therefore makes
every client's download fail instead of handing out a corrupt file, and a client that
has a file can count on the store (and the seed it asked through) having it too.

What one fetch may cost is bounded (`[fetch]`, docs/reliability.md): the response
headers must be complete within `server.read_timeout`; a body larger than its limit
(`max_body`, or `max_document` for an index document) is refused as soon as it is
declared or passed, and a body that moves slower than `min_rate` over `rate_window`
is ended, so one hostile upstream cannot hold a flight and its clients forever. Each
ends in a 502 (504 for time) that says which limit, with nothing recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from yarl import URL

from ..config import Config, FetchLimits
from ..errors import (
    CachesrvError,
    ConfigError,
    InsufficientStorage,
    IntegrityError,
    UpstreamError,
    UpstreamStatus,
    UpstreamTimeout,
)
from ..metrics import Metrics
from ..models import ArtifactKind, CacheKey, Entry
from ..store import Store
from ..upstreams import artifact_kind, declared_hash, upstream_request
from ..upstreams.kind import Declared
from ..upstreams.router import Route
from .base import Answer, Outcome, Request, Stored, Streaming

log = logging.getLogger("cachesrv.fetch")

CHUNK = 256 * 1024
MAX_REDIRECTS = 5
_PASSED_HEADERS = ("Content-Type", "ETag", "Last-Modified")


class Flight:
    """One upstream fetch of one key, shared by every client that asks meanwhile."""

    def __init__(
        self,
        source: OnlineSource,
        route: Route,
        previous: Entry | None,
        body: bytes | None = None,
        *,
        document: bool = False,
    ) -> None:
        loop = asyncio.get_running_loop()
        self.source = source
        self.route = route
        self.previous = previous
        #: A request body to POST upstream (git upload-pack); None for a GET.
        self.upload = body
        #: The largest body this fetch accepts, and the setting that says so (module doc).
        limits = source.limits
        if document:
            self.max_body, self.limit_name = limits.max_document, "[fetch] max_document"
        elif route.upstream.max_body is not None:
            self.max_body = route.upstream.max_body
            self.limit_name = f"[upstreams.{route.upstream.name}] max_body"
        else:
            self.max_body, self.limit_name = limits.max_body, "[fetch] max_body"
        self.headers_ready: asyncio.Future[None] = loop.create_future()
        self.result: asyncio.Future[Entry] = loop.create_future()
        for fut in (self.headers_ready, self.result):
            fut.add_done_callback(_consume_exception)
        self.content_type = "application/octet-stream"
        self.content_length: int | None = None
        self.etag: str | None = None
        self.last_modified: str | None = None
        self.not_modified = False
        self.verified = False
        self.written = 0
        self.read_fd: int | None = None
        self.seeds: set[str] = {route.seed} if route.seed else set()
        self._progress = asyncio.Event()
        self.task = asyncio.create_task(self._run(), name=f"fetch {route.url}")

    # -- the fetch ----------------------------------------------------------

    async def _run(self) -> None:
        src = self.source
        url = self.route.url
        name = self.route.upstream.name
        writer = None
        reservation = None
        src.metrics.in_flight.inc()
        try:
            expected = await src.expected_hash(self.route)
            started = time.monotonic()
            try:
                async with asyncio.timeout(src.headers_timeout):
                    resp = await src.request(self.route, self.previous, self.upload)
            except TimeoutError:
                raise UpstreamTimeout(
                    name, url, f"no complete response within {src.headers_timeout:g} s"
                ) from None
            async with resp:
                src.metrics.upstream_latency.labels(name).observe(time.monotonic() - started)
                if resp.status == 304 and self.previous is not None:
                    self.not_modified = True
                    self.headers_ready.set_result(None)
                    await src.store.index.run(src.store.index.touch, url, time.time())
                    await self._add_seeds(url)
                    self.result.set_result(self.previous)
                    return
                if resp.status >= 500 or resp.status in (408, 429):
                    raise UpstreamError(name, url, f"answered {resp.status} {resp.reason or ''}")
                if resp.status != 200:
                    raise UpstreamStatus(name, url, resp.status, resp.reason or "")
                if resp.content_length is not None and resp.content_length > self.max_body:
                    raise self._too_large(f"{resp.content_length} bytes declared")
                # Room is made (or 507 answered) before a byte is streamed, when the size
                # is declared; an undeclared size is reserved once the body is complete.
                lifecycle = src.store.lifecycle
                reservation = await src.store.index.run(
                    lifecycle.make_room, resp.content_length or 0
                )
                writer = src.store.blobs.writer(
                    expected.algorithm if expected and expected.algorithm != "sha256" else None
                )
                self.read_fd = os.open(writer.path, os.O_RDONLY)
                self.content_type = resp.headers.get("Content-Type", self.content_type)
                self.content_length = resp.content_length
                self.etag = resp.headers.get("ETag")
                self.last_modified = resp.headers.get("Last-Modified")
                self.headers_ready.set_result(None)
                loop = asyncio.get_running_loop()
                pace = _Pace(src.limits)
                async for chunk in resp.content.iter_chunked(CHUNK):
                    if self.written + len(chunk) > self.max_body:
                        raise self._too_large(f"over {self.max_body} bytes sent")
                    too_slow = pace.check(self.written + len(chunk))
                    if too_slow:
                        raise UpstreamTimeout(name, url, too_slow)
                    # Hashing and writing happen off the loop; both release the GIL.
                    await loop.run_in_executor(None, writer.write, chunk)
                    self.written += len(chunk)
                    reservation.written = self.written
                    src.metrics.bytes_fetched.labels(name).inc(len(chunk))
                    self._notify()
            if self.content_length is not None and writer.size != self.content_length:
                raise UpstreamError(
                    name, url, f"body truncated at {writer.size} of {self.content_length} bytes"
                )
            if self.content_length is None:
                lifecycle.release(reservation)
                reservation = await src.store.index.run(
                    lifecycle.make_room, writer.size, writer.size
                )
            if expected is not None:
                got = writer.sha256 if expected.algorithm == "sha256" else _hex(writer.extra)
                if got != expected.hexdigest:
                    raise IntegrityError(
                        name,
                        url,
                        f"{expected.algorithm} is {got}, upstream declared {expected.hexdigest}",
                    )
            loop = asyncio.get_running_loop()
            index = src.store.index
            info = await loop.run_in_executor(None, writer.finish)
            # Claimed before it is in place, so that no gc or eviction (of any process)
            # removes it before the entry below references it (store/lifecycle.py).
            await index.run(index.claim_blobs, [info])
            await loop.run_in_executor(None, writer.place, info)
            now = time.time()
            entry = Entry(
                key=self.route.key,
                digest=info.digest,
                size=info.size,
                sha256=info.sha256,
                kind=artifact_kind(self.route.upstream, self.route.path),
                content_type=self.content_type,
                etag=self.etag,
                last_modified=self.last_modified,
                recorded=now,
                validated=now,
            )
            # The entry and its seeds in one transaction: never unpinned, not even briefly.
            await index.run(index.put, entry, tuple(self.seeds))
            await self._add_seeds(url)  # seeds that joined meanwhile
            # Only now may clients have the last byte: once one has the whole file, the
            # store (and its seeds) has it too, for any worker process that is asked next.
            self.verified = True
            log.info("recorded %s (%d bytes, %s)", url, info.size, info.digest)
            self.result.set_result(entry)
        except Exception as exc:  # every failure ends the flight; none is recorded
            error = _upstream_error(exc, name, url)
            if isinstance(error, InsufficientStorage) and not isinstance(exc, CachesrvError):
                src.store.lifecycle.counters.refusals += 1  # the disk filled while writing
            if writer is not None:
                writer.abort()
            if not self.headers_ready.done():
                self.headers_ready.set_exception(error)
            if not self.result.done():
                self.result.set_exception(error)
            if not isinstance(error, UpstreamStatus):
                log.warning("%s", error)
        finally:
            if reservation is not None:
                src.store.lifecycle.release(reservation)
            src.metrics.in_flight.dec()
            if src.flights.get(self.route.url) is self:
                del src.flights[self.route.url]
            if self.read_fd is not None:
                os.close(self.read_fd)
                self.read_fd = None
            self._notify()

    def _too_large(self, what: str) -> UpstreamError:
        return UpstreamError(
            self.route.upstream.name,
            self.route.url,
            f"body too large ({what}; the limit is {self.max_body} bytes, {self.limit_name}); "
            "nothing was recorded",
        )

    async def _add_seeds(self, url: str) -> None:
        index = self.source.store.index
        for seed in sorted(self.seeds):
            await index.run(index.add_to_seed, seed, url)

    def _notify(self) -> None:
        event, self._progress = self._progress, asyncio.Event()
        event.set()

    # -- the clients --------------------------------------------------------

    def join(self, seed: str | None) -> None:
        if seed:
            self.seeds.add(seed)

    def reader(self) -> int | None:
        """A descriptor on the body being written, taken now, before any header is sent
        (the temp file may be renamed or removed later; the descriptor stays good).
        None once the flight has ended (a small body often ends before its clients
        resume): its body is in the store, or it failed, and the request is asked again
        (web/proxy.py), never answered from a path that may be gone by then."""
        return os.dup(self.read_fd) if self.read_fd is not None else None

    async def body(self, fd: int) -> AsyncIterator[bytes]:
        """The body as it arrives, through `fd` (from `reader`; the caller closes it);
        raises the flight's error if it fails."""
        offset = 0
        while True:
            progress = self._progress
            finished = self.result.done()
            if finished and self.result.exception() is not None:
                raise self.result.exception()  # type: ignore[misc]
            # Hold back the final byte until the body is recorded (see module doc).
            limit = self.written if finished or self.verified else self.written - 1
            if offset < limit:
                # pread of bytes just written: they are in the page cache.
                data = os.pread(fd, min(CHUNK, limit - offset), offset)
                if not data:
                    raise UpstreamError(self.route.upstream.name, self.route.url, "short read")
                offset += len(data)
                yield data
                continue
            if finished:
                return
            await progress.wait()


class OnlineSource:
    """Serves from the store, fetching and recording upstream what it lacks."""

    def __init__(
        self,
        store: Store,
        session: aiohttp.ClientSession,
        metrics: Metrics,
        *,
        limits: FetchLimits | None = None,
        headers_timeout: float = 60.0,
    ) -> None:
        self.store = store
        self.session = session
        self.metrics = metrics
        self.limits = limits or FetchLimits()
        #: How long an upstream may take to send complete response headers.
        self.headers_timeout = headers_timeout
        self.flights: dict[str, Flight] = {}

    async def expected_hash(self, route: Route) -> Declared | None:
        """The hash the upstream declared for this body: in the URL (apt by-hash) or
        on an index page recorded earlier (pip `#sha256=`, snap sha3-384)."""
        declared_in_url = declared_hash(route.upstream, route.path)
        if declared_in_url is not None:
            return Declared(declared_in_url.algorithm, declared_in_url.hexdigest)
        index = self.store.index
        declared = await index.run(index.declared_hash, route.url)
        return Declared(*declared) if declared else None

    async def open(self, request: Request) -> Answer:
        route = request.route
        index = self.store.index
        flight = self.flights.get(route.url)
        if flight is not None and flight.verified:
            # The body is recorded and the flight is about to end: answer from the store.
            with contextlib.suppress(CachesrvError):
                done = await flight.result
                if route.seed:
                    await index.run(index.add_to_seed, route.seed, route.url)
                return Stored(done, self.store.blobs.path(done.digest), Outcome.HIT)
            flight = self.flights.get(route.url)
        if flight is None and route.seed is None:
            # The hit path: memory only, no SQLite, no thread (see store/hot.py).
            item = self.store.hot.get(route.url)
            if item is not None and item.entry.kind is ArtifactKind.IMMUTABLE:
                return Stored(item.entry, item.path, Outcome.HIT, item)
        if flight is None:
            entry = await index.run(index.get, route.url)
            usable = entry is not None and await self._usable(entry)
            if entry is not None and usable and entry.kind is ArtifactKind.IMMUTABLE:
                if route.seed:
                    await index.run(index.add_to_seed, route.seed, route.url)
                path = self.store.blobs.path(entry.digest)
                loop = asyncio.get_running_loop()
                hot = await loop.run_in_executor(None, self.store.hot.load, entry, path)
                return Stored(entry, path, Outcome.HIT, hot)
            # The await above may have let another request start the flight.
            flight = self.flights.get(route.url)
            if flight is None:
                body = request.body if request.method == "POST" else None
                previous = entry if usable else None
                flight = Flight(self, route, previous, body, document=request.document)
                self.flights[route.url] = flight
        flight.join(route.seed)
        try:
            await flight.headers_ready
        except CachesrvError as exc:
            if flight.previous is not None and not isinstance(exc, UpstreamStatus):
                # Upstream down: serve the last recorded copy of mutable metadata.
                self.metrics.stale.labels(route.upstream.name).inc()
                log.warning("serving stale %s: %s", route.url, exc)
                prev = flight.previous
                return Stored(prev, self.store.blobs.path(prev.digest), Outcome.STALE)
            raise
        if flight.not_modified or request.needs_complete:
            entry = await flight.result
            outcome = Outcome.REVALIDATED if flight.not_modified else Outcome.RECORDED
            return Stored(entry, self.store.blobs.path(entry.digest), outcome)
        return Streaming(flight)

    async def _usable(self, entry: Entry) -> bool:
        index = self.store.index
        if not self.store.blobs.has(entry.digest):
            return False
        return not await index.run(index.is_quarantined, entry.digest)

    async def request(
        self, route: Route, previous: Entry | None, body: bytes | None = None
    ) -> aiohttp.ClientResponse:
        """GET the route's URL (conditionally when revalidating), following only
        redirects to hosts the upstream allows; or POST `body` to it (no redirects)."""
        url, extra = upstream_request(route.upstream, route.url)
        if body is not None:
            return await self.session.post(
                url,
                data=body,
                headers={"Accept-Encoding": "identity", **extra},
                allow_redirects=False,
            )
        headers = {"Accept-Encoding": "identity", **extra}
        if previous is not None:
            if previous.etag:
                headers["If-None-Match"] = previous.etag
            if previous.last_modified:
                headers["If-Modified-Since"] = previous.last_modified
        for _ in range(MAX_REDIRECTS + 1):
            resp = await self.session.get(url, headers=headers, allow_redirects=False)
            if resp.status not in (301, 302, 303, 307, 308):
                return resp
            location = resp.headers.get("Location", "")
            resp.release()
            target = resp.url.join(URL(location))
            netloc = target.host or ""
            if target.explicit_port is not None:
                netloc = f"{netloc}:{target.explicit_port}"
            if not route.upstream.allows_host(netloc):
                raise UpstreamError(
                    route.upstream.name, route.url, f"redirected to a host not allowed: {target}"
                )
            url = str(target)
        raise UpstreamError(route.upstream.name, route.url, "too many redirects")

    async def close(self) -> None:
        """Cancel fetches in progress; let verified bodies finish being recorded (a
        client already has them, and expects the store to)."""
        for flight in list(self.flights.values()):
            if not flight.verified:
                flight.task.cancel()
            with contextlib.suppress(BaseException):
                await flight.task


class _Pace:
    """The minimum transfer rate of one fetch: every `rate_window` seconds at least
    `min_rate` bytes a second must have arrived."""

    def __init__(self, limits: FetchLimits) -> None:
        self.min_rate = limits.min_rate
        self.window = limits.rate_window
        self.since = time.monotonic()
        self.at = 0

    def check(self, total: int) -> str | None:
        """None while fast enough; else what to say (the fetch is then ended)."""
        now = time.monotonic()
        elapsed = now - self.since
        if elapsed < self.window:
            return None
        moved = total - self.at
        if moved < self.min_rate * elapsed:
            return (
                f"too slow: {moved} bytes in {elapsed:.0f} s, under the minimum of "
                f"{self.min_rate} bytes/s ([fetch] min_rate, rate_window)"
            )
        self.since, self.at = now, total
        return None


def _upstream_error(exc: BaseException, name: str, url: str) -> CachesrvError:
    if isinstance(exc, CachesrvError):
        return exc
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return UpstreamTimeout(name, url, "timed out")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return UpstreamError(name, url, f"body truncated ({exc})")
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return InsufficientStorage(
            f"the disk filled up while recording {url} ({exc.strerror}); nothing was kept. "
            "Free space with cachesrv gc, or set [store] max_size / min_free"
        )
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return UpstreamError(
            name,
            url,
            f"TLS certificate not trusted ({exc.certificate_error}); trust its CA with "
            "[tls] upstream_ca if it is right",
        )
    if isinstance(exc, aiohttp.ClientSSLError):
        return UpstreamError(name, url, f"TLS failed: {exc}")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamError(name, url, f"cannot connect: {exc.os_error}")
    if isinstance(exc, aiohttp.ClientError | OSError):
        return UpstreamError(name, url, f"{type(exc).__name__}: {exc}")
    return UpstreamError(name, url, f"internal error: {type(exc).__name__}: {exc}")


def _consume_exception(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


def _hex(h: object) -> str:
    return h.hexdigest() if h is not None else ""  # type: ignore[attr-defined]


def make_session(config: Config) -> aiohttp.ClientSession:
    """The one HTTP client session of a server (or of a CLI prefetch run).

    Upstream certificates are verified against the system's CAs plus `tls.upstream_ca`:
    a body that did not come over verified TLS is never recorded nor served.
    """
    s = config.server
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=s.connect_timeout, sock_read=s.read_timeout
    )
    context = ssl.create_default_context()
    if config.tls.upstream_ca is not None:
        try:
            context.load_verify_locations(cafile=str(config.tls.upstream_ca))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"tls.upstream_ca: cannot load {config.tls.upstream_ca}: {exc}"
            ) from None
    return aiohttp.ClientSession(
        timeout=timeout,
        auto_decompress=False,
        headers={"User-Agent": "cachesrv/0.1 (+recording proxy)"},
        connector=aiohttp.TCPConnector(limit=64, limit_per_host=16, ssl=context),
    )


__all__ = ["CacheKey", "Flight", "OnlineSource", "make_session"]
