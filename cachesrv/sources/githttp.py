"""git smart HTTP over any source: clones recorded online, replayed offline.

`GitSmartHttp` wraps the online or offline source like `IndexDocuments` and `SnapStore`
do. Requests that are not git's pass straight through. For the advertisement
(`info/refs?service=git-upload-pack`) and `git-upload-pack` POSTs it asks the inner
source under the keys `upstreams/git.py` makes (protocol and normalised request body
in the key), so the inner source records, single-flights, revalidates and replays
them like any mutable entry, in the seed asked for. Offline misses are answered in
the shapes git prints (see `upstreams/git.py`); pushes are refused.
"""

from __future__ import annotations

import dataclasses

from ..errors import MethodNotAllowed, NotCached
from ..upstreams import git
from .base import Answer, Generated, Outcome, Request, Source


class GitSmartHttp:
    """A `Source` decorator for git smart HTTP (see module doc)."""

    def __init__(self, inner: Source) -> None:
        self.inner = inner

    async def open(self, request: Request) -> Answer:
        route = request.route
        what = git.endpoint(route.path) if route.upstream.kind == "generic" else None
        if what is None:
            return await self.inner.open(request)
        if what == "receive-pack":
            raise MethodNotAllowed(
                "cachesrv serves clones and fetches; push to the repository directly",
                allowed=(),
            )
        protocol = _header(request, git.PROTOCOL_HEADER)
        if what == "refs":
            key = git.refs_key(route.url, protocol)
        elif request.method != "POST":
            raise MethodNotAllowed("git-upload-pack takes POST", allowed=("POST",))
        else:
            key = git.upload_pack_key(route.url, protocol, request.body or b"")
        try:
            return await self.inner.open(dataclasses.replace(request, route=route.rekeyed(key)))
        except NotCached as exc:
            message = _miss_message(exc, route.url)
            if what == "refs":
                # git prints a text/plain error body as `remote:` lines.
                nearest = "".join(f"\n  {u}" for u in exc.diagnosis.nearest)
                body = (message + ("\nnearest recorded:" + nearest if nearest else "")).encode()
                raise NotCached(
                    exc.diagnosis, body=body, content_type="text/plain; charset=utf-8"
                ) from None
            # Inside the exchange git shows only an ERR packet (as `remote error:`).
            return Generated(git.err_packet(message), git.RESULT_TYPE, Outcome.OFFLINE_MISS)

    async def close(self) -> None:
        await self.inner.close()


def _miss_message(exc: NotCached, url: str) -> str:
    d = exc.diagnosis
    return (
        f"Not in offline seed: git repository {git.repository(url)} ({d.reason.value}"
        + (f", seed {d.seed}" if d.seed else "")
        + f"). Record it online: {git.record_command(url, d.seed)}, then seed export/import"
    )


def _header(request: Request, name: str) -> str | None:
    lower = name.lower()
    return next((v for k, v in request.headers if k.lower() == lower), None)
