"""A fake Go module proxy (the GOPROXY protocol): a real aiohttp server on 127.0.0.1.

It serves real modules built in memory by :meth:`FakeGoProxy.add_module`: the ``.mod``
(the module's go.mod), the ``.zip`` in the module zip format that
``golang.org/x/mod/zip`` checks (every file under ``<module>@<version>/``, go.mod
included, no directory entries) and the ``.info`` (``{"Version", "Time"}``). The
endpoints, as ``go help goproxy`` describes them (``$mod`` and ``$v`` case-encoded:
every upper-case letter becomes ``!`` and the lower-case letter, ``example.test/Upper``
is ``example.test/!upper``):

* ``GET /$mod/@v/list``: the known versions, one per line (``text/plain``);
* ``GET /$mod/@v/$v.info``: ``{"Version": "v1.0.0", "Time": "<RFC 3339>"}``;
* ``GET /$mod/@v/$v.mod``: the go.mod (``text/plain``);
* ``GET /$mod/@v/$v.zip``: the module zip (``application/zip``);
* ``GET /$mod/@latest``: the ``.info`` of the newest version (the highest release, or
  the highest pre-release when there is no release);
* ``GET /sumdb/<name>/supported`` (and anything else under ``/sumdb/``): 404, which tells
  go that this proxy does not proxy checksum databases (it then goes to the database
  directly, so tests turn verification off: ``GOSUMDB=off``); unless the proxy was made
  with ``sumdb="<name>"``: then it serves a real checksum database of that name under
  ``/sumdb/<name>/`` (tests/fakes/gosumdb.py: ``supported``, ``latest``, ``lookup/...``,
  ``tile/...``) holding every version added, with the hashes of its zip as first built;
  ``GOSUMDB=<proxy>.sumdb.vkey`` makes go verify every download against it.

Unknown modules and versions answer ``404`` (or ``410`` with ``missing_status=410``) with
a ``text/plain; charset=utf-8`` body, ``not_found_message`` formatted with ``what``
(``"example.test/nope@latest"``...). Malformed escapes (an upper-case letter, ``!``
before a non-letter) answer 400. Every 200 answer carries a strong ``ETag`` (a digest of
the body) and an ``If-None-Match`` that matches answers ``304``: ``list`` and ``@latest``
change when a version is added, the rest never change unless a test tampers with them.
``HEAD`` is answered like ``GET``; other methods get 405.

Test-facing controls, usable while the server runs: ``add_module`` (a newer version
added later moves ``list`` and ``@latest``; ``listed=False`` keeps a version out of
``list``), ``corrupt_zip`` (serve other bytes than those first built, by default a
tampered but valid module zip), ``modules``, ``module``, ``versions``, ``latest``. A
:class:`ModuleVersion` knows its go.sum lines (``h1:`` hashes computed here the way
``golang.org/x/mod/sumdb/dirhash`` does), so tests can compare them with go's go.sum.

Every request is recorded (method, decoded path, query, headers) before it is answered,
with its status filled in once decided; ``count(prefix)``/``paths(prefix)`` as in the
other fakes (paths only: go only sends ``GET``).

What go 1.19.8 requests (observed with the real ``go`` against this fake: one proxy in
``GOPROXY``, ``GOSUMDB=off``, ``GOFLAGS=-mod=mod``, an empty module cache; modules
``example.test/greet`` v1.0.0 and v1.1.0, the latter requiring ``example.test/Upper/words
v0.2.0``; a main module whose go.mod requires only ``example.test/greet v1.1.0`` and whose
main.go imports both; tests/test_fakes_go.py checks these). Fetches run in parallel, so
the order within a command varies from run to run; each URL is fetched once:

* ``go mod download`` (no arguments): only what go.mod names, ``.mod``, ``.info`` then
  ``.zip``::

    /example.test/greet/@v/v1.1.0.mod
    /example.test/greet/@v/v1.1.0.info
    /example.test/greet/@v/v1.1.0.zip

  Without arguments go 1.17+ downloads only the modules the main go.mod requires, and
  the pruned module graph of a ``go 1.17``+ main module reads no go.mod below those:
  not even words' ``.mod`` is fetched, and go.sum gets only ``example.test/greet
  v1.1.0/go.mod``. A later ``go build`` (same
  module cache) fetches the rest and adds words to go.mod and all four lines to go.sum::

    /example.test/!upper/words/@v/v0.2.0.zip
    /example.test/!upper/words/@v/v0.2.0.mod
    /example.test/!upper/words/@v/v0.2.0.info

* ``go build`` on an empty module cache: the same six URLs, e.g. ``greet .mod``,
  ``greet .zip``, ``words .zip``, ``words .mod``, ``words .info``, ``greet .info``.
  No ``list``, no ``@latest``.
* ``go get example.test/greet@latest`` in a module with no requirements::

    /example.test/greet/@v/list            (200)
    /example.test/@v/list                  (404: every path prefix is a candidate module)
    /example.test/greet/@v/v1.1.0.info
    /example.test/greet/@v/v1.1.0.mod
    /example.test/greet/@v/v1.1.0.zip
    /example.test/!upper/words/@v/v0.2.0.zip
    /example.test/!upper/words/@v/v0.2.0.mod
    /example.test/!upper/words/@v/list
    /example.test/!upper/words/@v/v0.2.0.info

  go 1.19 resolves ``@latest`` from ``@v/list`` and asks ``/@latest`` only when the list
  has no release or pre-release version (e.g. an empty list: ``list`` 200, then
  ``@latest``, ``.mod``, ``.zip``); a 404/410 ``list`` fails the query without asking
  ``@latest``: for an unknown module, ``/example.test/nope/@v/list`` and
  ``/example.test/@v/list``, both 404, and nothing else. A second ``go get ...@latest``
  after a newer version was added asks ``list`` again (both) and fetches the new
  version's ``.info``, ``.mod`` and ``.zip``: nothing about ``@latest`` is cached.
* With a checksum database configured (``GOSUMDB=<name>+<hash>+<key>``), the first
  ``.mod`` downloaded makes go ask ``/sumdb/<name>/supported``; on 404 it goes to the
  database itself (``https://<name>/lookup/<module>@<version>``). With the fake's own
  database (``sumdb=<name>``) go stays on the proxy: ``supported``, then, for each
  module not in go.sum, ``/sumdb/<name>/lookup/<module>@<version>`` (once per version,
  for both its go.sum lines), and the tiles that prove the records (for a tree of 3
  records, ``/sumdb/<name>/tile/8/0/000.p/3``; of 303, ``tile/8/0/001.p/47`` and
  ``tile/8/1/000.p/1``). go keeps the tree head it saw under ``$GOPATH/pkg/sumdb`` and
  the verified tiles and lookups in ``$GOMODCACHE/cache/download/sumdb``.

For a 404 or 410 whose ``Content-Type`` is ``text/plain`` (charset utf-8, us-ascii or
none) go prints the body after the status, up to its first blank line and at most 8
lines (cmd/go/internal/web ``HTTPError``); one line goes on the same line (``<proxy>``
standing for the proxy URL)::

    go: example.test/nope@v1.0.0: reading <proxy>/example.test/nope/@v/v1.0.0.info: 404 Not Found
    \tserver response: not found: example.test/nope@v1.0.0

(``410 Gone`` alike) and several lines each on their own, tab-indented, after ``server
response:``. With any
other content type (``text/html``, or ``text/plain; charset=iso-8859-1``) go prints only
``404 Not Found``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import threading
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from aiohttp import web
from multidict import CIMultiDictProxy

from tests.fakes.gosumdb import ChecksumDB, unescape_path
from tests.fakes.server import ThreadedServer

#: The ``Time`` of a version's ``.info`` unless add_module() is given one.
DEFAULT_TIME: Final = "2024-01-02T03:04:05Z"
TEXT_PLAIN: Final = "text/plain; charset=utf-8"
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_SEMVER = re.compile(
    r"v(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)(?:\.(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*))*))?"
    r"(\+incompatible)?"
)


# -- module paths, versions, hashes --------------------------------------------------------


def escape_path(path: str) -> str:
    """The case encoding of module paths and versions in proxy URLs: ``A`` -> ``!a``."""
    return "".join("!" + c.lower() if "A" <= c <= "Z" else c for c in path)


def _semver_key(version: str) -> tuple[int, int, int, int, tuple[tuple[int, int, str], ...]]:
    m = _SEMVER.fullmatch(version)
    if m is None:
        raise ValueError(f"not a canonical semantic version: {version!r}")
    pre = m.group(4)
    # A release sorts after every pre-release of the same version; pre-release
    # identifiers compare numerically when numeric, numeric ones before the others.
    idents = tuple(
        (0, int(p), "") if p.isdigit() else (1, 0, p) for p in (pre.split(".") if pre else ())
    )
    return int(m.group(1)), int(m.group(2)), int(m.group(3)), 0 if pre else 1, idents


def is_release(version: str) -> bool:
    """Whether ``version`` has no pre-release part."""
    m = _SEMVER.fullmatch(version)
    return m is not None and m.group(4) is None


def hash1(files: Mapping[str, bytes]) -> str:
    """``golang.org/x/mod/sumdb/dirhash.Hash1`` of ``{name: content}``."""
    summary = "".join(
        f"{hashlib.sha256(files[name]).hexdigest()}  {name}\n" for name in sorted(files)
    )
    return "h1:" + base64.b64encode(hashlib.sha256(summary.encode()).digest()).decode()


def hash_zip(data: bytes) -> str:
    """``dirhash.HashZip`` of a zip (its entries' full names and contents): go.sum's hash."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return hash1({name: zf.read(name) for name in zf.namelist()})


def build_module_zip(path: str, version: str, files: Mapping[str, bytes]) -> bytes:
    """A module zip: each file at ``<path>@<version>/<name>``, reproducible bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(files):
            info = zipfile.ZipInfo(f"{path}@{version}/{name}", date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, files[name])
    return buf.getvalue()


def go_mod_text(path: str, requires: Mapping[str, str] | None = None, go: str = "1.19") -> str:
    """A go.mod for module ``path`` with ``require`` lines for ``requires``."""
    text = f"module {path}\n\ngo {go}\n"
    if requires:
        lines = "".join(f"\t{mod} {ver}\n" for mod, ver in sorted(requires.items()))
        text += f"\nrequire (\n{lines})\n"
    return text


@dataclass
class ModuleVersion:
    """One version of a module as the proxy serves it."""

    path: str
    version: str
    time: str
    files: dict[str, bytes]  # names relative to the module root, go.mod included
    zip: bytes  # as first built: what go.sum should record
    listed: bool = True  # in @v/list (else only reachable by version or @latest)
    served_zip: bytes = b""  # what the proxy serves (differs once corrupt_zip() ran)

    def __post_init__(self) -> None:
        if not self.served_zip:
            self.served_zip = self.zip

    @property
    def mod(self) -> bytes:
        """The ``.mod``: the go.mod in the zip."""
        return self.files["go.mod"]

    @property
    def info(self) -> bytes:
        """The ``.info`` JSON."""
        return json.dumps({"Version": self.version, "Time": self.time}).encode()

    @property
    def zip_names(self) -> list[str]:
        """Names of the zip's entries (as first built)."""
        return sorted(f"{self.path}@{self.version}/{name}" for name in self.files)

    @property
    def h1(self) -> str:
        """go.sum hash of the module zip (as first built): ``dirhash.HashZip``."""
        return hash1({f"{self.path}@{self.version}/{n}": c for n, c in self.files.items()})

    @property
    def gomod_h1(self) -> str:
        """go.sum hash of the go.mod: ``dirhash.Hash1({"go.mod": ...})``."""
        return hash1({"go.mod": self.mod})

    def gosum_lines(self) -> list[str]:
        """The two go.sum lines go writes for this version."""
        return [
            f"{self.path} {self.version} {self.h1}",
            f"{self.path} {self.version}/go.mod {self.gomod_h1}",
        ]


@dataclass
class RecordedRequest:
    """One request as the fake proxy received it."""

    method: str
    path: str  # decoded, without the query string; module paths still case-encoded
    query: str
    headers: CIMultiDictProxy[str]
    listener: str
    status: int | None = None  # set once answered; None if the handler crashed


@dataclass
class _Module:
    versions: dict[str, ModuleVersion] = field(default_factory=dict)


class FakeGoProxy(ThreadedServer[RecordedRequest]):
    """A GOPROXY on ``127.0.0.1:<random port>``; see the module docstring.

    ``url`` is the proxy URL (``http://127.0.0.1:PORT``, no trailing slash) to put in
    ``GOPROXY``. Context manager, or ``start()``/``stop()``.
    """

    def __init__(
        self,
        *,
        missing_status: int = 404,
        not_found_message: str = "not found: {what}",
        sumdb: str | None = None,
    ) -> None:
        if missing_status not in (404, 410):
            raise ValueError("missing_status must be 404 or 410")
        super().__init__()
        #: The checksum database served under /sumdb/<name>/, if any.
        self.sumdb = ChecksumDB(sumdb) if sumdb else None
        self.url = ""
        self.missing_status = missing_status
        self.not_found_message = not_found_message
        self._modules: dict[str, _Module] = {}
        self._mods_lock = threading.Lock()

    # --- building modules -------------------------------------------------------------

    def add_module(
        self,
        path: str,
        version: str,
        files: Mapping[str, str | bytes],
        *,
        requires: Mapping[str, str] | None = None,
        time: str = DEFAULT_TIME,
        listed: bool = True,
    ) -> ModuleVersion:
        """Build and serve module ``path`` at ``version`` with ``files`` (name: content).

        Without a ``go.mod`` in ``files`` one is written (``module``, ``go 1.19``,
        ``require`` lines for ``requires``). ``listed=False`` leaves the version out of
        ``@v/list`` (like a module known only by pseudo-versions: go then asks
        ``@latest``). May be called while the server runs.
        """
        _semver_key(version)  # validates
        if not path or path != path.strip("/") or "@" in path or "!" in path:
            raise ValueError(f"bad module path {path!r}")
        contents = {n: c.encode() if isinstance(c, str) else c for n, c in files.items()}
        if "go.mod" in contents:
            if requires:
                raise ValueError("give either a go.mod or requires, not both")
        else:
            contents["go.mod"] = go_mod_text(path, requires).encode()
        mv = ModuleVersion(
            path=path,
            version=version,
            time=time,
            files=contents,
            zip=build_module_zip(path, version, contents),
            listed=listed,
        )
        with self._mods_lock:
            self._modules.setdefault(path, _Module()).versions[version] = mv
        if self.sumdb is not None:
            self.sumdb.add(path, version, mv.gosum_lines())
        return mv

    def corrupt_zip(self, path: str, version: str, data: bytes | None = None) -> bytes:
        """Serve other bytes as ``path@version``'s zip from now on; returns them.

        By default a valid module zip whose first ``.go`` file (or, without one, an added
        ``tampered.txt``) differs from the original: go accepts the zip and fails on its
        hash. ``data`` serves those bytes instead (junk, a truncated zip...).
        """
        mv = self.module(path, version)
        if data is None:
            files = dict(mv.files)
            go_files = sorted(n for n in files if n.endswith(".go"))
            if go_files:
                files[go_files[0]] += b"\n// tampered with by FakeGoProxy.corrupt_zip\n"
            else:
                files["tampered.txt"] = b"tampered with by FakeGoProxy.corrupt_zip\n"
            data = build_module_zip(path, version, files)
        with self._mods_lock:
            mv.served_zip = data
        return data

    def module(self, path: str, version: str) -> ModuleVersion:
        """The served ``path@version`` (KeyError if unknown)."""
        with self._mods_lock:
            return self._modules[path].versions[version]

    @property
    def modules(self) -> dict[str, list[str]]:
        """``{module path: [versions, oldest first]}``."""
        with self._mods_lock:
            paths = list(self._modules)
        return {p: self.versions(p) for p in paths}

    def versions(self, path: str, *, listed_only: bool = False) -> list[str]:
        """Versions of ``path``, in semver order (empty if unknown); ``listed_only``: those
        in ``@v/list``."""
        with self._mods_lock:
            mod = self._modules.get(path)
            found = [
                v for v, mv in (mod.versions.items() if mod else ()) if mv.listed or not listed_only
            ]
        return sorted(found, key=_semver_key)

    def latest(self, path: str) -> ModuleVersion | None:
        """What ``@latest`` answers: the highest release, else the highest pre-release."""
        versions = self.versions(path)
        if not versions:
            return None
        releases = [v for v in versions if is_release(v)]
        return self.module(path, (releases or versions)[-1])

    # --- serving ----------------------------------------------------------------------

    async def _setup(self) -> None:
        app = web.Application(middlewares=[self._recorder("proxy", RecordedRequest)])
        app.router.add_get("/{tail:.*}", self._handle)  # and HEAD
        self.url = f"http://127.0.0.1:{await self._listen(app)}"

    def _missing(self, what: str, status: int | None = None) -> web.HTTPException:
        text = self.not_found_message.format(what=what).rstrip("\n") + "\n"
        cls = web.HTTPGone if (status or self.missing_status) == 410 else web.HTTPNotFound
        return cls(text=text)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path.startswith("/sumdb/"):
            db = self.sumdb
            if db is not None and path.startswith(f"/sumdb/{db.name}/"):
                got = db.answer(path[len(f"/sumdb/{db.name}/") :])
                if got.status != 200:
                    return web.Response(status=got.status, text=got.body.decode())
                return self._answer(request, got.body, got.content_type)
            # Not a checksum-database proxy: go then tries the next proxy or the database.
            raise self._missing(path.removeprefix("/"), 404)
        if path.endswith("/@latest"):
            mod = self._decode(path[1 : -len("/@latest")], "module path")
            mv = self.latest(mod)
            if mv is None:
                raise self._missing(f"{mod}@latest")
            return self._answer(request, mv.info, "application/json")
        esc_mod, sep, leaf = path[1:].partition("/@v/")
        if not sep or not esc_mod or "/" in leaf:
            raise self._missing(path.removeprefix("/"))
        mod = self._decode(esc_mod, "module path")
        if leaf == "list":
            if not self.versions(mod):
                raise self._missing(f"{mod}/@v/list")
            body = "".join(v + "\n" for v in self.versions(mod, listed_only=True)).encode()
            return self._answer(request, body, TEXT_PLAIN)
        esc_version, dot, ext = leaf.rpartition(".")
        if not dot or ext not in ("info", "mod", "zip"):
            raise self._missing(f"{mod}/@v/{leaf}")
        version = self._decode(esc_version, "version")
        try:
            mv = self.module(mod, version)
        except KeyError:
            raise self._missing(f"{mod}@{version}") from None
        if ext == "info":
            return self._answer(request, mv.info, "application/json")
        if ext == "mod":
            return self._answer(request, mv.mod, TEXT_PLAIN)
        with self._mods_lock:
            data = mv.served_zip
        return self._answer(request, data, "application/zip")

    @staticmethod
    def _decode(escaped: str, what: str) -> str:
        decoded = unescape_path(escaped)
        if decoded is None:
            raise web.HTTPBadRequest(text=f"bad request: invalid escaped {what} {escaped!r}\n")
        return decoded

    @staticmethod
    def _answer(request: web.Request, body: bytes, content_type: str) -> web.Response:
        etag = f'"{hashlib.sha256(body).hexdigest()[:32]}"'
        headers = {"ETag": etag}
        inm = request.headers.get("If-None-Match")
        if inm is not None:
            tags = [t.strip().removeprefix("W/") for t in inm.split(",")]
            if "*" in tags or etag in tags:
                return web.Response(status=304, headers=headers)
        headers["Content-Type"] = content_type
        return web.Response(body=body, headers=headers)
