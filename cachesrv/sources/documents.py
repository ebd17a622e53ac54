"""Index documents over any source: rewrite links; offline, list only what is stored.

`IndexDocuments` wraps the online or offline source (the app factory chooses which,
once). Requests that are not an index document of their upstream's kind (by the
kind's `Documents` rules, `upstreams/kind.py`) pass straight through. For a document
(a PyPI project page, an npm packument, a Go version list, a Cargo index file):
- the format the client prefers is asked of the inner source (each format is its own
  entry); offline, the first format that is recorded, so a client that asks JSON
  gets the recorded HTML page rather than a miss (and an npm client asking the
  abbreviated packument gets the full one);
- online, the hashes the document declares for its files are remembered, so a
  download is verified before it is recorded even when the client does not send
  them (pip drops the `#sha256=` fragment; npm's tarball URLs carry none);
- the answer is the kind's rendering: links through cachesrv and, offline, only files
  whose bodies are stored (in strict mode: in the seed), so clients resolve to what
  exists instead of failing on a missing file;
- a document that cannot be read is a clear 502 (online) and nothing is recorded
  from it; a miss is listed under the URL the client asked, not a format's key;
- offline, a `synthetic` format that was never recorded is rendered from the store
  (`render` gets no body) without asking the inner source, so no miss is logged for
  it; when `render` raises `NothingStored` (nothing to make it from), the inner
  source's miss is the answer (logged and explained like any other).
"""

from __future__ import annotations

import logging

import aiofiles

from ..errors import CachesrvError, NotCached, UpstreamError
from ..store import Store
from ..upstreams import kind_of
from ..upstreams.kind import Doc, Documents, FileRef, NothingStored, View
from ..upstreams.router import Route
from .base import Answer, Generated, Outcome, Request, Source, Stored

log = logging.getLogger("cachesrv.documents")


class _NothingStored(Exception):
    """A synthetic document with nothing stored to make it from: a miss."""


class _BlobGone(Exception):
    """The recorded body's blob went away between the lookup and the read."""


#: How many times a document is asked again when its blob went away before it was read.
_BLOB_RETRIES = 2


class IndexDocuments:
    """A `Source` decorator for every kind's index documents (see module doc)."""

    def __init__(self, inner: Source, store: Store, *, offline: bool, strict: bool = False) -> None:
        self.inner = inner
        self.store = store
        self.offline = offline
        self.strict = strict

    async def open(self, request: Request) -> Answer:
        route = request.route
        upstream = route.upstream
        rules = kind_of(upstream).documents
        formats = rules.formats(upstream, route.url, request.accept) if rules else []
        if rules is None:
            return await self.inner.open(request)
        if not formats:
            if not self.offline:
                await self._declare_first(rules, route)
            return await self.inner.open(request)
        doc = await self._choose(formats, route.seed)
        doc_request = Request(
            route=route.rekeyed(doc.key),
            method="GET",
            user_agent=request.user_agent,
            accept=request.accept,
            headers=request.headers,
            needs_complete=True,
            document=True,
        )
        answer: Answer | None = None
        miss: NotCached | None = None
        # Offline, a synthetic format that was never recorded is made from the store
        # without asking the inner source, which would log a miss for it.
        if not (self.offline and doc.synthetic) or await self._recorded(doc, route.seed):
            try:
                answer = await self.inner.open(doc_request)
            except NotCached as exc:
                if not doc.synthetic:
                    raise
                miss = exc
        try:
            return await self._answer_fresh(rules, request, doc, answer, doc_request)
        except _NothingStored:
            # Nothing stored to make it from: the inner source's miss (logged, explained).
            if miss is not None:
                raise miss from None
            answer = await self.inner.open(doc_request)
            return await self._answer_fresh(rules, request, doc, answer, doc_request)

    async def _answer_fresh(
        self, rules: Documents, request: Request, doc: Doc, answer: Answer | None, again: Request
    ) -> Generated:
        """`_answer`; when the recorded body's blob went away (evicted, or removed by gc)
        between the lookup and the read, the inner source is asked `again`: its entry
        is gone now, so the document is fetched anew (online) or missed."""
        for _ in range(_BLOB_RETRIES):
            try:
                return await self._answer(rules, request, doc, answer)
            except _BlobGone:
                answer = await self.inner.open(again)
        return await self._answer(rules, request, doc, answer)

    async def _answer(
        self, rules: Documents, request: Request, doc: Doc, answer: Answer | None
    ) -> Generated:
        """The kind's rendering of the recorded body (`answer`) or, for a synthetic
        format with none, of what is stored; `_NothingStored` if there is nothing to
        make it from (`render` raised `NothingStored`)."""
        route = request.route
        upstream = route.upstream
        body: bytes | None = None
        outcome = Outcome.OFFLINE_MISS
        content_type = doc.content_type
        if answer is not None:
            assert isinstance(answer, Stored)
            try:
                async with aiofiles.open(answer.path, "rb") as f:
                    body = await f.read()
            except FileNotFoundError:
                raise _BlobGone(str(answer.path)) from None
            outcome = answer.outcome
            content_type = content_type or answer.entry.content_type
        companions = await self._companions(rules, route, doc)
        try:
            refs = rules.files(upstream, doc, body, companions) if body is not None else []
            fresh = outcome in (Outcome.RECORDED, Outcome.REVALIDATED)
            if refs and fresh and isinstance(answer, Stored):
                await self._remember_hashes(doc.key, answer, refs)
            stored = await self._stored(rules, route, doc, refs) if self.offline else None
            view = View(
                served=request.served,
                # Relative links keep a /@seed/ prefix (pypi pages link relatively).
                up="../" * route.path.count("/"),
                stored=stored,
                companions=companions,
            )
            try:
                rendered = rules.render(upstream, doc, body, view)
            except NothingStored as exc:
                if body is not None:
                    raise ValueError(str(exc)) from None
                raise _NothingStored(str(exc)) from None
        except (ValueError, UnicodeError) as exc:
            raise UpstreamError(
                upstream.name, doc.url, f"index document unreadable: {str(exc)[:200]}"
            ) from None
        return Generated(
            body=rendered,
            content_type=content_type or "application/octet-stream",
            outcome=outcome,
        )

    async def _declare_first(self, rules: Documents, route: Route) -> None:
        """Fetch (and record) the document that declares a file's hash, when the file
        is asked before any such document was seen (`Documents.declared_by`), so the
        file is verified before it is recorded. If the document cannot be had, the
        file is fetched as before, unverified (the client still checks it)."""
        if self.store.hot.get(route.url) is not None:
            return  # a hit from memory: no SQLite on the hit path (store/hot.py)
        doc_key = rules.declared_by(route.upstream, route.url)
        index = self.store.index
        if doc_key is None or await index.run(index.declared_hash, route.url) is not None:
            return
        if await index.run(index.get, route.url) is not None:
            return  # recorded already: a hit, or revalidated as before
        base = route.upstream.base + "/"
        sub = doc_key[len(base) :] if doc_key.startswith(base) else route.path
        try:
            await self.open(Request(route=route.rekeyed(doc_key, sub), needs_complete=True))
        except CachesrvError as exc:
            log.warning("cannot fetch %s to verify %s: %s", doc_key, route.url, exc)

    async def _choose(self, formats: list[Doc], seed: str | None) -> Doc:
        """Online, the client's preferred format; offline, the first one recorded."""
        if not self.offline or len(formats) == 1:
            return formats[0]
        index = self.store.index
        only_seed = seed if self.strict else None
        recorded = await index.run(index.stored_keys, [d.key for d in formats], only_seed)
        return next((d for d in formats if d.key in recorded), formats[0])

    async def _recorded(self, doc: Doc, seed: str | None) -> bool:
        index = self.store.index
        only_seed = seed if self.strict else None
        return bool(await index.run(index.stored_keys, [doc.key], only_seed))

    async def _companions(self, rules: Documents, route: Route, doc: Doc) -> dict[str, bytes]:
        """The recorded bodies of the documents this one needs; online, fetched if not
        recorded yet."""
        found: dict[str, bytes] = {}
        base = route.upstream.base + "/"
        index = self.store.index
        for key in rules.companions(route.upstream, doc):
            entry = await index.run(index.get, key)
            path = self.store.blobs.path(entry.digest) if entry is not None else None
            if path is None or not path.exists():
                if self.offline:
                    continue
                sub = key[len(base) :] if key.startswith(base) else route.path
                answer = await self.inner.open(
                    Request(route=route.rekeyed(key, sub), needs_complete=True, document=True)
                )
                assert isinstance(answer, Stored)
                path = answer.path
            async with aiofiles.open(path, "rb") as f:
                found[key] = await f.read()
        return found

    async def _remember_hashes(self, page_key: str, answer: Stored, refs: list[FileRef]) -> None:
        index = self.store.index
        digest = answer.entry.digest.hex
        if await index.run(index.page_indexed, page_key, digest):
            return
        rows = [
            (r.key, r.declared.algorithm, r.declared.hexdigest)
            for r in refs
            if r.declared is not None
        ]
        await index.run(index.declare_hashes, page_key, digest, rows)

    async def _stored(
        self, rules: Documents, route: Route, doc: Doc, refs: list[FileRef]
    ) -> frozenset[str]:
        index = self.store.index
        only_seed = route.seed if self.strict else None
        found = await index.run(index.stored_keys, [r.key for r in refs], only_seed)
        prefix = rules.inventory(route.upstream, doc)
        if prefix is not None:
            found |= await index.run(index.stored_under, prefix, only_seed)
        return frozenset(found)

    async def close(self) -> None:
        await self.inner.close()
