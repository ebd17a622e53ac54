"""A fake npm registry serving real tarballs: a real aiohttp server on 127.0.0.1, in a thread.

Packages are real: :func:`make_package` writes a ``package.json`` and an ``index.js`` and
runs the real ``npm pack`` (private, empty cache and config) to make the ``.tgz``;
:meth:`FakeNpmRegistry.publish` takes such a tarball (its ``package/package.json`` is the
manifest), :meth:`FakeNpmRegistry.add` does both. Published tarballs are copied under
``root``. The registry follows the npm registry API:

* ``GET /<name>``, scoped ``/@scope%2Fname`` (``%2f`` too, and ``/@scope/name``): the
  packument. The full document (``_id``, ``name``, ``dist-tags``, ``versions``, ``time``,
  ``modified``, ...; ``application/json``) unless ``Accept`` prefers the abbreviated
  "corgi" form, ``application/vnd.npm.install-v1+json`` (named explicitly, with a q at
  least that of ``application/json``): then ``name``, ``modified``, ``dist-tags`` and
  ``versions`` with only the fields an install needs (``name``, ``version``, the
  dependency maps, ``bin``, ``engines``, ``dist``...), served with that content type.
  ``dist`` has ``tarball`` (absolute: ``{url}/<name>/-/<basename>-<version>.tgz``, so
  ``{url}/@s/n/-/n-1.0.0.tgz`` for ``@s/n``), ``shasum`` (sha1 hex) and ``integrity``
  (``sha512-`` + base64 of the sha512). ``dist-tags.latest`` is the highest release
  version (or the highest version if all are prereleases) unless set by :meth:`tag`.
  ``GET /<name>/<version or dist-tag>``: that version's full manifest.
* ``GET /<name>/-/<basename>-<version>.tgz``: the tarball, ``application/octet-stream``
  with ``Content-Length``.
* ``HEAD`` too; ``ETag``/``Last-Modified`` on everything, ``304`` on ``If-None-Match``
  (else ``If-Modified-Since``); packuments carry ``Vary: Accept`` and
  ``Cache-Control: public, max-age=300`` like registry.npmjs.org.
* Anything unknown: ``404`` with ``{"error":"Not found"}`` (``application/json``); a
  method other than GET/HEAD: ``405`` ``{"error":"Method not allowed"}``.

Test-facing controls: ``url`` (``http://127.0.0.1:PORT``, set by ``start()``), ``publish``,
``add``, ``tag``, ``remove(name[, version])``, ``corrupt(name, version)`` (the served bytes
differ from the declared ``shasum``/``integrity``: one bit of the gzip header's MTIME is
flipped, so the archive still unpacks and only a hash check notices), ``set_dist(name,
version, shasum=..., integrity=...)`` (declare other values, ``None`` drops the field),
``tarball_path(name, version)``. All may be called while the server runs.

Every request is recorded before it is answered (``requests``: method, ``path`` decoded
and without the query, ``raw_path`` exactly as on the request line, ``query``,
``headers``; ``status`` once decided); ``count()``/``paths()`` filter on the decoded
path, ``raw_paths()`` gives the request targets as sent.

What the real npm 11.19.1 (node 20, pacote 21.5) sends, as observed by
``tests/test_fakes_npm.py``:

* Packuments: ``GET /leftpad-ish`` and, for a scoped name, ``GET /@scope%2futil``: the
  slash encoded in *lower case*, the ``@`` not encoded. Tarballs: exactly the
  ``dist.tarball`` (or lockfile ``resolved``) URL, ``GET /@scope/util/-/util-1.2.0.tgz``,
  slash not encoded. Headers include ``npm-command: install`` (or ``ci``),
  ``pacote-req-type: packument``/``tarball``, ``pacote-pkg-id``, ``pacote-integrity``
  (on tarballs, the expected SRI), ``npm-auth-type: web``, ``Accept-Encoding:
  gzip,deflate``, ``User-Agent: npm/11.19.1 node/v20.20.2 linux x64 workspaces/false``.
* ``npm install`` with no lockfile asks the *full* packument: ``Accept:
  application/json``; tarballs with ``Accept: */*``. Each once per run.
* ``npm ci`` (and ``npm install``) from a lockfile that has ``resolved`` and
  ``integrity``, with an empty cache, asks no packument at all: only the tarballs.
* From a lockfile *without* ``resolved`` (what ``omit-lockfile-registry-resolved=true``
  writes), ``npm ci`` and ``npm install`` ask the packuments *abbreviated*: ``Accept:
  application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*``, then the
  tarballs at the corgi's ``dist.tarball``.
* With a warm cache, npm does not ask again within the packument's max-age; with
  ``--prefer-online`` it revalidates packuments and tarballs with ``If-None-Match`` (our
  ETag) and ``If-Modified-Since``, and accepts ``304``.
* Verification: ``integrity`` (the lockfile's, else the packument's) is checked; on a
  mismatch npm warns "seems to be corrupted. Trying again.", fetches the tarball a
  second time, then fails with ``npm error code EINTEGRITY``. A wrong ``shasum`` is
  ignored when ``integrity`` is present; with no ``integrity`` declared npm checks the
  ``shasum`` (as ``sha1-...``, same EINTEGRITY failure).
* An unknown package: exit 1, ``npm error code E404`` and ``npm error 404 Not Found -
  GET <url>/<name> - Not found``: the ``error`` text of our JSON body.
* Through a proxy (``https-proxy``, else ``proxy``: npm uses it for http URLs too; host
  not in ``noproxy``) the request target is the absolute URL (``GET
  http://127.0.0.1:PORT/leftpad-ish``); ``noproxy=127.0.0.1`` is honoured.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from aiohttp import web
from aiohttp.typedefs import Handler
from multidict import CIMultiDict, CIMultiDictProxy

from tests.fakes.server import ThreadedServer

JSON = "application/json"
CORGI = "application/vnd.npm.install-v1+json"
NOT_FOUND = {"error": "Not found"}
PACKUMENT_CACHE_CONTROL = "public, max-age=300"

# Manifest fields the abbreviated packument keeps (besides name, version and dist), as
# registry.npmjs.org and pacote's own corgi filter do.
_CORGI_FIELDS = (
    "deprecated",
    "dependencies",
    "optionalDependencies",
    "devDependencies",
    "peerDependencies",
    "peerDependenciesMeta",
    "bundleDependencies",
    "bundledDependencies",
    "acceptDependencies",
    "bin",
    "directories",
    "engines",
    "os",
    "cpu",
    "funding",
    "license",
    "_hasShrinkwrap",
    "hasInstallScript",
)
_NAME_RE = re.compile(r"^(?:@[a-z0-9][\w.-]*/)?[a-z0-9][\w.-]*$", re.IGNORECASE)


# --- building real packages ------------------------------------------------------------


def _pack_env(tmp: Path) -> dict[str, str]:
    """An environment for ``npm pack``: no machine npm config, a private empty cache."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.lower().startswith("npm_config_") and "proxy" not in k.lower()
    }
    tmp.mkdir(parents=True, exist_ok=True)
    for rc in ("userconfig", "globalconfig"):
        (tmp / rc).touch()
    env.update(
        HOME=str(tmp),
        npm_config_cache=str(tmp / "cache"),
        npm_config_userconfig=str(tmp / "userconfig"),
        npm_config_globalconfig=str(tmp / "globalconfig"),
        npm_config_update_notifier="false",
        npm_config_audit="false",
        npm_config_fund="false",
        npm_config_offline="true",  # packing needs no registry; never try one
    )
    return env


def make_package(
    workdir: Path,
    name: str,
    version: str,
    dependencies: Mapping[str, str] | None = None,
    *,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Make a real npm package tarball ``name@version`` with the real ``npm pack``.

    Writes ``package.json`` (``name``, ``version``, ``main``, ``dependencies``, plus
    ``extra`` fields) and an ``index.js`` exporting ``{name, version}`` into a fresh
    directory under ``workdir``, packs it into ``workdir`` and returns the ``.tgz``
    (npm's name for it: ``scope-util-1.0.0.tgz`` for ``@scope/util``).
    """
    if not _NAME_RE.match(name):
        raise ValueError(f"not a valid npm package name: {name!r}")
    npm = shutil.which("npm")
    if npm is None:
        raise FileNotFoundError("npm is not installed")
    workdir = Path(workdir)
    safe = name.lstrip("@").replace("/", "-")
    src = workdir / "src" / f"{safe}-{version}"
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    manifest: dict[str, Any] = {
        "name": name,
        "version": version,
        "description": f"test package {name}",
        "main": "index.js",
        "license": "MIT",
        "dependencies": dict(dependencies or {}),
        **(extra or {}),
    }
    (src / "package.json").write_text(json.dumps(manifest, indent=2) + "\n")
    (src / "index.js").write_text(
        f"module.exports = {{ name: {json.dumps(name)}, version: {json.dumps(version)} }};\n"
    )
    proc = subprocess.run(
        [npm, "pack", "--json", "--pack-destination", str(workdir)],
        cwd=src,
        env=_pack_env(workdir / ".npm-pack"),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"npm pack failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    filename = str(json.loads(proc.stdout)[0]["filename"])
    return workdir / filename


def read_manifest(tgz: Path) -> dict[str, Any]:
    """The ``package/package.json`` of a package tarball."""
    with tarfile.open(tgz, "r:gz") as tf:
        for info in tf:
            # npm pack names members package/...; some old tarballs use another top dir.
            parts = info.name.split("/")
            if len(parts) == 2 and parts[1] == "package.json" and info.isfile():
                fobj = tf.extractfile(info)
                if fobj is not None:
                    with fobj:
                        doc: dict[str, Any] = json.load(fobj)
                        return doc
    raise ValueError(f"{tgz}: no package/package.json")


def integrity_of(data: bytes) -> str:
    """The SRI string npm declares: ``sha512-`` + base64 of the sha512."""
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def tarball_basename(name: str, version: str) -> str:
    """``<basename>-<version>.tgz``: the registry's file name (``util-1.0.0.tgz``)."""
    return f"{name.rpartition('/')[2]}-{version}.tgz"


def _tamper(data: bytes) -> bytes:
    """Flip one bit of the gzip header's MTIME (offset 4): still unpacks, other hashes."""
    out = bytearray(data)
    out[4 if data.startswith(b"\x1f\x8b") and len(data) > 4 else len(data) // 2] ^= 0x01
    return bytes(out)


def _version_key(version: str) -> tuple[Any, ...]:
    """A semver ordering key (releases after their prereleases)."""
    core, _, pre = version.partition("+")[0].partition("-")
    nums = tuple(int(p) if p.isdigit() else 0 for p in core.split("."))
    pre_key = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split(".") if p)
    return (nums, not pre, pre_key)


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


def _http_date(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=True)


# --- the registry ----------------------------------------------------------------------


@dataclass
class RecordedRequest:
    """One request as the fake registry received it."""

    method: str
    path: str  # decoded (%2f -> /), without the query string
    raw_path: str  # the request target exactly as sent, query included
    query: str
    headers: CIMultiDictProxy[str]
    status: int | None = None  # set once answered; None if the handler crashed

    @property
    def accept(self) -> str | None:
        """The ``Accept`` header, if any."""
        return self.headers.get("Accept")


@dataclass
class Published:
    """One published version."""

    name: str
    version: str
    manifest: dict[str, Any]  # the tarball's package.json
    path: Path  # the tarball, under the registry's root
    published_at: float
    shasum: str  # of the real bytes
    integrity: str
    dist_override: dict[str, str | None] = field(default_factory=dict)
    corrupt: bool = False


class FakeNpmRegistry(ThreadedServer[RecordedRequest]):
    """A fake npm registry over tarballs kept in ``root``; see the module doc.

    Use as a context manager, or ``start()``/``stop()``; ``url`` is the registry URL
    (no trailing slash).
    """

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.url = ""
        self._state = threading.Lock()
        self._packages: dict[str, dict[str, Published]] = {}
        self._tags: dict[str, dict[str, str]] = {}
        self._created: dict[str, float] = {}
        self._modified: dict[str, float] = {}

    # --- test-facing controls ---------------------------------------------------------

    def publish(self, tgz: Path) -> Published:
        """Serve the package tarball ``tgz`` (copied under ``root``); return its entry.

        Republishing a name@version replaces it (which the real registry forbids).
        """
        manifest = read_manifest(Path(tgz))
        name, version = str(manifest["name"]), str(manifest["version"])
        if not _NAME_RE.match(name):
            raise ValueError(f"{tgz}: not a valid npm package name: {name!r}")
        dest = self.root / name / "-" / tarball_basename(name, version)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if Path(tgz).resolve() != dest.resolve():
            shutil.copyfile(tgz, dest)
        data = dest.read_bytes()
        now = time.time()
        entry = Published(
            name=name,
            version=version,
            manifest=manifest,
            path=dest,
            published_at=now,
            shasum=hashlib.sha1(data).hexdigest(),
            integrity=integrity_of(data),
        )
        with self._state:
            self._packages.setdefault(name, {})[version] = entry
            self._created.setdefault(name, now)
            self._modified[name] = now
        return entry

    def add(
        self, name: str, version: str, dependencies: Mapping[str, str] | None = None
    ) -> Published:
        """Build ``name@version`` with :func:`make_package` (under ``root/.build``), publish it."""
        return self.publish(make_package(self.root / ".build", name, version, dependencies))

    def tag(self, name: str, tag: str, version: str) -> None:
        """Point dist-tag ``tag`` of ``name`` at ``version``."""
        with self._state:
            if version not in self._packages.get(name, {}):
                raise KeyError(f"{name}@{version} is not published")
            self._tags.setdefault(name, {})[tag] = version
            self._modified[name] = time.time()

    def remove(self, name: str, version: str | None = None) -> None:
        """Unpublish ``name`` (every version) or one version: 404 from then on."""
        with self._state:
            versions = self._packages.get(name, {})
            if version is None:
                versions.clear()
            else:
                versions.pop(version, None)
            tags = self._tags.get(name, {})
            for t in [t for t, v in tags.items() if v not in versions]:
                del tags[t]
            if not versions:
                self._packages.pop(name, None)
                self._tags.pop(name, None)
            self._modified[name] = time.time()

    def corrupt(self, name: str, version: str, corrupt: bool = True) -> None:
        """Serve ``name@version``'s tarball with one bit flipped (same length, still a valid
        gzip), so it no longer matches its declared ``shasum``/``integrity``."""
        self._entry(name, version).corrupt = corrupt

    def set_dist(self, name: str, version: str, **fields: str | None) -> None:
        """Declare other ``dist`` values for ``name@version`` (e.g. ``shasum="0" * 40``,
        ``integrity=None`` to drop the field); the served bytes do not change."""
        entry = self._entry(name, version)
        with self._state:
            entry.dist_override.update(fields)
            self._modified[name] = time.time()

    def tarball_url(self, name: str, version: str) -> str:
        """The absolute ``dist.tarball`` URL of ``name@version``."""
        return f"{self.url}/{name}/-/{tarball_basename(name, version)}"

    def tarball_path(self, name: str, version: str) -> Path:
        """The file the tarball of ``name@version`` is served from (unless corrupted)."""
        return self._entry(name, version).path

    def raw_paths(self, prefix: str = "") -> list[str]:
        """Request targets exactly as sent (encoding, query) of requests under ``prefix``
        (matched against the decoded path)."""
        return [r.raw_path for r in self._logged(prefix)]

    def _entry(self, name: str, version: str) -> Published:
        with self._state:
            try:
                return self._packages[name][version]
            except KeyError:
                raise KeyError(f"{name}@{version} is not published") from None

    # --- documents --------------------------------------------------------------------

    def _dist(self, entry: Published) -> dict[str, Any]:
        dist: dict[str, Any] = {
            "tarball": self.tarball_url(entry.name, entry.version),
            "shasum": entry.shasum,
            "integrity": entry.integrity,
        }
        for key, value in entry.dist_override.items():
            if value is None:
                dist.pop(key, None)
            else:
                dist[key] = value
        return dist

    def _snapshot(self, name: str) -> tuple[list[Published], dict[str, str], float, float]:
        """(versions in semver order, dist-tags, created, modified) or KeyError."""
        with self._state:
            versions = sorted(self._packages[name].values(), key=lambda e: _version_key(e.version))
            tags = dict(self._tags.get(name, {}))
            created, modified = self._created[name], self._modified[name]
        if "latest" not in tags:
            releases = [e for e in versions if "-" not in e.version]
            tags["latest"] = (releases or versions)[-1].version
        return versions, tags, created, modified

    def _full_version(self, entry: Published) -> dict[str, Any]:
        doc = dict(entry.manifest)
        doc.update(
            _id=f"{entry.name}@{entry.version}",
            _nodeVersion="20.0.0",
            _npmVersion="11.0.0",
            dist=self._dist(entry),
        )
        return doc

    def _packument(self, name: str, corgi: bool) -> tuple[dict[str, Any], float]:
        versions, tags, created, modified = self._snapshot(name)
        if corgi:
            abbreviated: dict[str, Any] = {}
            for e in versions:
                v: dict[str, Any] = {"name": e.name, "version": e.version}
                v.update({k: e.manifest[k] for k in _CORGI_FIELDS if k in e.manifest})
                v["dist"] = self._dist(e)
                abbreviated[e.version] = v
            doc = {
                "name": name,
                "modified": _iso(modified),
                "dist-tags": tags,
                "versions": abbreviated,
            }
            return doc, modified
        latest = next(e for e in versions if e.version == tags["latest"])
        full = {
            "_id": name,
            "_rev": f"{len(versions)}-{hashlib.md5(name.encode()).hexdigest()}",
            "name": name,
            "description": latest.manifest.get("description", ""),
            "dist-tags": tags,
            "versions": {e.version: self._full_version(e) for e in versions},
            "time": {
                "created": _iso(created),
                "modified": _iso(modified),
                **{e.version: _iso(e.published_at) for e in versions},
            },
            "maintainers": [],
            "license": latest.manifest.get("license"),
            "readme": "",
            "readmeFilename": "",
        }
        return full, modified

    # --- serving ----------------------------------------------------------------------

    async def _setup(self) -> None:
        app = web.Application(middlewares=[self._record])
        app.router.add_route("*", "/{tail:.*}", self._handle)
        port = await self._listen(app)
        self.url = f"http://127.0.0.1:{port}"

    @web.middleware
    async def _record(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        entry = RecordedRequest(
            method=request.method,
            path=unquote(urlsplit(request.raw_path).path),
            raw_path=request.raw_path,
            query=request.query_string,
            headers=CIMultiDictProxy(CIMultiDict(request.headers)),
        )
        self._log(entry)
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            entry.status = exc.status
            raise
        entry.status = response.status
        return response

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return _json_error(405, "Method not allowed", headers={"Allow": "GET, HEAD"})
        path = unquote(urlsplit(request.raw_path).path)
        parts = [p for p in path.split("/") if p]
        if parts and parts[0].startswith("@"):
            name, rest = "/".join(parts[:2]), parts[2:]
        else:
            name, rest = "/".join(parts[:1]), parts[1:]
        with self._state:
            known = name in self._packages
        if not known or not _NAME_RE.match(name):
            return _json_error(404, "Not found")
        if not rest:
            return self._serve_packument(request, name)
        if len(rest) == 1:
            return self._serve_version(request, name, rest[0])
        if len(rest) == 2 and rest[0] == "-":
            return self._serve_tarball(request, name, rest[1])
        return _json_error(404, "Not found")

    def _serve_packument(self, request: web.Request, name: str) -> web.StreamResponse:
        corgi = prefers_corgi(request.headers.get("Accept"))
        try:
            doc, modified = self._packument(name, corgi)
        except (KeyError, StopIteration):  # removed meanwhile
            return _json_error(404, "Not found")
        body = json.dumps(doc).encode()
        return _cached(
            request,
            body,
            CORGI if corgi else JSON,
            modified,
            {"Vary": "Accept", "Cache-Control": PACKUMENT_CACHE_CONTROL},
        )

    def _serve_version(self, request: web.Request, name: str, spec: str) -> web.StreamResponse:
        try:
            versions, tags, _, modified = self._snapshot(name)
        except KeyError:
            return _json_error(404, "Not found")
        wanted = tags.get(spec, spec)
        entry = next((e for e in versions if e.version == wanted), None)
        if entry is None:
            return _json_error(404, "Not found")
        body = json.dumps(self._full_version(entry)).encode()
        return _cached(request, body, JSON, modified, {"Cache-Control": PACKUMENT_CACHE_CONTROL})

    def _serve_tarball(self, request: web.Request, name: str, filename: str) -> web.StreamResponse:
        with self._state:
            entry = next(
                (
                    e
                    for e in self._packages.get(name, {}).values()
                    if tarball_basename(name, e.version) == filename
                ),
                None,
            )
        if entry is None:
            return _json_error(404, "Not found")
        try:
            data = entry.path.read_bytes()
        except FileNotFoundError:
            return _json_error(404, "Not found")
        if entry.corrupt:
            data = _tamper(data)
        return _cached(request, data, "application/octet-stream", entry.published_at, {})


def prefers_corgi(accept: str | None) -> bool:
    """Whether ``Accept`` asks the abbreviated packument: it names
    ``application/vnd.npm.install-v1+json`` with q > 0 and at least the q of
    ``application/json``. Wildcards alone get the full document."""
    if not accept:
        return False
    q_corgi, q_json = 0.0, 0.0
    for part in accept.split(","):
        fields = [f.strip() for f in part.split(";")]
        media = fields[0].lower()
        q = 1.0
        for param in fields[1:]:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if media == CORGI:
            q_corgi = max(q_corgi, q)
        elif media == JSON:
            q_json = max(q_json, q)
    return q_corgi > 0 and q_corgi >= q_json


def _json_error(
    status: int, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps({"error": message}).encode(),
        content_type=JSON,
        headers=headers,
    )


def _not_modified(request: web.Request, etag: str, last_modified: float) -> bool:
    """RFC 9110 13.2.2: If-None-Match decides when present, else If-Modified-Since."""
    inm = request.headers.get("If-None-Match")
    if inm is not None:
        tags = [t.strip().removeprefix("W/") for t in inm.split(",")]
        return "*" in tags or etag in tags
    ims = request.headers.get("If-Modified-Since")
    if not ims:
        return False
    try:
        since = email.utils.parsedate_to_datetime(ims).timestamp()
    except (TypeError, ValueError, IndexError):
        return False
    return int(last_modified) <= since


def _cached(
    request: web.Request,
    body: bytes,
    content_type: str,
    last_modified: float,
    extra: Mapping[str, str],
) -> web.Response:
    """``body`` with ETag/Last-Modified (and ``extra`` headers), or 304 when revalidated."""
    headers = {
        "ETag": f'"{hashlib.sha1(body).hexdigest()}"',
        "Last-Modified": _http_date(last_modified),
        **extra,
    }
    if _not_modified(request, headers["ETag"], last_modified):
        return web.Response(status=304, headers=headers)
    headers["Content-Type"] = content_type
    return web.Response(body=body, headers=headers)
