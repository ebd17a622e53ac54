"""A fake Cargo *sparse* registry serving real ``.crate`` files (RFC 2789), on 127.0.0.1.

:class:`FakeCargoRegistry` (a :class:`~tests.fakes.server.ThreadedServer`) serves, like
index.crates.io and static.crates.io:

* ``/index/config.json``: ``{"dl": ...}`` (plus ``"api"`` only if given). By default
  ``dl`` is ``http://127.0.0.1:<Q>/crates`` on a *second* listener, so cargo uses its
  default form ``{dl}/{crate}/{version}/download``; with ``markers=True`` it is a template
  using every marker (:data:`MARKER_TEMPLATE`: ``{prefix}``, ``{lowerprefix}``,
  ``{crate}``, ``{version}``, ``{sha256-checksum}``) and only that URL form is served.
* ``/index/<path>``: the standard lowercase paths (``1/a``, ``2/ab``, ``3/a/abc``,
  ``se/rd/serde``), one JSON line per version in publication order: ``name``, ``vers``,
  ``deps`` (``name``, ``req``, ``features``, ``optional``, ``default_features``,
  ``target``, ``kind``, and ``package`` for a renamed dep), ``cksum`` (sha256 of the
  ``.crate``), ``features`` (``features2`` and ``v: 2`` only for ``dep:``/``?/`` syntax),
  ``yanked``, ``links``; everything read from the ``Cargo.toml`` inside the ``.crate``.
  ``ETag`` on every answer, ``304`` when ``If-None-Match`` matches.
* ``404`` with a ``text/plain`` body for anything unknown (crate, version, a non-canonical
  index path such as ``3/x/mid`` or ``Le/af/leaf``).

Every request is recorded (method, path, query, headers, listener ``"index"``/``"dl"``)
before it is handled (``count()``, ``paths()``, ``reset_log()``). Hooks:
``add_crate`` at any time (a version added later shows up with a new ``ETag``),
``corrupt`` (bytes not matching ``cksum``), ``make_missing`` (indexed, download 404),
``yank``, ``fail`` (any status and body for a path).

:func:`make_crate` writes real ``.crate`` files: ``cargo package --no-verify --allow-dirty
--offline`` for crates without dependencies (cargo resolves dependencies against a
registry even with ``--no-verify``, so it cannot package ``mid`` offline), otherwise an
in-process build of the same shape (:func:`build_crate_bytes`). Cargo takes both.

What cargo 1.95.0 does against it (observed in tests/test_fakes_cargo.py, source
replacement ``sparse+http://127.0.0.1:<P>/index/``, accepted over plain HTTP)
--------------------------------------------------------------------------------------

``cargo fetch`` of a bin crate depending on ``mid = "1"`` (``mid`` -> ``leaf ^0.2``), fresh
``CARGO_HOME``, no ``Cargo.lock``::

    GET /index/config.json             200
    GET /index/3/m/mid                 200
    GET /index/le/af/leaf              200   (asked once mid's line names it)
    GET /crates/mid/1.0.0/download     200   (on the dl listener, concurrently:
    GET /crates/leaf/0.2.0/download    200    their order varies)

* Index requests carry ``Accept: text/plain``, ``cargo-protocol: version=1``,
  ``User-Agent: cargo/1.95.0 (f2d3ce0bd 2026-03-21)``, ``Accept-Encoding: deflate, gzip``;
  downloads ``Accept: */*`` and no ``cargo-protocol``.
* *Every* request (index and download) also carries ``Connection: Upgrade,
  HTTP2-Settings``, ``Upgrade: h2c`` and an ``HTTP2-Settings`` header: libcurl offers
  HTTP/2 over cleartext. aiohttp ignores the offer and answers HTTP/1.1; a proxy in front
  must do the same (or handle h2c), never forward those hop-by-hop headers.
* ``config.json`` is asked once per invocation that updates the index ("Updating
  `mirror` index": ``fetch``/``build`` without a usable lock file, ``update``,
  ``generate-lockfile``), always unconditionally (no ``If-None-Match``, though it was
  served with an ``ETag``). Cargo keeps a copy in ``$CARGO_HOME/registry/index/<dir>/``
  and uses it when the index is not updated: ``cargo fetch`` with an up-to-date lock file
  asks only for the missing downloads, no ``config.json``.
* Index files are revalidated with ``If-None-Match: <the ETag>`` (``cargo update``: 304
  for unchanged files, 200 for a file that gained a version). ``Last-Modified``/
  ``If-Modified-Since`` is not exercised: the fake sends only an ``ETag``.
* ``cargo build`` right after ``cargo fetch`` makes no request at all.
* With a marker template, cargo substitutes ``{prefix}`` with the name's case kept
  (``Mi/xe`` for ``MixedCase``), ``{lowerprefix}`` lowercased, ``{crate}`` as published
  (``MixedCase``), the query part included (``?sum=<sha256>``); the index path is always
  lowercase (``mi/xe/mixedcase``).
* ``Cargo.lock`` records ``source = "registry+https://github.com/rust-lang/crates.io-index"``
  and ``checksum = <cksum>``: source replacement does not show there.

Failures (stderr, exit status 101):

* Checksum mismatch: cargo prints ``Downloaded leaf v0.2.0 (registry `mirror`)`` first,
  then ``error: failed to download replaced source registry `crates-io``` / ``Caused by:
  failed to verify the checksum of `leaf v0.2.0 (registry `mirror`)```; nothing unpacked.
* 404 (also 410, 451) on an index file means "no such crate": ``error: no matching package
  named `nope` found`` / ``location searched: `mirror` index (which is replacing registry
  `crates-io`)``; the response body is *not* printed.
* 404 on ``config.json``: ``config.json not found in registry`` (body not printed).
* Any other error status on the index (500 tried) or on ``config.json``, and any error on a
  download (404, 403, 503 tried): ``failed to get successful HTTP response from `<url>`
  (127.0.0.1), got <status>`` followed by ``body:`` and the body, indented by two spaces;
  for an index file preceded by ``download of le/af/leaf failed``.
* With ``CARGO_NET_RETRY=0`` nothing is retried (one request per failure).
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import io
import json
import re
import tarfile
import threading
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from aiohttp import web
from multidict import CIMultiDictProxy

from tests.fakes.cargoclient import (
    CargoUnavailable,
    cargo_env,
    require_cargo,
    run_cargo,
    rust_ident,
)
from tests.fakes.server import ThreadedServer

#: The ``dl`` template used with ``markers=True``: every marker cargo knows.
MARKER_TEMPLATE = (
    "{base}/m/{{prefix}}/{{lowerprefix}}/{{crate}}-{{version}}.crate?sum={{sha256-checksum}}"
)
# Cargo package's timestamp for every entry of a .crate (2006-07-24T01:21:28Z).
_CRATE_MTIME = 1153704088
_DEP_TABLES: dict[str, str] = {
    "dependencies": "normal",
    "dev-dependencies": "dev",
    "dev_dependencies": "dev",
    "build-dependencies": "build",
    "build_dependencies": "build",
}


def index_path(name: str) -> str:
    """The sparse index file of crate ``name``: ``1/a``, ``2/ab``, ``3/a/abc``, ``se/rd/serde``.

    Lowercase, as the index serves it.
    """
    lower = name.lower()
    return f"{prefix(lower)}/{lower}"


def prefix(name: str) -> str:
    """Cargo's ``{prefix}`` of ``name`` (case kept): ``1``, ``2``, ``3/a``, ``se/rd``."""
    if not name:
        raise ValueError("empty crate name")
    if len(name) <= 2:
        return str(len(name))
    if len(name) == 3:
        return f"3/{name[0]}"
    return f"{name[0:2]}/{name[2:4]}"


# --- building .crate files ----------------------------------------------------------------


def _toml_str(value: str) -> str:
    """A quoted string literal, valid in TOML and Rust alike (JSON escapes, ASCII only)."""
    return json.dumps(value)


def _lib_rs(name: str, version: str, deps: Mapping[str, str]) -> str:
    """``describe()`` returns ``"<name> <version>"`` plus the deps' descriptions."""
    if not deps:
        text = _toml_str(f"{name} {version}")
        return f"pub fn describe() -> String {{\n    {text}.to_string()\n}}\n"
    calls = ", ".join(f"{rust_ident(d)}::describe()" for d in deps)
    head = _toml_str(f"{name} {version} -> [{{}}]")
    return (
        "pub fn describe() -> String {\n"
        f"    let deps: Vec<String> = vec![{calls}];\n"
        f'    format!({head}, deps.join(", "))\n'
        "}\n"
    )


def _manifest(name: str, version: str, deps: Mapping[str, str], *, normalized: bool) -> str:
    """``Cargo.toml`` as written by a developer, or as ``cargo package`` normalizes it."""
    lines = ["[package]"]
    if normalized:
        lines += [
            'edition = "2021"',
            f"name = {_toml_str(name)}",
            f"version = {_toml_str(version)}",
            "build = false",
            "autolib = false",
            "autobins = false",
            "autoexamples = false",
            "autotests = false",
            "autobenches = false",
            f"description = {_toml_str(f'The {name} test crate')}",
            "readme = false",
            'license = "MIT"',
            "",
            "[lib]",
            f"name = {_toml_str(rust_ident(name))}",
            'path = "src/lib.rs"',
        ]
        for dep, req in deps.items():
            lines += ["", f"[dependencies.{dep}]", f"version = {_toml_str(req)}"]
    else:
        lines += [
            f"name = {_toml_str(name)}",
            f"version = {_toml_str(version)}",
            'edition = "2021"',
            f"description = {_toml_str(f'The {name} test crate')}",
            'license = "MIT"',
            "",
            "[dependencies]",
            *(f"{dep} = {_toml_str(req)}" for dep, req in deps.items()),
        ]
    return "\n".join(lines) + "\n"


def build_crate_bytes(name: str, version: str, deps: Mapping[str, str] | None = None) -> bytes:
    """A ``.crate`` built in-process, shaped like ``cargo package``'s (deterministic bytes).

    A gzip'd ustar archive of ``<name>-<version>/`` holding ``Cargo.toml`` (normalized:
    dependencies as ``[dependencies.<dep>] version = "<req>"``), ``Cargo.toml.orig`` and
    ``src/lib.rs``; fixed timestamps, owner 0, mode 0644.
    """
    deps = dict(deps or {})
    root = f"{name}-{version}"
    files = {
        "Cargo.toml": _manifest(name, version, deps, normalized=True),
        "Cargo.toml.orig": _manifest(name, version, deps, normalized=False),
        "src/lib.rs": _lib_rs(name, version, deps),
    }
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for rel, text in sorted(files.items()):
            data = text.encode()
            info = tarfile.TarInfo(f"{root}/{rel}")
            info.size, info.mtime, info.mode = len(data), _CRATE_MTIME, 0o644
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


def make_crate(
    workdir: Path,
    name: str,
    version: str,
    deps: Mapping[str, str] | None = None,
    *,
    packager: Literal["auto", "cargo", "hand"] = "auto",
) -> Path:
    """Write a real ``<name>-<version>.crate`` in ``workdir`` and return its path.

    The crate is a library whose ``describe()`` returns ``"<name> <version>"``, or with
    ``deps`` ({crate: version req}) ``"<name> <version> -> [<each dep's describe()>]"``.

    ``packager="cargo"`` runs the real ``cargo package --no-verify --allow-dirty --offline``
    (private ``CARGO_HOME``) on the sources in ``workdir/<name>-<version>/``; that only
    works without dependencies, since cargo resolves them against a registry even with
    ``--no-verify``. ``"hand"`` builds it in-process (:func:`build_crate_bytes`).
    ``"auto"`` (default): cargo when there are no deps and a usable cargo, else by hand.
    """
    deps = dict(deps or {})
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / f"{name}-{version}.crate"
    use_cargo = packager == "cargo"
    if packager == "auto" and not deps:
        try:
            require_cargo()
            use_cargo = True
        except CargoUnavailable:  # no cargo here: the hand-built crate is as good
            use_cargo = False
    if not use_cargo:
        out.write_bytes(build_crate_bytes(name, version, deps))
        return out
    if deps:
        raise ValueError("cargo package cannot package a crate with registry deps offline")
    src = workdir / f"{name}-{version}"
    (src / "src").mkdir(parents=True, exist_ok=True)
    (src / "Cargo.toml").write_text(
        _manifest(name, version, deps, normalized=False).replace(
            "[dependencies]", "[workspace]\n\n[dependencies]"
        )
    )
    (src / "src" / "lib.rs").write_text(_lib_rs(name, version, deps))
    env = cargo_env(workdir / ".cargo-package")
    run_cargo(["package", "--no-verify", "--allow-dirty", "--offline"], src, env, check=True)
    packaged = Path(env["CARGO_TARGET_DIR"]) / "package" / out.name
    out.write_bytes(packaged.read_bytes())
    return out


# --- what the index says about a crate --------------------------------------------------


def _read_manifest(data: bytes) -> dict[str, Any]:
    """The (normalized) ``Cargo.toml`` inside a ``.crate``."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            parts = member.name.split("/")
            if len(parts) == 2 and parts[1] == "Cargo.toml" and member.isfile():
                fh = tar.extractfile(member)
                assert fh is not None
                return tomllib.loads(fh.read().decode())
    raise ValueError("no <name>-<version>/Cargo.toml in the .crate")


def _index_deps(manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The index's ``deps`` list for a manifest (all kinds, target-specific included)."""
    tables: list[tuple[str | None, str, Mapping[str, Any]]] = []
    for key, kind in _DEP_TABLES.items():
        tables.append((None, kind, manifest.get(key, {})))
    for target, spec in manifest.get("target", {}).items():
        for key, kind in _DEP_TABLES.items():
            tables.append((target, kind, spec.get(key, {})))
    out = []
    for target, kind, table in tables:
        for dep_name, spec in table.items():
            if isinstance(spec, str):
                spec = {"version": spec}
            entry: dict[str, Any] = {
                "name": dep_name,
                "req": spec.get("version", "*"),
                "features": list(spec.get("features", [])),
                "optional": bool(spec.get("optional", False)),
                "default_features": bool(
                    spec.get("default-features", spec.get("default_features", True))
                ),
                "target": target,
                "kind": kind,
            }
            if "package" in spec:  # a renamed dependency: "name" is the rename
                entry["package"] = spec["package"]
            if "registry-index" in spec:
                entry["registry"] = spec["registry-index"]
            out.append(entry)
    return sorted(out, key=lambda d: (d["name"], d["kind"], d["target"] or ""))


def index_entry(data: bytes) -> dict[str, Any]:
    """The sparse-index line (as a dict) for a ``.crate``'s bytes, read from its manifest."""
    manifest = _read_manifest(data)
    package = manifest["package"]
    features: dict[str, list[str]] = {k: list(v) for k, v in manifest.get("features", {}).items()}
    # "dep:x" and "x?/f" need index format v2: those features go to "features2".
    new_syntax = {k: v for k, v in features.items() if any("dep:" in f or "?/" in f for f in v)}
    entry: dict[str, Any] = {
        "name": package["name"],
        "vers": package["version"],
        "deps": _index_deps(manifest),
        "cksum": hashlib.sha256(data).hexdigest(),
        "features": {k: v for k, v in features.items() if k not in new_syntax},
        "yanked": False,
        "links": package.get("links"),
    }
    if new_syntax:
        entry["features2"] = new_syntax
        entry["v"] = 2
    if "rust-version" in package:
        entry["rust_version"] = package["rust-version"]
    return entry


# --- the server -------------------------------------------------------------------------


@dataclass
class RecordedRequest:
    """One request as the fake registry received it."""

    method: str
    path: str  # decoded, without the query string
    query: str
    headers: CIMultiDictProxy[str]
    listener: str  # "index" or "dl"
    status: int | None = None  # set once answered; None if the handler crashed


@dataclass
class CrateVersion:
    """One published version: the real bytes, its index line and the test's tampering."""

    data: bytes
    entry: dict[str, Any]
    corrupt: bool = False  # serve bytes that do not match cksum
    missing: bool = False  # listed in the index, but the download answers 404

    @property
    def name(self) -> str:
        return str(self.entry["name"])

    @property
    def version(self) -> str:
        return str(self.entry["vers"])

    @property
    def cksum(self) -> str:
        return str(self.entry["cksum"])


@dataclass
class _Failure:
    status: int
    body: str
    headers: dict[str, str] = field(default_factory=dict)


class FakeCargoRegistry(ThreadedServer[RecordedRequest]):
    """A sparse registry on 127.0.0.1 serving the crates given to :meth:`add_crate`.

    Use as a context manager, or ``start()``/``stop()``. ``index_url`` is
    ``http://127.0.0.1:<P>/index/`` (``sparse_url`` adds ``sparse+``). Downloads live on
    a second listener (``dl_url``, ``http://127.0.0.1:<Q>/crates``) like static.crates.io,
    unless ``dl_on_other_host=False``. ``markers=True`` makes ``config.json``'s ``dl`` a
    template using every marker (:data:`MARKER_TEMPLATE`) instead of cargo's default
    ``{dl}/{crate}/{version}/download``. ``api`` goes into ``config.json`` if given.
    """

    def __init__(
        self,
        *,
        dl_on_other_host: bool = True,
        markers: bool = False,
        api: str | None = None,
    ) -> None:
        super().__init__()
        self.dl_on_other_host = dl_on_other_host
        self.markers = markers
        self.api = api
        self.url = ""  # origin of the index listener
        self.dl_origin = ""  # origin of the download listener (== url if not other host)
        self._crates: dict[str, list[CrateVersion]] = {}  # lowercase name -> versions
        self._failures: dict[str, _Failure] = {}
        self._state = threading.Lock()

    # --- URLs ---------------------------------------------------------------------------

    @property
    def index_url(self) -> str:
        """``http://127.0.0.1:<P>/index/``."""
        return self.url + "/index/"

    @property
    def sparse_url(self) -> str:
        """``sparse+`` + :attr:`index_url`, what cargo's config names."""
        return "sparse+" + self.index_url

    @property
    def dl_url(self) -> str:
        """The ``dl`` value of ``config.json``."""
        if self.markers:
            return MARKER_TEMPLATE.format(base=self.dl_origin)
        return self.dl_origin + "/crates"

    def config(self) -> dict[str, Any]:
        """What ``/index/config.json`` answers."""
        doc: dict[str, Any] = {"dl": self.dl_url}
        if self.api is not None:
            doc["api"] = self.api
        return doc

    # --- test-facing controls -----------------------------------------------------------

    def add_crate(self, crate: Path | bytes, *, yanked: bool = False) -> CrateVersion:
        """Publish a ``.crate`` (path or bytes); its index line comes from its manifest.

        Works while serving ("add a version later"): the next index request sees it (new
        ``ETag``). Re-adding a version replaces it.
        """
        data = crate.read_bytes() if isinstance(crate, Path) else crate
        version = CrateVersion(data, index_entry(data))
        version.entry["yanked"] = yanked
        with self._state:
            versions = self._crates.setdefault(version.name.lower(), [])
            versions[:] = [v for v in versions if v.version != version.version]
            versions.append(version)
        return version

    def get(self, name: str, version: str) -> CrateVersion:
        """The published ``name`` ``version`` (``KeyError`` if there is none)."""
        with self._state:
            for v in self._crates.get(name.lower(), []):
                if v.version == version:
                    return v
        raise KeyError(f"{name} {version}")

    def corrupt(self, name: str, version: str) -> None:
        """Serve ``name`` ``version`` with its last byte changed: same length, wrong sha256."""
        self.get(name, version).corrupt = True

    def make_missing(self, name: str, version: str) -> None:
        """Keep ``name`` ``version`` in the index but answer 404 (text body) to its download."""
        self.get(name, version).missing = True

    def yank(self, name: str, version: str, yanked: bool = True) -> None:
        """Mark ``name`` ``version`` yanked (or not) in its index line."""
        self.get(name, version).entry["yanked"] = yanked

    def fail(self, path: str, status: int = 500, body: str = "", **headers: str) -> None:
        """Answer ``status`` with ``body`` (text/plain) to every request for ``path``
        (either listener, query ignored), instead of the real answer."""
        self._failures[path] = _Failure(status, body, dict(headers))

    def index_lines(self, name: str) -> list[dict[str, Any]]:
        """The index lines of crate ``name`` (copies), in publication order."""
        with self._state:
            return [copy.deepcopy(v.entry) for v in self._crates.get(name.lower(), [])]

    # --- serving ------------------------------------------------------------------------

    async def _setup(self) -> None:
        index = web.Application(middlewares=[self._recorder("index", RecordedRequest)])
        index.router.add_get("/index/config.json", self._config_json)
        index.router.add_get("/index/{tail:.+}", self._index_file)
        dl = index
        if self.dl_on_other_host:
            dl = web.Application(middlewares=[self._recorder("dl", RecordedRequest)])
        dl.router.add_get("/crates/{crate}/{version}/download", self._download)
        dl.router.add_get("/m/{tail:.+}", self._marker_download)
        ports = [await self._listen(index)]
        if dl is not index:
            ports.append(await self._listen(dl))
        self.url = f"http://127.0.0.1:{ports[0]}"
        self.dl_origin = f"http://127.0.0.1:{ports[-1]}"

    def _failure(self, request: web.Request) -> web.Response | None:
        failure = self._failures.get(request.path)
        if failure is None:
            return None
        return web.Response(status=failure.status, text=failure.body, headers=failure.headers)

    @staticmethod
    def _with_etag(request: web.Request, body: bytes, content_type: str) -> web.Response:
        etag = f'"{hashlib.sha256(body).hexdigest()[:32]}"'
        if etag in [t.strip() for t in request.headers.get("If-None-Match", "").split(",")]:
            return web.Response(status=304, headers={"ETag": etag})
        return web.Response(body=body, headers={"ETag": etag, "Content-Type": content_type})

    async def _config_json(self, request: web.Request) -> web.StreamResponse:
        failed = self._failure(request)
        if failed is not None:
            return failed
        body = json.dumps(self.config()).encode()
        return self._with_etag(request, body, "application/json")

    async def _index_file(self, request: web.Request) -> web.StreamResponse:
        failed = self._failure(request)
        if failed is not None:
            return failed
        tail = request.match_info["tail"]
        name = tail.rsplit("/", 1)[-1]
        with self._state:
            versions = list(self._crates.get(name, []))
            lines = [json.dumps(v.entry, separators=(",", ":")) for v in versions]
        if not versions or tail != index_path(name):
            raise web.HTTPNotFound(text=f"no crate at index path {tail!r}\n")
        body = ("\n".join(lines) + "\n").encode()
        return self._with_etag(request, body, "text/plain")

    def _crate_body(self, name: str, version: str) -> bytes:
        try:
            found = self.get(name, version)
        except KeyError:
            raise web.HTTPNotFound(text=f"no crate {name} {version}\n") from None
        if found.name != name:  # downloads use the published spelling of the name
            raise web.HTTPNotFound(text=f"no crate {name} {version}\n")
        if found.missing:
            raise web.HTTPNotFound(text=f"crate file {name}-{version}.crate is gone\n")
        if found.corrupt:
            return found.data[:-1] + bytes([found.data[-1] ^ 0xFF])
        return found.data

    @staticmethod
    def _crate_response(body: bytes) -> web.Response:
        return web.Response(body=body, headers={"Content-Type": "application/gzip"})

    async def _download(self, request: web.Request) -> web.StreamResponse:
        failed = self._failure(request)
        if failed is not None:
            return failed
        if self.markers:
            raise web.HTTPNotFound(text="this registry's dl is a template\n")
        body = self._crate_body(request.match_info["crate"], request.match_info["version"])
        return self._crate_response(body)

    async def _marker_download(self, request: web.Request) -> web.StreamResponse:
        """``/m/{prefix}/{lowerprefix}/{crate}-{version}.crate?sum={sha256-checksum}``."""
        failed = self._failure(request)
        if failed is not None:
            return failed
        if not self.markers:
            raise web.HTTPNotFound(text="this registry's dl has no markers\n")
        match = re.fullmatch(r"(.+)/([^/]+)\.crate", request.match_info["tail"])
        if match is None:
            raise web.HTTPNotFound(text="not a crate path\n")
        prefixes, file = match.groups()
        for candidate in self._all_versions():
            stem = f"{candidate.name}-{candidate.version}"
            want = f"{prefix(candidate.name)}/{prefix(candidate.name.lower())}"
            if file == stem and prefixes == want:
                if request.query.get("sum") != candidate.cksum:
                    raise web.HTTPNotFound(text="wrong {sha256-checksum}\n")
                return self._crate_response(self._crate_body(candidate.name, candidate.version))
        raise web.HTTPNotFound(text=f"no crate at {request.path}\n")

    def _all_versions(self) -> list[CrateVersion]:
        with self._state:
            return [v for versions in self._crates.values() for v in versions]
