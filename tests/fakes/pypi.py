"""A fake PyPI "simple" index: a real aiohttp server on 127.0.0.1, in a background thread.

It serves the distribution files found in a directory (rescanned on every request, so
files may be added while it runs) the way PyPI does:

* ``/simple/`` and ``/simple/<project>/``: PEP 503 HTML by default, PEP 691 JSON
  (``application/vnd.pypi.simple.v1+json``) when ``Accept`` prefers it, or when
  ``?format=<content type>`` asks for it; API version 1.1 (PEP 700: ``versions``,
  ``size``, ``upload-time``). Non-normalized names answer ``301`` to the normalized URL.
  ``ETag``/``Last-Modified`` and ``304`` on revalidation; ``Vary: Accept``.
* Links carry ``#sha256=``, ``data-requires-python`` (from the file's own metadata) and,
  for wheels when ``metadata=True``, ``data-dist-info-metadata``/``data-core-metadata``
  (PEP 658/714) with ``<file>.metadata`` served.
* ``/files/<filename>`` and ``/files/<filename>.metadata``: ``GET``/``HEAD``, single
  ``Range`` (``206``/``416``), ``ETag``/``Last-Modified``/``304``. With
  ``files_on_other_host=True`` they live on a second listener (``127.0.0.1``, another
  port; the index listener then answers 404 there), like files.pythonhosted.org, and the
  index links to them with absolute URLs; by default links are relative
  (``../../files/<name>``) and one listener serves everything.

Every request is recorded (method, path, headers, listener) before it is answered; the
status is filled in once the handler has decided it, before the answer is sent.
"""

from __future__ import annotations

import asyncio
import email
import email.utils
import hashlib
import html
import json
import re
import tarfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiohttp import web
from multidict import CIMultiDictProxy

from tests.fakes.server import ThreadedServer

JSON_V1 = "application/vnd.pypi.simple.v1+json"
HTML_V1 = "application/vnd.pypi.simple.v1+html"
TEXT_HTML = "text/html"
API_VERSION = "1.1"
# PyPI's own caching headers on simple pages.
PAGE_CACHE_CONTROL = "max-age=600, public"
_SDIST_SUFFIXES = (".tar.gz", ".zip", ".tar.bz2")


def normalize(name: str) -> str:
    """PEP 503 name normalization."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass
class RecordedRequest:
    """One request as the fake index received it."""

    method: str
    path: str  # decoded, without the query string
    query: str
    headers: CIMultiDictProxy[str]
    listener: str  # "index" or "files"
    status: int | None = None  # set once answered; None if the handler crashed

    @property
    def range(self) -> str | None:
        """The ``Range`` header, if any."""
        return self.headers.get("Range")


@dataclass(frozen=True)
class DistFile:
    """A distribution file in the served directory, with what the index says about it."""

    filename: str
    project: str  # normalized
    version: str
    path: Path
    size: int
    mtime: float
    sha256: str
    requires_python: str | None
    metadata: bytes | None  # the wheel's METADATA (PEP 658), None for sdists

    @property
    def metadata_sha256(self) -> str | None:
        """sha256 of the served ``.metadata`` file, if there is one."""
        return hashlib.sha256(self.metadata).hexdigest() if self.metadata is not None else None


def _parse_filename(filename: str) -> tuple[str, str] | None:
    """(normalized project, version) from a wheel or sdist file name, or None."""
    if filename.endswith(".whl"):
        parts = filename[: -len(".whl")].split("-")
        return (normalize(parts[0]), parts[1]) if len(parts) >= 5 else None
    for suffix in _SDIST_SUFFIXES:
        if filename.endswith(suffix):
            name, sep, version = filename[: -len(suffix)].rpartition("-")
            return (normalize(name), version) if sep and name else None
    return None


def _read_metadata(path: Path) -> tuple[bytes | None, bytes | None]:
    """(core metadata to serve as ``.metadata``, metadata to read Requires-Python from)."""
    name = path.name
    try:
        if name.endswith(".whl"):
            with zipfile.ZipFile(path) as zf:
                for member in zf.namelist():
                    if re.fullmatch(r"[^/]+\.dist-info/METADATA", member):
                        data = zf.read(member)
                        return data, data
        elif name.endswith((".tar.gz", ".tar.bz2")):
            with tarfile.open(path) as tf:
                for info in tf:
                    if re.fullmatch(r"[^/]+/PKG-INFO", info.name) and info.isfile():
                        fobj = tf.extractfile(info)
                        if fobj is not None:
                            with fobj:
                                return None, fobj.read()
        elif name.endswith(".zip"):
            with zipfile.ZipFile(path) as zf:
                for member in zf.namelist():
                    if re.fullmatch(r"[^/]+/PKG-INFO", member):
                        return None, zf.read(member)
    except (OSError, zipfile.BadZipFile, tarfile.TarError):
        pass
    return None, None


def _requires_python(metadata: bytes | None) -> str | None:
    if metadata is None:
        return None
    value = email.message_from_bytes(metadata).get("Requires-Python")
    return str(value).strip() if value is not None else None


def _accept_score(accept: str, media: str) -> tuple[float, int]:
    """(q, specificity) of ``media`` under an Accept header; q=0 when not acceptable."""
    best = (0.0, -1)
    mtype, _, msub = media.partition("/")
    for part in accept.split(","):
        fields = [f.strip() for f in part.split(";")]
        rng = fields[0].lower()
        if not rng:
            continue
        q = 1.0
        for param in fields[1:]:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        rtype, _, rsub = rng.partition("/")
        # PEP 691's "latest" aliases name the newest version, v1 here.
        rsub = rsub.replace(".latest+", ".v1+")
        if (rtype, rsub) == (mtype, msub):
            spec = 2
        elif rtype == mtype and rsub == "*":
            spec = 1
        elif rng in ("*/*", "*"):
            spec = 0
        else:
            continue
        if spec > best[1]:
            best = (q, spec)
    return best if best[1] >= 0 else (0.0, -1)


def negotiate(accept: str | None) -> str | None:
    """The simple-API content type to answer with, or None (406).

    Highest q wins; among equal q an explicitly named type beats a wildcard, and JSON
    beats HTML. A missing header or a bare ``*/*`` gets ``text/html``, as on PyPI.
    """
    if not accept or not accept.strip():
        return TEXT_HTML
    prefs = {JSON_V1: 2, HTML_V1: 1, TEXT_HTML: 0}
    scored = []
    for media, pref in prefs.items():
        q, spec = _accept_score(accept, media)
        if q > 0:
            # A wildcard-only match says nothing about the format: default to text/html.
            scored.append((q, spec, pref if spec > 0 else -pref, media))
    return max(scored)[3] if scored else None


def _http_date(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=True)


def _parse_http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def _not_modified(request: web.Request, etag: str, last_modified: float) -> bool:
    """RFC 9110 13.2.2: If-None-Match decides when present, else If-Modified-Since."""
    inm = request.headers.get("If-None-Match")
    if inm is not None:
        tags = [t.strip().removeprefix("W/") for t in inm.split(",")]
        return "*" in tags or etag in tags
    ims = _parse_http_date(request.headers.get("If-Modified-Since"))
    return ims is not None and int(last_modified) <= ims


def _parse_range(header: str, size: int) -> tuple[int, int] | None | bool:
    """A single byte range as (start, end inclusive); None: ignore the header (serve all);
    False: unsatisfiable (416)."""
    m = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if m is None:  # multiple ranges or junk: a server may ignore Range
        return None
    first, last = m.group(1), m.group(2)
    if not first:
        if not last:
            return None
        suffix = int(last)
        if suffix == 0 or size == 0:
            return False
        return max(0, size - suffix), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None
    if start >= size:
        return False
    return start, min(end, size - 1)


def _tamper(data: bytes) -> bytes:
    """Change one byte that no unpacker checks, so only the sha256 shows the lie.

    A flipped byte in compressed data fails the archive's own CRC first (uv then reports
    "Bad CRC", not a hash mismatch); a zip local header's mtime (offset 10) or a gzip
    header's MTIME (offset 4) is read by nobody, so clients get as far as the hash check.
    """
    if not data:
        return data
    if data.startswith(b"PK\x03\x04") and len(data) > 10:
        offset = 10
    elif data.startswith(b"\x1f\x8b") and len(data) > 4:
        offset = 4
    else:
        offset = len(data) // 2
    out = bytearray(data)
    out[offset] ^= 0x01
    return bytes(out)


class FakePyPI(ThreadedServer[RecordedRequest]):
    """A PEP 503/691 index of the files in ``dists``, on ``127.0.0.1:<free port>``.

    Use as a context manager, or ``start()``/``stop()``. ``url`` is the origin;
    the index is ``url + "/simple/"`` (also ``index_url``).
    """

    def __init__(
        self, dists: Path, *, metadata: bool = True, files_on_other_host: bool = False
    ) -> None:
        super().__init__()
        self.dists = Path(dists)
        self.metadata = metadata
        self.files_on_other_host = files_on_other_host
        self.url = ""
        self.files_url = ""  # origin of /files/ (== url unless files_on_other_host)
        self._lies: set[str] = set()
        self._hidden: set[str] = set()
        self._yanked: dict[str, str] = {}
        self._changed_at = time.time()
        self._info_cache: dict[tuple[str, int, int], DistFile] = {}

    # --- test-facing controls ---------------------------------------------------------

    @property
    def index_url(self) -> str:
        """``url + "/simple/"``."""
        return self.url + "/simple/"

    def paths(self, prefix: str = "") -> list[str]:
        """``METHOD path`` of every recorded request under ``prefix``, in order."""
        return [f"{r.method} {r.path}" for r in self._logged(prefix)]

    def lie_about(self, filename: str) -> None:
        """Serve ``filename`` with one byte changed: same length, still unpacks, wrong sha256."""
        self._lies.add(filename)

    def hide(self, filename: str) -> None:
        """Drop ``filename`` from the listings (the file itself stays downloadable)."""
        self._hidden.add(filename)
        self._changed_at = time.time()

    def yank(self, filename: str, reason: str = "") -> None:
        """Mark ``filename`` yanked (PEP 592) in the listings."""
        self._yanked[filename] = reason
        self._changed_at = time.time()

    # --- serving ----------------------------------------------------------------------

    async def _setup(self) -> None:
        apps = [self._make_app("index", files=not self.files_on_other_host, simple=True)]
        if self.files_on_other_host:
            apps.append(self._make_app("files", files=True, simple=False))
        ports = [await self._listen(app) for app in apps]
        self.url = f"http://127.0.0.1:{ports[0]}"
        self.files_url = f"http://127.0.0.1:{ports[-1]}"

    def _make_app(self, listener: str, *, files: bool, simple: bool) -> web.Application:
        app = web.Application(middlewares=[self._recorder(listener, RecordedRequest)])
        if simple:
            app.router.add_get("/simple", self._redirect_root)
            app.router.add_get("/simple/", self._project_list)
            app.router.add_get("/simple/{project}", self._redirect_project)
            app.router.add_get("/simple/{project}/", self._project_page)
        if files:
            app.router.add_get("/files/{filename}", self._file)
        return app

    # --- the served directory ---------------------------------------------------------

    def _scan(self) -> list[DistFile]:
        out: list[DistFile] = []
        try:
            entries = sorted(self.dists.iterdir())
        except FileNotFoundError:
            return out
        for path in entries:
            parsed = _parse_filename(path.name)
            if parsed is None or not path.is_file():
                continue
            st = path.stat()
            key = (path.name, st.st_size, st.st_mtime_ns)
            info = self._info_cache.get(key)
            if info is None:
                served, meta = _read_metadata(path)
                info = DistFile(
                    filename=path.name,
                    project=parsed[0],
                    version=parsed[1],
                    path=path,
                    size=st.st_size,
                    mtime=st.st_mtime,
                    sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                    requires_python=_requires_python(meta),
                    metadata=served,
                )
                self._info_cache[key] = info
            out.append(info)
        return out

    def _find(self, filename: str) -> DistFile | None:
        return next((d for d in self._scan() if d.filename == filename), None)

    def _body_of(self, dist: DistFile) -> bytes:
        data = dist.path.read_bytes()
        return _tamper(data) if dist.filename in self._lies else data

    def _file_url(self, dist: DistFile, suffix: str = "") -> str:
        name = quote(dist.filename + suffix)
        if self.files_on_other_host:
            return f"{self.files_url}/files/{name}"
        return f"../../files/{name}"

    def _listed(self, project: str | None = None) -> list[DistFile]:
        return [
            d
            for d in self._scan()
            if d.filename not in self._hidden and (project is None or d.project == project)
        ]

    # --- handlers ---------------------------------------------------------------------

    async def _redirect_root(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPMovedPermanently(self._with_query(request, "/simple/"))

    async def _redirect_project(self, request: web.Request) -> web.StreamResponse:
        target = f"/simple/{normalize(request.match_info['project'])}/"
        raise web.HTTPMovedPermanently(self._with_query(request, target))

    @staticmethod
    def _with_query(request: web.Request, path: str) -> str:
        return path + ("?" + request.query_string if request.query_string else "")

    def _choose_format(self, request: web.Request) -> str:
        wanted = request.query.get("format") or request.headers.get("Accept")
        chosen = negotiate(wanted)
        if chosen is None:
            raise web.HTTPNotAcceptable(text=f"acceptable: {JSON_V1}, {HTML_V1}, {TEXT_HTML}\n")
        return chosen

    def _page(
        self, request: web.Request, ctype: str, body: bytes, last_modified: float
    ) -> web.Response:
        etag = f'"{hashlib.sha256(body).hexdigest()[:32]}"'
        headers = {
            "ETag": etag,
            "Last-Modified": _http_date(last_modified),
            "Vary": "Accept",
            "Cache-Control": PAGE_CACHE_CONTROL,
        }
        if _not_modified(request, etag, last_modified):
            return web.Response(status=304, headers=headers)
        full_ctype = ctype + ("; charset=utf-8" if ctype == TEXT_HTML else "")
        headers["Content-Type"] = full_ctype
        return web.Response(body=body, headers=headers)

    async def _project_list(self, request: web.Request) -> web.StreamResponse:
        ctype = self._choose_format(request)
        dists = await asyncio.to_thread(self._listed)
        projects = sorted({d.project for d in dists})
        last_modified = max([self._changed_at, *(d.mtime for d in dists)])
        if ctype == JSON_V1:
            doc: dict[str, Any] = {
                "meta": {"api-version": API_VERSION},
                "projects": [{"name": p} for p in projects],
            }
            body = json.dumps(doc, indent=1).encode()
        else:
            links = "".join(
                f'    <a href="/simple/{quote(p)}/">{html.escape(p)}</a>\n' for p in projects
            )
            body = (
                "<!DOCTYPE html>\n<html>\n  <head>\n"
                f'    <meta name="pypi:repository-version" content="{API_VERSION}">\n'
                "    <title>Simple index</title>\n  </head>\n  <body>\n"
                f"{links}  </body>\n</html>\n"
            ).encode()
        return self._page(request, ctype, body, last_modified)

    async def _project_page(self, request: web.Request) -> web.StreamResponse:
        asked = request.match_info["project"]
        project = normalize(asked)
        if asked != project:
            raise web.HTTPMovedPermanently(self._with_query(request, f"/simple/{project}/"))
        ctype = self._choose_format(request)
        dists = await asyncio.to_thread(self._listed, project)
        if not dists:
            raise web.HTTPNotFound(text=f"no project {project!r}\n")
        last_modified = max([self._changed_at, *(d.mtime for d in dists)])
        if ctype == JSON_V1:
            body = json.dumps(self._json_page(project, dists), indent=1).encode()
        else:
            body = self._html_page(project, dists).encode()
        return self._page(request, ctype, body, last_modified)

    def _json_page(self, project: str, dists: list[DistFile]) -> dict[str, Any]:
        files = []
        for d in dists:
            meta: dict[str, str] | bool = False
            if self.metadata and d.metadata_sha256 is not None:
                meta = {"sha256": d.metadata_sha256}
            yanked = self._yanked.get(d.filename)
            files.append(
                {
                    "filename": d.filename,
                    "url": self._file_url(d),
                    "hashes": {"sha256": d.sha256},
                    "requires-python": d.requires_python,
                    "core-metadata": meta,
                    "dist-info-metadata": meta,
                    "yanked": (yanked or True) if yanked is not None else False,
                    "size": d.size,
                    "upload-time": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(d.mtime)),
                }
            )
        versions = sorted({d.version for d in dists})
        return {
            "meta": {"api-version": API_VERSION},
            "name": project,
            "versions": versions,
            "files": files,
        }

    def _html_page(self, project: str, dists: list[DistFile]) -> str:
        lines = []
        for d in dists:
            attrs = [f'href="{html.escape(self._file_url(d))}#sha256={d.sha256}"']
            if d.requires_python:
                attrs.append(f'data-requires-python="{html.escape(d.requires_python)}"')
            if self.metadata and d.metadata_sha256 is not None:
                attrs.append(f'data-dist-info-metadata="sha256={d.metadata_sha256}"')
                attrs.append(f'data-core-metadata="sha256={d.metadata_sha256}"')
            if d.filename in self._yanked:
                attrs.append(f'data-yanked="{html.escape(self._yanked[d.filename])}"')
            lines.append(f"    <a {' '.join(attrs)}>{html.escape(d.filename)}</a><br />\n")
        title = f"Links for {html.escape(project)}"
        return (
            "<!DOCTYPE html>\n<html>\n  <head>\n"
            f'    <meta name="pypi:repository-version" content="{API_VERSION}">\n'
            f"    <title>{title}</title>\n  </head>\n  <body>\n    <h1>{title}</h1>\n"
            f"{''.join(lines)}  </body>\n</html>\n"
        )

    async def _file(self, request: web.Request) -> web.StreamResponse:
        filename = request.match_info["filename"]
        is_meta = filename.endswith(".metadata")
        dist_name = filename.removesuffix(".metadata") if is_meta else filename
        dist = await asyncio.to_thread(self._find, dist_name)
        if dist is None:
            raise web.HTTPNotFound(text=f"no file {filename!r}\n")
        if is_meta:
            if not self.metadata or dist.metadata is None:
                raise web.HTTPNotFound(text=f"no metadata for {dist_name!r}\n")
            body = dist.metadata
        else:
            body = await asyncio.to_thread(self._body_of, dist)
        etag = f'"{hashlib.sha256(body).hexdigest()}"'
        headers = {
            "ETag": etag,
            "Last-Modified": _http_date(dist.mtime),
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if _not_modified(request, etag, dist.mtime):
            return web.Response(status=304, headers=headers)
        size = len(body)
        range_header = request.headers.get("Range")
        if_range = request.headers.get("If-Range")
        if range_header and if_range and if_range not in (etag, headers["Last-Modified"]):
            range_header = None  # the client's copy is stale: send it all
        rng = _parse_range(range_header, size) if range_header else None
        if rng is False:
            headers["Content-Range"] = f"bytes */{size}"
            return web.Response(status=416, headers=headers)
        if isinstance(rng, tuple):
            start, end = rng
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            return web.Response(status=206, body=body[start : end + 1], headers=headers)
        return web.Response(body=body, headers=headers)
