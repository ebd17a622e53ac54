"""A fake HTTP upstream: a real aiohttp server on 127.0.0.1 serving a directory.

The server runs in a background thread with its own event loop (the plumbing shared with
the other fakes is in ``tests/fakes/server.py``), so the same object works from plain
synchronous tests (apt-get, pip and uv run as subprocesses) and from async tests
(whose loop is busy running the test itself)::

    with FakeUpstream(tmp_path / "www") as up:
        urllib.request.urlopen(f"{up.url}/dists/stable/InRelease")
        assert up.count("/dists/") == 1

What it serves (GET and HEAD only; other methods get 405):

* files under ``root``; 404 for anything else, 403 for paths with ``..`` segments or that
  resolve (through symlinks) outside ``root``;
* ``Content-Length``, ``Last-Modified`` (the file's mtime), a strong ``ETag`` (a hash of
  size, mtime_ns and inode) and ``Accept-Ranges: bytes``; never ``Content-Encoding``, so a
  ``Packages.gz`` arrives as the gzip bytes on disk;
* ``If-None-Match`` and ``If-Modified-Since`` answered with 304 (``If-None-Match`` wins
  when both are present, as RFC 9110 says);
* a single ``Range`` (``a-b``, ``a-``, ``-n``) answered with 206 + ``Content-Range``, or
  416 when unsatisfiable; multi-range requests get the whole file (200), which RFC 9110
  allows; ``If-Range`` is honoured;
* bodies streamed in chunks, so a 1 GiB file is never read into memory.

Every request is recorded in ``requests`` *before* the answer is sent, so counts are right
even when a fault then breaks the connection. Faults are injected per path through
``faults``; see :class:`Fault`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import hashlib
import mimetypes
from dataclasses import dataclass
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path

from aiohttp import web

from tests.fakes.server import ThreadedServer

_CHUNK = 256 * 1024
# XOR 0xFF: the "lie" fault's byte flipper (bytes.translate is fast even for big files).
_FLIP = bytes(255 - i for i in range(256))
# Explicit types for the archive formats this project serves; mimetypes would say
# (None, "gzip") for Packages.gz and we must never turn that into a Content-Encoding.
_CONTENT_TYPES = {
    ".deb": "application/vnd.debian.binary-package",
    ".gz": "application/gzip",
    ".xz": "application/x-xz",
    ".bz2": "application/x-bzip2",
    ".zst": "application/zstd",
    ".whl": "application/zip",
    ".snap": "application/octet-stream",
    ".gpg": "application/pgp-signature",
}


class FaultKind(enum.Enum):
    """What a :class:`Fault` does to the response."""

    TRUNCATE = "truncate"
    STATUS = "status"
    LIE = "lie"
    SLOW = "slow"
    HANG = "hang"


@dataclass(frozen=True)
class Fault:
    """A fault injected for one path (the key in :attr:`FakeUpstream.faults`).

    Build them with the constructors:

    * ``Fault.truncate()``: correct headers (``Content-Length`` of the full body), then
      only the first half of the body, then the connection is closed. The client sees a
      payload error (aiohttp ``ClientPayloadError``, urllib ``IncompleteRead``, apt
      retries or reports an error).
    * ``Fault.status(500)``: answer with that status (and ``reason``) and a short text body,
      whether or not the file exists.
    * ``Fault.lie()``: same headers and length as the real file, but every byte flipped
      (XOR 0xFF), so any hash check fails.
    * ``Fault.slow(chunk_size, delay)``: the real body, in ``chunk_size`` pieces with
      ``delay`` seconds between them, so concurrent requests overlap.
    * ``Fault.hang()``: never answer (until the client gives up or the server stops).

    ``times=None`` makes the fault permanent; ``times=n`` applies it to the next ``n``
    requests it affects and then removes it from ``faults``. ``status`` and ``hang`` affect
    every request to the path (any method, file or not); ``truncate``, ``lie`` and ``slow``
    affect only GETs that get a body (200 or 206): a HEAD or a 304 neither triggers nor
    uses them up.
    """

    kind: FaultKind
    code: int = 500
    reason: str | None = None
    chunk_size: int = 1024
    delay: float = 0.01
    times: int | None = None

    @classmethod
    def truncate(cls, *, times: int | None = None) -> Fault:
        """Send the full ``Content-Length``, half the body, then close the connection."""
        return cls(FaultKind.TRUNCATE, times=times)

    @classmethod
    def status(
        cls, code: int = 500, reason: str | None = None, *, times: int | None = None
    ) -> Fault:
        """Answer with HTTP status ``code`` (and reason phrase ``reason``)."""
        return cls(FaultKind.STATUS, code=code, reason=reason, times=times)

    @classmethod
    def lie(cls, *, times: int | None = None) -> Fault:
        """Serve the file's length with every byte flipped."""
        return cls(FaultKind.LIE, times=times)

    @classmethod
    def slow(
        cls, chunk_size: int = 1024, delay: float = 0.01, *, times: int | None = None
    ) -> Fault:
        """Send the body ``chunk_size`` bytes at a time, awaiting ``delay`` s in between."""
        if chunk_size <= 0 or delay < 0:
            raise ValueError("chunk_size must be > 0 and delay >= 0")
        return cls(FaultKind.SLOW, chunk_size=chunk_size, delay=delay, times=times)

    @classmethod
    def hang(cls, *, times: int | None = None) -> Fault:
        """Send nothing at all until the client disconnects or the server stops."""
        return cls(FaultKind.HANG, times=times)


class Headers(dict[str, str]):
    """Request headers with case-insensitive lookup (keys are stored lower-cased).

    Clients disagree on case (urllib sends ``If-none-match``), so ``h["If-None-Match"]``,
    ``h.get("if-none-match")`` and ``"RANGE" in h`` all work. Repeated headers are joined
    with ``", "``.
    """

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return super().get(key.lower(), default)


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake upstream saw it.

    ``path`` is the decoded URL path without the query string (``query`` holds that).
    ``status`` is the status the server decided to send, recorded before sending it; it is
    0 for a ``hang`` fault, which sends nothing. ``fault`` says which fault was applied.
    """

    method: str
    path: str
    headers: Headers
    status: int
    query: str = ""
    fault: FaultKind | None = None


class FakeUpstream(ThreadedServer[RecordedRequest]):
    """A real HTTP server on ``127.0.0.1:<random port>`` serving files from ``root``.

    Use it as a context manager or call :meth:`start` / :meth:`stop`. Attributes:

    * ``url``: ``"http://127.0.0.1:PORT"`` (no trailing slash), ``port``: the bound port;
    * ``requests``: every request, in arrival order (appended under a lock from the
      server thread; read it freely from the test), with ``count(prefix)``,
      ``paths(prefix)`` and ``reset_log()`` (see :class:`~tests.fakes.server.ThreadedServer`);
    * ``faults``: ``{path: Fault}``; add or remove entries at any time, even while running.
      Keys are decoded URL paths without the query, as in ``RecordedRequest.path``
      (``"/dists/stable/InRelease"``); absolute-form (proxy) requests match by path too.
    """

    def __init__(self, root: Path) -> None:
        self.root: Path = Path(root).resolve()
        super().__init__(name=f"FakeUpstream({self.root})")
        self.url: str = ""
        self.port: int = 0
        self.faults: dict[str, Fault] = {}

    # -- listener, request log, faults -------------------------------------------------

    async def _setup(self) -> None:
        # A low-level handler (no router): one handler sees every path.
        self.port = await self._listen(self._handle)
        self.url = f"http://127.0.0.1:{self.port}"

    def _record(self, request: web.BaseRequest, status: int, fault: Fault | None) -> None:
        headers = Headers()
        for name, value in request.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        self._log(
            RecordedRequest(
                method=request.method,
                path=request.path,
                headers=headers,
                status=status,
                query=request.query_string,
                fault=fault.kind if fault is not None else None,
            )
        )

    def _take_fault(self, path: str, kinds: set[FaultKind]) -> Fault | None:
        """Atomically use up one application of the path's fault, if it is of ``kinds``."""
        with self._lock:
            fault = self.faults.get(path)
            if fault is None or fault.kind not in kinds:
                return None
            if fault.times is not None:
                if fault.times <= 1:
                    del self.faults[path]
                else:
                    self.faults[path] = dataclasses.replace(fault, times=fault.times - 1)
            return fault

    # -- serving -----------------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        fault = self._take_fault(path, {FaultKind.STATUS, FaultKind.HANG})
        if fault is not None and fault.kind is FaultKind.HANG:
            self._record(request, 0, fault)
            return await self._hang(request)
        if fault is not None:
            self._record(request, fault.code, fault)
            return web.Response(status=fault.code, reason=fault.reason, text="injected fault\n")

        if request.method not in ("GET", "HEAD"):
            self._record(request, 405, None)
            return web.Response(status=405, headers={"Allow": "GET, HEAD"})
        target = self._resolve(path)
        if isinstance(target, int):
            self._record(request, target, None)
            return web.Response(status=target, text=f"{target}\n")

        try:
            st = target.stat()
        except OSError:  # removed since _resolve()
            self._record(request, 404, None)
            return web.Response(status=404, text="404\n")
        size = st.st_size
        # Strong validator: changes whenever the file is rewritten or replaced.
        digest = hashlib.sha256(f"{size}-{st.st_mtime_ns}-{st.st_ino}".encode()).hexdigest()
        etag = f'"{digest[:32]}"'
        last_modified = formatdate(st.st_mtime, usegmt=True)
        headers = {"ETag": etag, "Last-Modified": last_modified, "Accept-Ranges": "bytes"}

        if _not_modified(request, etag, int(st.st_mtime)):
            self._record(request, 304, None)
            return web.Response(status=304, headers=headers)

        status, start, length = 200, 0, size
        range_header = request.headers.get("Range")
        if range_header is not None and _if_range_ok(request, etag, last_modified):
            parsed = _parse_range(range_header, size)
            if parsed == "unsatisfiable":
                self._record(request, 416, None)
                return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
            if isinstance(parsed, tuple):
                start, end = parsed
                status, length = 206, end - start + 1
                headers["Content-Range"] = f"bytes {start}-{end}/{size}"

        body_fault = None
        if request.method == "GET" and length > 0:
            body_fault = self._take_fault(path, {FaultKind.TRUNCATE, FaultKind.LIE, FaultKind.SLOW})
        self._record(request, status, body_fault)

        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_type = _content_type(target)
        resp.content_length = length
        try:
            await resp.prepare(request)
            if request.method == "GET":
                await self._send_body(request, resp, target, start, length, body_fault)
        except ConnectionError:
            # The client went away mid-body (e.g. it timed out on a slow fault); aiohttp's
            # finish_response swallows the ConnectionError its write_eof() then raises.
            pass
        return resp

    def _resolve(self, path: str) -> Path | int:
        """Map a URL path to a regular file under root, or to an error status."""
        rel = path.lstrip("/")
        parts = rel.split("/")
        if ".." in parts or "\x00" in rel:
            return 403
        if not rel:
            return 404
        candidate = self.root / rel
        try:
            resolved = candidate.resolve(strict=True)
        except (OSError, RuntimeError):
            return 404
        if not resolved.is_relative_to(self.root):
            return 403
        if not resolved.is_file():
            return 404
        return resolved

    async def _send_body(
        self,
        request: web.BaseRequest,
        resp: web.StreamResponse,
        target: Path,
        start: int,
        length: int,
        fault: Fault | None,
    ) -> None:
        kind = fault.kind if fault is not None else None
        to_send = length // 2 if kind is FaultKind.TRUNCATE else length
        chunk = fault.chunk_size if fault is not None and kind is FaultKind.SLOW else _CHUNK
        # Plain blocking reads on the server's own loop: local files, test-sized traffic.
        with target.open("rb") as f:  # noqa: ASYNC230
            f.seek(start)
            while to_send > 0:
                data = f.read(min(chunk, to_send))
                if not data:  # the file shrank under us; the client sees a short body
                    break
                to_send -= len(data)
                if kind is FaultKind.LIE:
                    data = data.translate(_FLIP)
                await resp.write(data)
                if (
                    kind is FaultKind.SLOW
                    and fault is not None
                    and to_send > 0
                    and await self._stop_requested(fault.delay)
                ):
                    break
        # close() (unlike abort()) first flushes the half body already written, then sends
        # FIN: the client gets fewer bytes than Content-Length promised.
        if kind is FaultKind.TRUNCATE and request.transport is not None:
            request.transport.close()

    async def _stop_requested(self, delay: float) -> bool:
        """Wait ``delay`` seconds; True (early) when the server is stopping."""
        assert self._stopping is not None
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=delay)
        except TimeoutError:
            return False
        return True

    async def _hang(self, request: web.BaseRequest) -> web.StreamResponse:
        assert self._stopping is not None
        await self._stopping.wait()
        # Stopping: drop the connection without an answer. The response below is never
        # sent; aiohttp's attempt to prepare it on the closed transport is swallowed.
        if request.transport is not None:
            request.transport.close()
        return web.Response(status=503)


def _content_type(path: Path) -> str:
    known = _CONTENT_TYPES.get(path.suffix)
    if known is not None:
        return known
    guessed, encoding = mimetypes.guess_type(path.name)
    if guessed is None or encoding is not None:
        return "application/octet-stream"
    return guessed


def _parse_http_date(value: str) -> int | None:
    try:
        return int(parsedate_to_datetime(value).timestamp())
    except (TypeError, ValueError, IndexError):
        return None


def _etag_list(value: str) -> list[str]:
    return [tag.strip() for tag in value.split(",") if tag.strip()]


def _not_modified(request: web.BaseRequest, etag: str, mtime: int) -> bool:
    """RFC 9110 13.2.2: If-None-Match (weak comparison) first, else If-Modified-Since."""
    inm = request.headers.get("If-None-Match")
    if inm is not None:
        tags = _etag_list(inm)
        return "*" in tags or any(t.removeprefix("W/") == etag for t in tags)
    ims = request.headers.get("If-Modified-Since")
    if ims is not None:
        since = _parse_http_date(ims)
        return since is not None and mtime <= since
    return False


def _if_range_ok(request: web.BaseRequest, etag: str, last_modified: str) -> bool:
    """If-Range: honour the Range only when the validator still matches (strong)."""
    if_range = request.headers.get("If-Range")
    if if_range is None:
        return True
    return if_range.strip() in (etag, last_modified)


def _parse_range(value: str, size: int) -> tuple[int, int] | str | None:
    """Parse a Range header against ``size``.

    Returns ``(first, last)`` (inclusive), ``"unsatisfiable"``, or None when the header is
    to be ignored (not ``bytes``, malformed, or several ranges: we then send the whole file).
    """
    unit, _, spec = value.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_s, sep, last_s = spec.strip().partition("-")
    if not sep:
        return None
    try:
        if first_s == "":
            suffix = int(last_s)
            if suffix <= 0 or size == 0:
                return "unsatisfiable"
            return max(0, size - suffix), size - 1
        first = int(first_s)
        last = int(last_s) if last_s else None
    except ValueError:
        return None
    if first < 0 or (last is not None and last < first):
        return None  # syntactically invalid: ignored (RFC 9110 14.2)
    if first >= size:
        return "unsatisfiable"
    return first, size - 1 if last is None else min(last, size - 1)
