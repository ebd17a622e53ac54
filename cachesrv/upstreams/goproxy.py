"""Go module proxy rules (`kind = "goproxy"`): the GOPROXY protocol and its sumdb proxying.

URLs under a goproxy upstream named NAME (default https://proxy.golang.org, served at
`/goproxy/`), as `go help goproxy` describes them:
- `/NAME/<module>/@v/list` (text, one version a line) and `/NAME/<module>/@latest`
  (the `.info` JSON of the newest version): index documents, they change;
- `/NAME/<module>/@v/<version>.info|.mod|.zip`: never change for a canonical version
  (proxy.golang.org serves a version's `.info` once and for all); the `.info` of a
  query that is not a version (`@v/master.info`) changes;
- `/NAME/sumdb/<db>/supported`, `/lookup/<module>@<version>` and `/latest` change (a
  lookup carries the newest signed tree head); `/NAME/sumdb/<db>/tile/...` never does.

Module paths and versions stay case-encoded as go sends them (`example.test/!upper`,
every upper-case letter as `!` and its lower case): the key is the URL as sent, and
go never sends the same artifact in two spellings.

Online, the documents are answered as recorded: nothing declares hashes (go checks
modules against go.sum and the checksum database itself). Offline:
- `list` names only versions whose `.zip` is stored, and is made from the store when
  it was never recorded, so `go get mod@latest` resolves to what exists;
- `@latest` is the recorded one if its version's `.zip` is stored, else the newest
  stored version (a release before any pre-release; pseudo-versions are pre-releases),
  made from the store when never recorded;
- `sumdb/<db>/supported` is answered 200 even when never recorded, so go sends its
  checksum lookups through cachesrv (answered or explained as misses) rather than to
  the database's own host, which an air-gapped build cannot reach;
- with nothing stored to make a document from, the answer is the usual miss
  (404 `Not in offline seed`, text/plain: go prints the body).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping

from ..config import UpstreamConfig
from ..models import ArtifactKind
from .kind import (
    Doc,
    FileRef,
    NothingStored,
    View,
    base_key_url,
    load_json,
    no_declared_hash,
    plain_request,
)

encoded_slash = False
key_url = base_key_url
declared_hash = no_declared_hash
upstream_request = plain_request

TEXT = "text/plain; charset=utf-8"
JSON = "application/json"

_SEMVER = re.compile(
    r"v(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)(?:\.(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*))*))?"
    r"(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?"
)
# golang.org/x/mod/module.IsPseudoVersion: a pre-release ending in a 14-digit UTC time
# and a 12-hex-digit revision (vX.0.0-yyyymmddhhmmss-abcdef123456, vX.Y.Z-pre.0.yyyy...,
# vX.Y.(Z+1)-0.yyyy...).
_PSEUDO = re.compile(
    r"v[0-9]+\.(0\.0-|\d+\.\d+-([^+]*\.)?0\.)(\d{14})-[A-Za-z0-9]+(\+[0-9A-Za-z-.]+)?"
)
_SUMDB = re.compile(r"sumdb/([^/]+(?:/[^/]+)*?)/(supported|latest|lookup/.+|tile/.+)")
_MODULE_FILE = re.compile(r"(.+)/@v/([^/]+)\.(info|mod|zip)")

#: A Go semantic version's sort key: (major, minor, patch, is release, pre-release ids).
SemverKey = tuple[int, int, int, int, tuple[tuple[int, int, str], ...]]


# -- versions --------------------------------------------------------------------------


def semver_key(version: str) -> SemverKey | None:
    """The order of golang.org/x/mod/semver for a canonical version (`v1.2.3`,
    `v1.2.3-rc.1`, `v2.0.0+incompatible`); None if `version` is not one. Build metadata
    (`+incompatible`) does not count; a release follows its pre-releases; pre-release
    identifiers compare numerically when numeric, numeric before alphanumeric."""
    m = _SEMVER.fullmatch(version)
    if m is None:
        return None
    pre = m.group(4)
    idents = tuple(
        (0, int(p), "") if p.isdigit() else (1, 0, p) for p in (pre.split(".") if pre else ())
    )
    return int(m.group(1)), int(m.group(2)), int(m.group(3)), 0 if pre else 1, idents


def is_pseudo(version: str) -> bool:
    """Whether `version` is a pseudo-version (`v0.0.0-20240102030405-abcdefabcdef`)."""
    return semver_key(version) is not None and _PSEUDO.fullmatch(version) is not None


def newest(versions: Iterable[str]) -> str | None:
    """What a proxy's `@latest` names among `versions`: the highest release, else the
    highest pre-release (pseudo-versions included); None if none is a version."""
    best: tuple[int, SemverKey, str] | None = None
    for v in versions:
        key = semver_key(v)
        if key is None:
            continue
        rank = (key[3], key, v)  # any release before any pre-release
        if best is None or rank > best:
            best = rank
    return best[2] if best else None


def unescape(escaped: str) -> str | None:
    """Undo the case encoding of module paths and versions (`!r!c1` -> `RC1`); None if
    `escaped` is not a valid encoding."""
    out: list[str] = []
    bang = False
    for c in escaped:
        if bang:
            if not "a" <= c <= "z":
                return None
            out.append(c.upper())
            bang = False
        elif c == "!":
            bang = True
        elif "A" <= c <= "Z":
            return None
        else:
            out.append(c)
    return None if bang else "".join(out)


def escape(text: str) -> str:
    """The case encoding go uses in proxy URLs: `RC1` -> `!r!c1`."""
    return "".join("!" + c.lower() if "A" <= c <= "Z" else c for c in text)


# -- immutability ----------------------------------------------------------------------


def artifact_kind(path: str) -> ArtifactKind:
    """A version's `.info`, `.mod` and `.zip`, and sumdb tiles never change; version
    lists, `@latest`, queries that are not versions and sumdb lookups do."""
    path = path.split("?", 1)[0]
    sumdb = _SUMDB.fullmatch(path)
    if sumdb is not None:
        tile = sumdb.group(2).startswith("tile/")
        return ArtifactKind.IMMUTABLE if tile else ArtifactKind.MUTABLE
    m = _MODULE_FILE.fullmatch(path)
    if m is not None:
        version = unescape(m.group(2))
        if version is not None and semver_key(version) is not None:
            return ArtifactKind.IMMUTABLE
    return ArtifactKind.MUTABLE


# -- the Documents rules -------------------------------------------------------------


def _under(upstream: UpstreamConfig, url: str) -> str | None:
    base = upstream.base + "/"
    return url[len(base) :] if url.startswith(base) else None


def _module_of(upstream: UpstreamConfig, url: str) -> str | None:
    """The (escaped) module path of a `list` or `@latest` URL."""
    rest = _under(upstream, url)
    for suffix in ("/@v/list", "/@latest"):
        if rest and rest.endswith(suffix) and len(rest) > len(suffix):
            return rest[: -len(suffix)]
    return None


def stored_versions(upstream: UpstreamConfig, module: str, stored: Iterable[str]) -> list[str]:
    """The versions of `module` (escaped) whose `.zip` is among the `stored` keys, in
    semver order, as go spells them (case-decoded)."""
    prefix = f"{upstream.base}/{module}/@v/"
    found = set()
    for key in stored:
        if not key.startswith(prefix) or not key.endswith(".zip"):
            continue
        version = unescape(key[len(prefix) : -len(".zip")])
        if version is not None and "/" not in version and semver_key(version) is not None:
            found.add(version)
    return sorted(found, key=lambda v: (semver_key(v), v))


def _zip_key(upstream: UpstreamConfig, module: str, version: str) -> str:
    return f"{upstream.base}/{module}/@v/{escape(version)}.zip"


def render_list(
    upstream: UpstreamConfig, module: str, body: bytes | None, stored: frozenset[str]
) -> bytes:
    """An offline `@v/list`: the recorded lines whose version's zip is stored, with
    every other stored version, in semver order. NothingStored if it was never recorded
    and nothing is stored (a miss, not an empty list)."""
    versions = stored_versions(upstream, module, stored)
    if body is None and not versions:
        raise NothingStored(f"no version of {module} is stored")
    lines: dict[str, str] = {}
    for line in (body or b"").decode("utf-8").splitlines():
        fields = line.split()
        # The recorded line is kept as it is (a proxy may add a timestamp).
        if fields and _zip_key(upstream, module, fields[0]) in stored:
            lines.setdefault(fields[0], line.strip())
    text = "".join(lines.get(v, v) + "\n" for v in versions)
    return text.encode()


def parse_latest(body: bytes) -> dict[str, object]:
    """A `@latest` (or `.info`) JSON object; ValueError if it is not one with a
    `Version` string."""
    doc = load_json(body)
    if not isinstance(doc, dict) or not isinstance(doc.get("Version"), str):
        raise ValueError("not a Go module version info (a JSON object with a Version)")
    return doc


def pseudo_time(version: str) -> str | None:
    """The commit time a pseudo-version carries, RFC 3339 (what its `.info` says)."""
    m = _PSEUDO.fullmatch(version)
    if m is None or semver_key(version) is None:
        return None
    t = m.group(3)
    return f"{t[0:4]}-{t[4:6]}-{t[6:8]}T{t[8:10]}:{t[10:12]}:{t[12:14]}Z"


def render_latest(
    upstream: UpstreamConfig, module: str, body: bytes | None, stored: frozenset[str]
) -> bytes:
    """An offline `@latest`: the recorded one if its zip is stored, else the newest
    stored version (`{"Version": v}`, with the time a pseudo-version carries), else the
    recorded one as it is (go then misses on its `.zip`, explained). NothingStored if it
    was never recorded and nothing is stored."""
    if body is not None:
        version = str(parse_latest(body)["Version"])
        if _zip_key(upstream, module, version) in stored:
            return body
    best = newest(stored_versions(upstream, module, stored))
    if best is None:
        if body is None:
            raise NothingStored(f"no version of {module} is stored")
        return body
    info: dict[str, str] = {"Version": best}
    when = pseudo_time(best)
    if when is not None:
        info["Time"] = when
    return json.dumps(info).encode()


class _Documents:
    """`@v/list`, `@latest` and `sumdb/<db>/supported` as index documents
    (`kind.Documents`): one format each, made from the store offline when not recorded."""

    def formats(self, upstream: UpstreamConfig, url: str, accept: str | None) -> list[Doc]:
        rest = _under(upstream, url)
        if rest is None:
            return []
        if rest.endswith("/@v/list") and _module_of(upstream, url):
            return [Doc(url=url, key=url, format="list", content_type=TEXT, synthetic=True)]
        if rest.endswith("/@latest") and _module_of(upstream, url):
            return [Doc(url=url, key=url, format="latest", content_type=JSON, synthetic=True)]
        sumdb = _SUMDB.fullmatch(rest)
        if sumdb is not None and sumdb.group(2) == "supported":
            return [Doc(url=url, key=url, format="supported", content_type=TEXT, synthetic=True)]
        return []

    def companions(self, upstream: UpstreamConfig, doc: Doc) -> tuple[str, ...]:
        return ()

    def files(
        self, upstream: UpstreamConfig, doc: Doc, body: bytes, companions: Mapping[str, bytes]
    ) -> list[FileRef]:
        # Nothing is declared: go verifies against go.sum and the checksum database.
        return []

    def declared_by(self, upstream: UpstreamConfig, url: str) -> str | None:
        return None

    def inventory(self, upstream: UpstreamConfig, doc: Doc) -> str | None:
        module = _module_of(upstream, doc.url)
        return f"{upstream.base}/{module}/@v/" if module else None

    def render(self, upstream: UpstreamConfig, doc: Doc, body: bytes | None, view: View) -> bytes:
        if doc.format == "supported":
            # Offline, always: lookups through cachesrv are answered or explained.
            return body if body is not None else b""
        if doc.format == "latest" and body is not None:
            parse_latest(body)  # a broken @latest is an upstream error, online too
        if view.stored is None:
            if body is None:
                raise NothingStored(f"{doc.url} was not recorded")
            return body
        module = _module_of(upstream, doc.url)
        assert module is not None
        if doc.format == "list":
            return render_list(upstream, module, body, view.stored)
        return render_latest(upstream, module, body, view.stored)


documents = _Documents()
