"""Cargo sparse-registry rules (`kind = "cargo"`): keys, index files, `config.json`.

Cargo reaches an upstream named NAME as `sparse+http://cache:3142/NAME/` (source
replacement in `$CARGO_HOME/config.toml`). URLs under it:
- `/NAME/config.json` -> the registry's configuration (`dl`, and `api` for publishing);
- `/NAME/<index path>` -> the index file of one crate: `1/a`, `2/ab`, `3/a/abc`,
  `ab/cd/abcd...`, always lowercase (cargo asks `mi/xe/mixedcase` for `MixedCase`);
  one JSON line per version (`name`, `vers`, `cksum`, ...);
- `/NAME/files/<scheme>/<host[:port]>/<path>` -> a download (a `.crate`), on the
  upstream's own host or one of its `file_hosts` (`static.crates.io`).

`config.json` is answered with its `dl` rewritten to go through cachesrv (the markers
cargo fills in kept, `api` dropped: nothing is published through the cache). Cargo
builds a download URL from `dl` (RFC 2789): with none of the markers `{crate}`,
`{version}`, `{prefix}`, `{lowerprefix}`, `{sha256-checksum}` it appends
`/{crate}/{version}/download`; otherwise it substitutes them, `{prefix}` being the index
directory with the name's case kept (`Mi/xe`) and `{crate}` the name as published. An
index file declares `cksum`, the sha256 of each version's `.crate`, so a download is
verified before it is recorded; offline, an index file lists only the versions whose
`.crate` is stored, so cargo resolves to what exists.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..config import UpstreamConfig
from ..errors import Forbidden
from ..models import ArtifactKind
from .kind import Declared, Doc, FileRef, View, load_json, no_declared_hash, plain_request
from .urls import canonical_escapes, file_url

encoded_slash = False
declared_hash = no_declared_hash
upstream_request = plain_request

CONFIG = "config.json"
MARKERS = ("{crate}", "{version}", "{prefix}", "{lowerprefix}", "{sha256-checksum}")
# Index file names as the index serves them: lowercase crate names (crates.io allows
# ASCII letters, digits, `-` and `_`).
_NAME = re.compile(r"[a-z0-9_-]+")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


def prefix(name: str) -> str:
    """Cargo's `{prefix}` of a crate name, case kept: `1`, `2`, `3/a`, `se/rd`."""
    if not name:
        raise ValueError("empty crate name")
    if len(name) <= 2:
        return str(len(name))
    if len(name) == 3:
        return f"3/{name[0]}"
    return f"{name[:2]}/{name[2:4]}"


def index_path(name: str) -> str:
    """The index file of crate `name` under the registry root (lowercase)."""
    lower = name.lower()
    return f"{prefix(lower)}/{lower}"


def crate_of(path: str) -> str | None:
    """The crate whose index file `path` (under the upstream) is, or None if `path` is
    not a canonical index path."""
    name = path.rsplit("/", 1)[-1]
    if not _NAME.fullmatch(name) or path != index_path(name):
        return None
    return name


def key_url(upstream: UpstreamConfig, path: str) -> str:
    """The canonical URL for a path under a cargo upstream (see module doc)."""
    if path == CONFIG or crate_of(path) is not None:
        return f"{upstream.base}/{path}"
    if path.startswith("files/"):
        return file_url(upstream, path[len("files/") :])
    raise Forbidden(
        f"a cargo upstream serves /{upstream.name}/config.json, index files "
        f"(/{upstream.name}/3/f/foo, lowercase) and /{upstream.name}/files/ only"
    )


def artifact_kind(path: str) -> ArtifactKind:
    """`config.json` and index files change; a download never does, whatever the shape
    of the registry's `dl` (the `files/` form, or a file host's own path when a client
    reaches it as a proxy)."""
    if path.startswith("files/"):
        return ArtifactKind.IMMUTABLE
    if path == CONFIG or crate_of(path) is not None:
        return ArtifactKind.MUTABLE
    return ArtifactKind.IMMUTABLE


# -- download URLs ------------------------------------------------------------------


def download_template(dl: str) -> str:
    """`dl` as a template: cargo appends `/{crate}/{version}/download` to one without
    markers. (A trailing `/` is dropped first: cargo would ask `...//crate/...`, an
    empty path segment cachesrv refuses; servers treat both alike.)"""
    if any(marker in dl for marker in MARKERS):
        return dl
    return dl.rstrip("/") + "/{crate}/{version}/download"


def expand(template: str, name: str, version: str, cksum: str) -> str:
    """A download URL, as cargo fills in a template (markers in cargo's order)."""
    pre = prefix(name)
    return (
        template.replace("{crate}", name)
        .replace("{version}", version)
        .replace("{prefix}", pre)
        .replace("{lowerprefix}", pre.lower())
        .replace("{sha256-checksum}", cksum)
    )


def _split(url: str) -> tuple[str, str, str]:
    """`scheme`, `netloc` (lowercase) and the rest (`/path?query`, may be empty) of an
    absolute http(s) URL or template; ValueError otherwise."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    netloc, slash, tail = rest.partition("/")
    if not sep or scheme not in ("http", "https") or not netloc or "{" in netloc:
        raise ValueError(f"dl is not an http(s) URL: {url[:200]!r}")
    return scheme, netloc.lower(), slash + tail


def download_key(url: str) -> str:
    """The cache key of a download URL: what `/NAME/files/<scheme>/<host>/<path>` of the
    rewritten `dl` maps to (`urls.file_url`, escapes made canonical as the router does)."""
    scheme, netloc, rest = _split(url)
    return f"{scheme}://{netloc}{canonical_escapes(rest)}"


def through_cache(template: str, served: str) -> str:
    """The template, pointed at cachesrv: `<served>files/<scheme>/<host><path>`."""
    scheme, netloc, rest = _split(template)
    return f"{served}files/{scheme}/{netloc}{rest}"


# -- documents ----------------------------------------------------------------------


def parse_config(body: bytes) -> dict[str, Any]:
    """A registry's `config.json`; ValueError if it is not an object with a usable `dl`."""
    doc = load_json(body)
    if not isinstance(doc, dict) or not isinstance(doc.get("dl"), str):
        raise ValueError("config.json must be an object with a string 'dl'")
    _split(doc["dl"])
    return doc


@dataclass(frozen=True)
class IndexLine:
    """One line of an index file: what the download URL and its check need."""

    line: bytes  # the line as the index sent it, without its newline
    name: str
    vers: str
    cksum: str


def parse_index(body: bytes) -> list[IndexLine]:
    """Every version an index file lists (blank lines skipped); ValueError for a line
    that is not a JSON object with string `name`, `vers` and a sha256 `cksum`."""
    found = []
    for number, line in enumerate(body.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            entry = load_json(line)
        except ValueError:
            raise ValueError(f"index line {number} is not JSON") from None
        if not isinstance(entry, dict):
            raise ValueError(f"index line {number} is not a JSON object")
        name, vers, cksum = entry.get("name"), entry.get("vers"), entry.get("cksum")
        if not isinstance(name, str) or not name or not isinstance(vers, str) or not vers:
            raise ValueError(f"index line {number} lacks a string 'name' and 'vers'")
        if not isinstance(cksum, str) or not _SHA256.fullmatch(cksum):
            raise ValueError(f"index line {number} ({name} {vers}): 'cksum' is not a sha256")
        found.append(IndexLine(line, name, vers, cksum.lower()))
    return found


class _Registry:
    """`config.json` and index files as index documents (`kind.Documents`): one format
    each; an index file needs the registry's `config.json` (its companion) to know where
    each version's `.crate` is."""

    def formats(self, upstream: UpstreamConfig, url: str, accept: str | None) -> list[Doc]:
        root = upstream.base + "/"
        if not url.startswith(root):
            return []  # a download on a file host (proxy form)
        rest = url[len(root) :]
        if rest == CONFIG:
            return [Doc(url=url, key=url, format="config")]
        if crate_of(rest) is not None:
            return [Doc(url=url, key=url, format="index")]
        return []

    def companions(self, upstream: UpstreamConfig, doc: Doc) -> tuple[str, ...]:
        return (f"{upstream.base}/{CONFIG}",) if doc.format == "index" else ()

    def files(
        self, upstream: UpstreamConfig, doc: Doc, body: bytes, companions: Mapping[str, bytes]
    ) -> list[FileRef]:
        if doc.format != "index":
            return []
        template = self._template(upstream, companions)
        return [
            FileRef(
                download_key(expand(template, v.name, v.vers, v.cksum)),
                Declared("sha256", v.cksum),
            )
            for v in parse_index(body)
        ]

    def declared_by(self, upstream: UpstreamConfig, url: str) -> str | None:
        return None

    def inventory(self, upstream: UpstreamConfig, doc: Doc) -> str | None:
        return None

    def render(self, upstream: UpstreamConfig, doc: Doc, body: bytes | None, view: View) -> bytes:
        assert body is not None
        if doc.format == "config":
            config = parse_config(body)
            if view.served is None:
                return body  # proxy form: the client reaches the upstream's own URLs
            config["dl"] = through_cache(download_template(config["dl"]), view.served)
            config.pop("api", None)
            return json.dumps(config).encode()
        if view.stored is None:
            return body  # online: as the registry sent it (files() has read it already)
        template = self._template(upstream, view.companions)
        kept = [
            v.line + b"\n"
            for v in parse_index(body)
            if download_key(expand(template, v.name, v.vers, v.cksum)) in view.stored
        ]
        return b"".join(kept)

    @staticmethod
    def _template(upstream: UpstreamConfig, companions: Mapping[str, bytes]) -> str:
        config = companions.get(f"{upstream.base}/{CONFIG}")
        if config is None:
            raise ValueError(
                f"the registry's {CONFIG} is not recorded: an index file's downloads "
                "cannot be located without it"
            )
        return download_template(parse_config(config)["dl"])


documents = _Registry()
