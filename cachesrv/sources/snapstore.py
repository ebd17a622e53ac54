"""The Snap Store over any source: record refresh actions online, replay them offline.

`SnapStore` wraps the online or offline source (the app factory chooses which, once),
like `documents.IndexDocuments` does for index documents. Requests to other upstream kinds
pass straight through. For a `kind = "snap"` upstream (shapes: `upstreams/snap.py`,
after snapd's `store/store.go`, `store/store_action.go`, `store/store_asserts.go`):

- `POST /v2/snaps/refresh`: online, forwarded upstream with the client's device headers;
  each action's result is recorded as a small JSON entry under its normalised key, the
  sha3-384 it declares for its download is remembered (so the download is verified and
  a mismatching body never recorded, `online.Flight`), and the answer is rendered from
  those records with every `download.url` pointing at cachesrv. Offline, each action is
  answered from its record; a missing one gets a per-action error whose code snapd does
  not translate, so `snap` prints our message ("not in offline seed: snap NAME (channel
  C, arch A); ..."). Other actions of the same request are still answered. If the store
  is down while online, the records are served (stale) when every action has one.
- `GET /v2/snaps/info/<name>`: recorded by the inner source; download URLs rewritten.
- `GET /v2/assertions/...`: recorded by the inner source. Offline, an assertion asked for
  with another `max-format` than recorded is served if its `format` fits. A miss
  answers the store's `{"error-list": [...]}` with `Content-Type: application/json`
  exactly (snapd decodes nothing else); online, an upstream 404 becomes the store's
  `not-found` error list again (the inner source does not keep error bodies).
- Any other miss (downloads, info, find) is `404 Not in offline seed` with the diagnosis
  in `X-Oops-Id`, the one part of an error answer snapd prints.
Every miss is logged by the offline source, with the seed and strict mode it applies.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import TYPE_CHECKING, Any

import aiofiles

from ..errors import (
    BadRequest,
    MethodNotAllowed,
    NotCached,
    UpstreamError,
    UpstreamStatus,
)
from ..models import ArtifactKind, CacheKey, Entry
from ..store import Store
from ..upstreams import snap, snapasserts
from ..upstreams.kind import load_json
from ..upstreams.router import Route
from .base import Answer, Generated, Outcome, Request, Source, Stored

if TYPE_CHECKING:
    import aiohttp

    from ..metrics import Metrics

log = logging.getLogger("cachesrv.snapstore")

#: Upstream per-action error codes worth replaying: what the store knew about the snap.
#: Authorisation errors are about the asking device and are never recorded.
_RECORDED_ERRORS = frozenset({"name-not-found", "id-not-found", "revision-not-found"})


class SnapStore:
    """A `Source` decorator for snap store upstreams (see module doc)."""

    def __init__(
        self,
        inner: Source,
        store: Store,
        *,
        offline: bool,
        session: aiohttp.ClientSession | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.inner = inner
        self.store = store
        self.offline = offline
        self.session = session
        self.metrics = metrics

    async def open(self, request: Request) -> Answer:
        route = request.route
        if route.upstream.kind != "snap":
            return await self.inner.open(request)
        kind = snap.endpoint(route.path)
        if request.method == "POST":
            if kind != "refresh":
                raise MethodNotAllowed(
                    "the snap store API takes POST only at /v2/snaps/refresh",
                    allowed=("GET", "HEAD"),
                )
            return await self._refresh(request)
        if kind == "refresh":
            raise MethodNotAllowed("/v2/snaps/refresh answers POST only", allowed=("POST",))
        try:
            if kind == "assertion" and self.offline:
                request = await self._compatible_assertion(request)
            if kind == "info":
                return await self._info(request)
            return await self.inner.open(request)
        except NotCached as exc:
            raise _snap_miss(exc, kind) from None
        except UpstreamStatus as exc:
            if kind == "assertion" and exc.status == 404:
                body = snap.error_list_body("not-found", "not found")
                return Generated(body, snap.JSON, Outcome.PASSTHROUGH, status=404)
            raise

    async def close(self) -> None:
        await self.inner.close()

    # -- refresh actions ----------------------------------------------------------------

    async def _refresh(self, request: Request) -> Answer:
        route = request.route
        upstream = route.upstream
        parsed = snap.parse_refresh(request.body)
        arch, series = snap.device(request.headers)
        if not arch:
            raise BadRequest("a refresh request needs a Snap-Device-Architecture header")
        base = snap.local_base(snap.header(request.headers, "Host"), route.seed, upstream)
        if self.offline:
            results: list[dict[str, Any]] = []
            missed = False
            for action in parsed.actions:
                result = await self._replay(request, action, arch, series, base)
                missed = missed or result.get("error", {}).get("code") == snap.MISS_CODE
                results.append(result)
            results += [snap.group_miss_result(g) for g in parsed.assertion_groups]
            outcome = Outcome.OFFLINE_MISS if missed else Outcome.HIT
            return Generated(snap.render_answer(results, []), snap.JSON, outcome)
        return await self._forward(request, parsed, arch, series, base)

    async def _replay(
        self, request: Request, action: snap.Action, arch: str, series: str, base: str
    ) -> dict[str, Any]:
        """Offline: one action from its record, or the per-action miss (logged by the
        inner source, which also applies the seed and strict mode)."""
        route = self._action_route(request.route, action, arch, series)
        ask = Request(route=route, method="POST", user_agent=request.user_agent)
        try:
            answer = await self.inner.open(dataclasses.replace(ask, needs_complete=True))
        except NotCached as exc:
            return snap.miss_result(action, arch, route.seed, exc.diagnosis.reason.value)
        assert isinstance(answer, Stored)
        record = await _read(answer)
        return snap.render_result(record, action.instance_key, route.upstream, base)

    async def _forward(
        self,
        request: Request,
        parsed: snap.RefreshRequest,
        arch: str,
        series: str,
        base: str,
    ) -> Answer:
        route = request.route
        upstream = route.upstream
        if self.session is None:
            raise UpstreamError(upstream.name, route.url, "no HTTP session (offline wiring?)")
        headers = snap.forward_headers(request.headers)
        try:
            status, answer_headers, body = await snap.post_json(
                self.session, upstream.name, route.url, request.body or b"", headers
            )
            if status >= 500 or status in (408, 429):
                raise UpstreamError(upstream.name, route.url, f"answered {status}")
        except UpstreamError as exc:
            stale = await self._stale(request, parsed, arch, series, base)
            if stale is None:
                raise
            log.warning("serving recorded refresh answers: %s", exc)
            if self.metrics is not None:
                self.metrics.stale.labels(upstream.name).inc()
            return stale
        if status != 200:
            # The store's own refusal (400 bad request, 401...): passed through unrecorded.
            passed = tuple((k, v) for k, v in answer_headers.items() if k.lower() in ("x-oops-id",))
            content_type = answer_headers.get("Content-Type", snap.JSON)
            return Generated(body, content_type, Outcome.PASSTHROUGH, status, passed)
        try:
            doc = load_json(body)
            upstream_results = [r for r in doc.get("results") or [] if isinstance(r, dict)]
        except (ValueError, AttributeError, TypeError):  # not an object with a results list
            raise UpstreamError(upstream.name, route.url, "refresh answer is not JSON") from None
        by_key = {str(r["instance-key"]): r for r in upstream_results if "instance-key" in r}
        results: list[dict[str, Any]] = []
        matched: set[int] = set()
        for action in parsed.actions:
            found = by_key.pop(action.instance_key, None)
            if found is None:
                continue
            matched.add(id(found))
            record = json.dumps(found).encode()
            if _worth_recording(found):
                action_route = self._action_route(route, action, arch, series)
                await self._record(action_route, record, found)
            results.append(snap.render_result(record, action.instance_key, upstream, base))
        for other in upstream_results:  # context-only errors, fetch-assertions results
            if id(other) not in matched:
                snap.rewrite_downloads(other, upstream, base)
                snap.rewrite_stream_urls(other, upstream, base)
                results.append(other)
        errors = doc.get("error-list") or []
        return Generated(snap.render_answer(results, errors), snap.JSON, Outcome.RECORDED)

    async def _record(self, route: Route, record: bytes, result: dict[str, Any]) -> None:
        """Store one action's result and the sha3-384 it declares for its download."""
        index = self.store.index
        key = route.url
        info = await self.store.put_bytes(record)
        previous = await index.run(index.get, key)
        now = time.time()
        if previous is not None and previous.digest == info.digest:
            await index.run(index.touch, key, now)
        else:
            entry = Entry(
                key=route.key,
                digest=info.digest,
                size=info.size,
                sha256=info.sha256,
                kind=ArtifactKind.MUTABLE,
                content_type=snap.JSON,
                recorded=now,
                validated=now,
            )
            await index.run(index.put, entry)
        if route.seed:
            await index.run(index.add_to_seed, route.seed, key)
        rows = snap.declared_hashes(result, route.upstream)
        if rows:
            await index.run(index.declare_hashes, key, info.digest.hex, rows)

    async def _stale(
        self,
        request: Request,
        parsed: snap.RefreshRequest,
        arch: str,
        series: str,
        base: str,
    ) -> Generated | None:
        """The recorded answer when the store is down, if every action has a record."""
        index = self.store.index
        results = []
        for action in parsed.actions:
            route = self._action_route(request.route, action, arch, series)
            entry = await index.run(index.get, route.url)
            if entry is None or not self.store.blobs.has(entry.digest):
                return None
            if await index.run(index.is_quarantined, entry.digest):
                return None
            record = await _read(Stored(entry, self.store.blobs.path(entry.digest), Outcome.STALE))
            results.append(snap.render_result(record, action.instance_key, route.upstream, base))
        if parsed.assertion_groups or not results:
            return None
        return Generated(snap.render_answer(results, []), snap.JSON, Outcome.STALE)

    @staticmethod
    def _action_route(route: Route, action: snap.Action, arch: str, series: str) -> Route:
        upstream = route.upstream
        url = snap.action_key(upstream, action, arch, series)
        path = url[len(upstream.base) + 1 :]
        key = CacheKey(upstream.name, url)
        return Route(upstream=upstream, key=key, path=path, seed=route.seed)

    # -- info and assertions -------------------------------------------------------------

    async def _info(self, request: Request) -> Answer:
        route = request.route
        answer = await self.inner.open(dataclasses.replace(request, needs_complete=True))
        assert isinstance(answer, Stored)
        body = await _read(answer)
        base = snap.local_base(snap.header(request.headers, "Host"), route.seed, route.upstream)
        try:
            doc = load_json(body)
        except ValueError:
            return answer  # not JSON: served as recorded
        if not self.offline and answer.outcome in (Outcome.RECORDED, Outcome.REVALIDATED):
            index = self.store.index
            digest = answer.entry.digest.hex
            rows = snap.declared_hashes(doc, route.upstream) if isinstance(doc, dict) else []
            if rows and not await index.run(index.page_indexed, route.url, digest):
                await index.run(index.declare_hashes, route.url, digest, rows)
        rendered = snap.render_info(body, route.upstream, base)
        return Generated(rendered, answer.entry.content_type, answer.outcome)

    async def _compatible_assertion(self, request: Request) -> Request:
        """Offline: if this exact assertion URL was never recorded but the same assertion
        was, under another `max-format`, and its format is one the client supports, ask
        for that entry instead (snapd versions differ in what max-format they send)."""
        route = request.route
        index = self.store.index
        if await index.run(index.get, route.url) is not None:
            return request
        plain = route.url.split("?", 1)[0]
        wanted = snapasserts.max_format(route.url)
        candidates = await index.run(index.entries, plain + "?")
        exact = await index.run(index.get, plain)
        best: tuple[int, Entry] | None = None
        for entry in [*candidates, *([exact] if exact else [])]:
            if entry.key.url.split("?", 1)[0] != plain or not self.store.blobs.has(entry.digest):
                continue
            head = await _read_head(self.store.blobs.path(entry.digest))
            fmt = snapasserts.assertion_format(head)
            if fmt <= wanted and (best is None or fmt > best[0]):
                best = (fmt, entry)
        if best is None:
            return request
        key = best[1].key
        path = route.path.split("?", 1)[0] + key.url[len(plain) :]
        return dataclasses.replace(request, route=dataclasses.replace(route, key=key, path=path))


def _worth_recording(result: dict[str, Any]) -> bool:
    if result.get("result") != "error":
        return isinstance(result.get("snap"), dict)
    error = result.get("error")
    return isinstance(error, dict) and error.get("code") in _RECORDED_ERRORS


def _snap_miss(exc: NotCached, kind: str) -> NotCached:
    """The offline miss in the shape snapd can show (see module doc)."""
    d = exc.diagnosis
    seed = f" --seed {d.seed}" if d.seed else ""
    text = (
        f"not in offline seed: {d.key.url} ({d.reason.value}"
        + (f", seed {d.seed}" if d.seed else "")
        + f"); online: cachesrv prefetch{seed} {d.key.url}, then seed export/import"
    )
    headers = {"X-Oops-Id": snap.oops_id(text)}
    if kind == "assertion":
        body = snap.error_list_body(snap.MISS_CODE, text)
        return NotCached(d, headers=headers, body=body, content_type=snap.JSON)
    return NotCached(d, headers=headers)


async def _read(answer: Stored) -> bytes:
    async with aiofiles.open(answer.path, "rb") as f:
        data: bytes = await f.read()
    return data


async def _read_head(path: object) -> bytes:
    async with aiofiles.open(path, "rb") as f:  # type: ignore[call-overload]
        data: bytes = await f.read(64 * 1024)
    return data
