"""The one protocol every upstream kind implements, and what its index documents need.

Each module of `upstreams/` named after a kind (`apt`, `pypi`, `snap`, `generic`, `npm`,
`goproxy`, `cargo`) *is* a `Kind`: it defines the functions and attributes below at
module level, and `upstreams/__init__.py` registers it in `KINDS`. Nothing else in the
server tests a kind's name: routing, fetching, verifying, rewriting and offline
filtering all ask the kind through this protocol. Adding a kind is a module and a line
in the table (plus its default upstream in `config.py`, if it has one).

A kind whose upstream serves index documents (pages listing files with their hashes:
PyPI project pages, npm packuments, Go version lists, Cargo index files) gives
`documents`, a `Documents`; `sources/documents.py` does the rest for every kind alike:
records each format of a document as its own entry, remembers the hashes it declares
for its files (so a download is verified before it is recorded), answers a rewritten
copy whose links go through cachesrv and, offline, lists only files whose bodies are
stored, so a client resolves to what exists.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..config import UpstreamConfig
from ..models import ArtifactKind


@dataclass(frozen=True)
class Declared:
    """A hash an upstream declares for a body, by hashlib name (`sha256`, `sha512`, ...)."""

    algorithm: str
    hexdigest: str


@dataclass(frozen=True)
class Doc:
    """One format of an index document, as one client asks for it."""

    #: The document's URL as the client asked it (what a miss lists and prefetch takes).
    url: str
    #: The cache key this format is recorded under (`url`, or `url` plus a format mark).
    key: str
    #: The kind's name for the format (`html`, `json`, `full`, `abbreviated`, ...).
    format: str
    #: The answer's Content-Type; None: the recorded one.
    content_type: str | None = None
    #: Offline, with no format recorded, `render` may make the document from what is
    #: stored (`inventory`) rather than miss (a Go version list).
    synthetic: bool = False


@dataclass(frozen=True)
class FileRef:
    """A file an index document lists: its cache key and the hash declared for it."""

    key: str
    declared: Declared | None = None


@dataclass(frozen=True)
class View:
    """What rendering a document for one client needs besides the recorded body."""

    #: The upstream's root as this client reaches it through cachesrv, ending in "/"
    #: (`http://cache:3142/@seed/npm/`), or None for a proxy-form request (the
    #: client reaches the upstream's own URLs through the proxy).
    served: str | None
    #: The upstream's root relative to the document (`../../`), for relative links.
    up: str
    #: Offline: which of the document's files (and `inventory` keys) are stored; None
    #: online, where everything is listed.
    stored: frozenset[str] | None = None
    #: The bodies of the document's `companions` that are recorded, by key.
    companions: Mapping[str, bytes] = field(default_factory=dict)


class NothingStored(LookupError):
    """Raised by `Documents.render` for a `synthetic` format with nothing stored to make
    it from: the answer is then the usual offline miss (logged, explained)."""


class Documents(Protocol):
    """The index-document rules of a kind (see module doc)."""

    def formats(self, upstream: UpstreamConfig, url: str, accept: str | None) -> list[Doc]:
        """The formats of the document at key `url`, the client's preferred first (by its
        `Accept`); [] if `url` is not an index document."""
        ...

    def companions(self, upstream: UpstreamConfig, doc: Doc) -> tuple[str, ...]:
        """Keys of other documents whose bodies `files` and `render` need (Cargo's
        `config.json`), read from the store or fetched first."""
        ...

    def files(
        self, upstream: UpstreamConfig, doc: Doc, body: bytes, companions: Mapping[str, bytes]
    ) -> list[FileRef]:
        """Every file the document lists, with the hash it declares. Raises ValueError
        for a document it cannot read."""
        ...

    def declared_by(self, upstream: UpstreamConfig, url: str) -> str | None:
        """The key of the document that declares the hash of the file at key `url`
        (an npm tarball's packument), or None. Online, a file asked for before any
        document declared its hash (a lockfile install) has that document fetched
        first, so the file is verified before it is recorded."""
        ...

    def inventory(self, upstream: UpstreamConfig, doc: Doc) -> str | None:
        """A key prefix whose stored keys `render` must know offline (a Go module's
        `@v/`), or None."""
        ...

    def render(self, upstream: UpstreamConfig, doc: Doc, body: bytes | None, view: View) -> bytes:
        """The document for the client: links through cachesrv and, offline, only what
        is stored. `body` is None only for a `synthetic` format (`NothingStored` if
        nothing is stored to make it from). Raises ValueError for a document it cannot
        read."""
        ...


class Kind(Protocol):
    """An upstream kind's rules (see module doc); each `upstreams/<kind>.py` is one."""

    @property
    def documents(self) -> Documents | None:
        """The kind's index documents, if its upstream serves any."""
        ...

    @property
    def encoded_slash(self) -> bool:
        """Whether its paths may carry `%2F` (npm's `@scope%2Fname`); others refuse it."""
        ...

    def key_url(self, upstream: UpstreamConfig, path: str) -> str:
        """The cache key (canonical upstream URL) of `/<upstream>/<path>`. `path` is
        checked already (no traversal, canonical escapes)."""
        ...

    def artifact_kind(self, path: str) -> ArtifactKind:
        """Whether the body at `path` (under the upstream) can ever change."""
        ...

    def declared_hash(self, path: str) -> Declared | None:
        """A hash the URL itself declares for its body (apt's `by-hash/SHA256/<hex>`)."""
        ...

    def upstream_request(self, url: str) -> tuple[str, dict[str, str]]:
        """The URL to GET for a key, and the headers to send with it."""
        ...


def load_json(data: bytes | str) -> Any:
    """`json.loads` whose every failure is a ValueError, as `Documents` promises: a
    document nested deeper than Python's recursion limit raises RecursionError there."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def base_key_url(upstream: UpstreamConfig, path: str) -> str:
    """The usual key: the path under the upstream's URL."""
    return f"{upstream.base}/{path}" if path else upstream.base + "/"


def no_declared_hash(path: str) -> Declared | None:
    """For kinds whose URLs declare nothing."""
    return None


def plain_request(url: str) -> tuple[str, dict[str, str]]:
    """For kinds that fetch a key as it is, with no extra headers."""
    return url, {}
