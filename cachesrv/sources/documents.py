"""PyPI simple-index pages over any source: rewrite links; offline, list only what is stored.

`SimpleIndex` wraps the online or offline source (the app factory chooses which,
once). Requests that are not pypi index pages pass straight through. For a page,
it asks the inner source for the recorded page in the format the client prefers
(PEP 691 negotiation; each format is its own entry), and answers a rewritten copy:
- online: every file listed, links through cachesrv; the sha256 each page declares
  for its files (and their `.metadata`) is remembered so that a download can be
  verified even though pip never sends the `#sha256=` fragment;
- offline: only files whose bodies are in the store (in strict mode: in the seed),
  and metadata attributes only where the `.metadata` file is stored too, so pip and
  uv resolve to what exists instead of failing on a missing file.
"""

from __future__ import annotations

import dataclasses

import aiofiles

from ..store import Store
from ..upstreams import pypi
from ..upstreams.router import Route
from .base import Answer, Generated, Outcome, Request, Source, Stored


class SimpleIndex:
    """A `Source` decorator for pypi upstreams (see module doc)."""

    def __init__(self, inner: Source, store: Store, *, offline: bool, strict: bool = False) -> None:
        self.inner = inner
        self.store = store
        self.offline = offline
        self.strict = strict

    async def open(self, request: Request) -> Answer:
        route = request.route
        upstream = route.upstream
        if upstream.kind != "pypi" or not pypi.is_index_page(upstream, route.url):
            return await self.inner.open(request)
        as_json = await self._choose_json(route, pypi.wants_json(request.accept))
        if as_json:
            route = dataclasses.replace(
                route,
                key=dataclasses.replace(route.key, url=route.url + pypi.JSON_QUERY),
            )
        answer = await self.inner.open(
            dataclasses.replace(request, route=route, needs_complete=True)
        )
        assert isinstance(answer, Stored)
        async with aiofiles.open(answer.path, "rb") as f:
            body = await f.read()
        page_url = request.route.url
        project = pypi.is_project_page(upstream, page_url)
        links = pypi.parse_page(body, page_url, as_json) if project else []
        if links and answer.outcome in (Outcome.RECORDED, Outcome.REVALIDATED):
            await self._remember_hashes(route.url, answer, links)
        keep = await self._keeper(links, route.seed) if self.offline and project else None
        # Links relative to the page, so a /@seed/ prefix carries through to the files.
        up = "../" * request.route.path.count("/")
        rendered = pypi.render_page(body, page_url, as_json, upstream, up, keep)
        content_type = pypi.JSON_V1 if as_json else answer.entry.content_type
        return Generated(body=rendered, content_type=content_type, outcome=answer.outcome)

    async def _choose_json(self, route: Route, prefer_json: bool) -> bool:
        """Offline, serve the recorded format when only the other one was recorded."""
        if not self.offline:
            return prefer_json
        index = self.store.index
        json_key = route.url + pypi.JSON_QUERY
        have_json = await index.run(index.get, json_key) is not None
        have_html = await index.run(index.get, route.url) is not None
        if prefer_json:
            return have_json or not have_html
        return have_json and not have_html

    async def _remember_hashes(
        self, page_key: str, answer: Stored, links: list[pypi.FileLink]
    ) -> None:
        index = self.store.index
        digest = answer.entry.digest.hex
        if await index.run(index.page_indexed, page_key, digest):
            return
        rows: list[tuple[str, str, str]] = []
        for link in links:
            if link.sha256:
                rows.append((link.url, "sha256", link.sha256))
            if link.metadata_sha256:
                rows.append((link.url + ".metadata", "sha256", link.metadata_sha256))
        await index.run(index.declare_hashes, page_key, digest, rows)

    async def _keeper(self, links: list[pypi.FileLink], seed: str | None) -> pypi.Keep:
        index = self.store.index
        wanted = [link.url for link in links] + [link.url + ".metadata" for link in links]
        only_seed = seed if self.strict else None
        stored = await index.run(index.stored_keys, wanted, only_seed)

        def keep(link: pypi.FileLink) -> tuple[bool, bool]:
            return link.url in stored, link.url + ".metadata" in stored

        return keep

    async def close(self) -> None:
        await self.inner.close()
