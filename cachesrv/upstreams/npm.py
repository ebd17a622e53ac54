"""npm registry rules (`kind = "npm"`): keys, packuments in two formats, tarball links.

URLs under an npm upstream named NAME (what `registry=http://cache:3142/NAME/` makes
npm ask):
- `/NAME/<name>` and, scoped, `/NAME/@scope%2Fname` (npm sends `%2f`; `@scope/name`
  is the same document): the packument, keyed `<registry>/<name>` with a scoped name
  spelled `@scope%2Fname`;
- `/NAME/<name>/-/<file>.tgz`, scoped `/NAME/@scope/name/-/<file>.tgz`: a tarball,
  keyed by its registry URL (the `dist.tarball` npm would fetch); immutable;
- `/NAME/files/<scheme>/<host[:port]>/<path>`: a tarball the registry keeps on another
  host (the registry's own or one of `file_hosts`), keyed by that URL;
- anything else (`/NAME/<name>/<version>`, `/NAME/-/v1/search?...`) passes through,
  keyed by its registry URL, revalidated while online.

A packument comes in two formats, each recorded as its own entry: the full document
(`Accept: application/json`, what `npm install` asks) under its URL, and the
abbreviated "corgi" one (`application/vnd.npm.install-v1+json`, what npm asks to
install from a lockfile without `resolved`) under its URL plus `ABBREVIATED_QUERY`,
which is fetched by `Accept`, never by query. Either format satisfies a client
that prefers the other once offline: both carry what an install needs.

Each version's `dist.tarball` is rewritten to go through cachesrv (absolute: npm
wants absolute tarball URLs), with the address and `/@seed/` prefix the client used;
a proxy-form client keeps the registry's URLs. `dist.integrity` (else `dist.shasum`)
is the hash a tarball is verified against before it is recorded. Offline, only
versions whose tarball is stored are listed; `latest` moves to a stored version.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urljoin, urlsplit

from ..config import UpstreamConfig
from ..models import ArtifactKind
from . import generic
from .kind import Declared, Doc, FileRef, View, load_json, no_declared_hash
from .urls import canonical_escapes, file_url

encoded_slash = True
declared_hash = no_declared_hash

FULL_TYPE = "application/json"
ABBREVIATED_TYPE = "application/vnd.npm.install-v1+json"
#: The format mark of an abbreviated packument's key (the Accept type, as pypi's keys
#: name theirs); a client asking this URL asks the abbreviated document.
ABBREVIATED_QUERY = "?format=" + ABBREVIATED_TYPE
#: What npm itself sends for an abbreviated packument (a registry without corgi
#: support answers the full document, which serves as well).
ABBREVIATED_ACCEPT = f"{ABBREVIATED_TYPE}; q=1.0, {FULL_TYPE}; q=0.8, */*"

# `@scope%2Fname` or `@scope/name`, optionally followed by more path.
_SCOPED = re.compile(r"(@[^/%]+)(?:%2F|/)([^/]+)(/.*)?", re.S)
# SRI algorithms npm (ssri) knows, strongest first.
_SRI_ALGORITHMS = ("sha512", "sha384", "sha256", "sha1")
_SHA1_HEX = re.compile(r"[0-9a-fA-F]{40}")
_DEFAULT_PORTS = {"http": ":80", "https": ":443"}


# -- keys ---------------------------------------------------------------------------


def canonical_path(plain: str) -> str:
    """A path under the registry (no query) as keys spell it: a scoped packument
    `@scope%2Fname`, anything below a scoped name `@scope/name/...` (how `dist.tarball`
    spells tarballs); everything else as it is."""
    m = _SCOPED.fullmatch(plain)
    if m is None or "%2F" in m.group(2):
        return plain
    scope, name, tail = m.groups()
    return f"{scope}/{name}{tail}" if tail else f"{scope}%2F{name}"


def key_url(upstream: UpstreamConfig, path: str) -> str:
    """The canonical URL for a path under an npm upstream (see module doc)."""
    if path.startswith("files/"):
        return file_url(upstream, path[len("files/") :])
    plain, sep, query = path.partition("?")
    return f"{upstream.base}/{canonical_path(plain)}{sep}{query}"


def packument_name(rest: str) -> str | None:
    """The package name, spelled as in keys (`@scope%2Fname`), if the path under the
    registry (no query) is a packument; else None."""
    if rest.startswith("@"):
        m = _SCOPED.fullmatch(rest)
        if m is None or m.group(3) or "%2F" in m.group(2):
            return None
        return f"{m.group(1)}%2F{m.group(2)}"
    if not rest or "/" in rest or "%2F" in rest or rest in (".", ".."):
        return None
    return rest


def packument_url(upstream: UpstreamConfig, url: str) -> tuple[str, bool] | None:
    """For the key of a packument (either spelling, either format): its canonical URL
    and whether the key names the abbreviated format; None for any other key."""
    base = upstream.base + "/"
    if not url.startswith(base):
        return None
    rest = url[len(base) :]
    abbreviated = rest.endswith(ABBREVIATED_QUERY)
    if abbreviated:
        rest = rest[: -len(ABBREVIATED_QUERY)]
    if "?" in rest:
        return None  # other queries (`?write=true`) pass through as they are
    name = packument_name(rest)
    return (base + name, abbreviated) if name is not None else None


def artifact_kind(path: str) -> ArtifactKind:
    """Tarballs never change (`.tgz`, on the registry or a file host); packuments and
    every other answer may."""
    plain = path.split("?", 1)[0]
    if packument_name(plain) is not None:
        return ArtifactKind.MUTABLE  # even a package named `x.tgz`
    return generic.artifact_kind(plain)


def upstream_request(url: str) -> tuple[str, dict[str, str]]:
    """An abbreviated packument is asked by `Accept` (its key's query is cachesrv's
    own); other JSON answers with `Accept: application/json`, archives as they are."""
    if url.endswith(ABBREVIATED_QUERY):
        return url[: -len(ABBREVIATED_QUERY)], {"Accept": ABBREVIATED_ACCEPT}
    if generic.artifact_kind(urlsplit(url).path) is ArtifactKind.IMMUTABLE:
        return url, {}
    return url, {"Accept": FULL_TYPE}


def tarball_key(upstream: UpstreamConfig, url: str) -> str | None:
    """The cache key of a tarball URL a packument lists, as the router makes it from
    the request npm sends for it (through cachesrv or as a proxy); None for a URL on a
    host the upstream does not allow."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.netloc or "@" in parts.netloc:
        return None
    netloc = parts.netloc.lower().removesuffix(_DEFAULT_PORTS[scheme])
    path = canonical_escapes(parts.path or "/")
    query = canonical_escapes("?" + parts.query) if parts.query else ""
    # The registry matches whatever the scheme, as the router does (host names ignore
    # case, paths do not).
    host, slash, base_path = upstream.base.split("://", 1)[-1].partition("/")
    prefix = host.lower() + slash + base_path
    where = netloc + path
    if where.startswith(prefix + "/"):
        return f"{upstream.base}/{canonical_path(where[len(prefix) + 1 :])}{query}"
    if upstream.allows_host(netloc):
        return f"{scheme}://{netloc}{path}{query}"
    return None


def served_url(upstream: UpstreamConfig, key: str, served: str) -> str:
    """The URL through cachesrv of a tarball key, under `served` (`View.served`)."""
    base = upstream.base + "/"
    if key.startswith(base):
        return served + key[len(base) :]
    scheme, _, rest = key.partition("://")
    return f"{served}files/{scheme}/{rest}"


# -- declared hashes ----------------------------------------------------------------


def declared(dist: Mapping[str, Any]) -> Declared | None:
    """The hash `dist` declares for the tarball: the strongest of `integrity` (an SRI
    string, several hashes possible), else `shasum` (sha1 hex)."""
    integrity = dist.get("integrity")
    if isinstance(integrity, str):
        found: dict[str, str] = {}
        for token in integrity.split():
            algorithm, sep, value = token.partition("-")
            algorithm = algorithm.lower()
            if not sep or algorithm not in _SRI_ALGORITHMS or algorithm in found:
                continue
            try:
                raw = base64.b64decode(value.split("?", 1)[0], validate=True)
            except (binascii.Error, ValueError):
                continue
            if len(raw) == hashlib.new(algorithm).digest_size:
                found[algorithm] = raw.hex()
        for algorithm in _SRI_ALGORITHMS:
            if algorithm in found:
                return Declared(algorithm, found[algorithm])
    shasum = dist.get("shasum")
    if isinstance(shasum, str) and _SHA1_HEX.fullmatch(shasum):
        return Declared("sha1", shasum.lower())
    return None


# -- semver -------------------------------------------------------------------------

_SEMVER = re.compile(
    r"v?(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?(?:\+[0-9A-Za-z.-]+)?"
)

#: A sort key; a version that is not semver sorts below every one that is.
SemverKey = tuple[int, int, int, int, int, tuple[tuple[int, int, str], ...]]


def semver_key(version: str) -> SemverKey:
    """Semver 2.0 precedence: numbers compare numerically, a prerelease is lower than
    its release, prerelease identifiers compare numerically when numeric (and lower
    than alphanumeric ones), a longer list wins a tie; build metadata is ignored."""
    m = _SEMVER.fullmatch(version.strip())
    if m is None:
        return (0, 0, 0, 0, 0, ())
    major, minor, patch, pre = m.groups()
    ids = tuple(
        (0, int(p), "") if p.isdigit() else (1, 0, p) for p in (pre.split(".") if pre else ())
    )
    return (1, int(major), int(minor), int(patch), 0 if pre else 1, ids)


def is_prerelease(version: str) -> bool:
    key = semver_key(version)
    return key[0] == 1 and key[4] == 0


def newest(versions: list[str], not_above: str | None = None) -> str:
    """The version `latest` moves to when its own is not stored: the newest release no
    higher than the old `latest`, else the newest release, else the newest version."""
    pool = [v for v in versions if not is_prerelease(v)] or list(versions)
    if not_above is not None and semver_key(not_above)[0]:
        below = [v for v in pool if semver_key(v) <= semver_key(not_above)]
        pool = below or pool
    return max(pool, key=semver_key)


# -- packuments ---------------------------------------------------------------------


def load_packument(body: bytes) -> dict[str, Any]:
    """A packument, checked for the shapes used here; ValueError if it is not one."""
    doc = load_json(body)
    if not isinstance(doc, dict):
        raise ValueError("not an npm packument (not a JSON object)")
    versions = doc.get("versions")
    if versions is None and isinstance(doc.get("time"), dict) and "unpublished" in doc["time"]:
        return doc  # an unpublished package: npm reports it from `time.unpublished`
    if not isinstance(versions, dict):
        raise ValueError("not an npm packument (versions must be an object)")
    for version, manifest in versions.items():
        if not isinstance(manifest, dict):
            raise ValueError(f"malformed packument: version {version[:50]!r} is not an object")
    return doc


def _tarball(manifest: Mapping[str, Any]) -> tuple[dict[str, Any], str] | None:
    dist = manifest.get("dist")
    if isinstance(dist, dict) and isinstance(dist.get("tarball"), str):
        return dist, dist["tarball"]
    return None


def render_packument(body: bytes, url: str, upstream: UpstreamConfig, view: View) -> bytes:
    """The packument for one client (see module doc); the recorded bytes themselves
    when nothing changes (a proxy-form client, online)."""
    doc = load_packument(body)
    versions: dict[str, Any] = doc.get("versions") or {}
    stored = view.stored
    kept: dict[str, Any] = {}
    changed = False
    for version, manifest in versions.items():
        found = _tarball(manifest)
        key = tarball_key(upstream, urljoin(url, found[1])) if found else None
        if stored is not None and (key is None or key not in stored):
            changed = True
            continue
        if found is not None and key is not None and view.served is not None:
            local = served_url(upstream, key, view.served)
            if local != found[1]:
                found[0]["tarball"] = local
                changed = True
        kept[version] = manifest
    if stored is not None and "versions" in doc:
        changed = _retag(doc, kept) or changed
    if not changed:
        return body
    doc["versions"] = kept
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def _retag(doc: dict[str, Any], kept: Mapping[str, Any]) -> bool:
    """Offline: dist-tags only name listed versions, and `latest` exists while any
    version does (npm resolves `npm install pkg` through it); `time` lists no dropped
    version. Another tag whose version is gone is dropped, not moved: `pkg@next`
    failing is better than it installing what `next` never meant. Whether anything
    changed."""
    tags = doc.get("dist-tags")
    old: dict[str, Any] = tags if isinstance(tags, dict) else {}
    new = {t: v for t, v in old.items() if isinstance(v, str) and v in kept}
    if kept and "latest" not in new:
        latest = old.get("latest")
        new["latest"] = newest(list(kept), latest if isinstance(latest, str) else None)
    changed = new != old
    if changed:
        doc["dist-tags"] = new
    times = doc.get("time")
    dropped = set(doc["versions"]) - set(kept)
    if isinstance(times, dict) and dropped & set(times):
        doc["time"] = {k: v for k, v in times.items() if k not in dropped}
        changed = True
    return changed


# -- the Documents rules ------------------------------------------------------------


def prefers_abbreviated(accept: str | None) -> bool:
    """Whether `Accept` names the abbreviated type with q > 0 and at least the q of
    `application/json` (npm's lockfile installs); wildcards alone get the full one."""
    q_abbreviated = q_full = 0.0
    for part in (accept or "").split(","):
        fields = [f.strip() for f in part.split(";")]
        media, q = fields[0].lower(), 1.0
        for param in fields[1:]:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if media == ABBREVIATED_TYPE:
            q_abbreviated = max(q_abbreviated, q)
        elif media == FULL_TYPE:
            q_full = max(q_full, q)
    return q_abbreviated > 0 and q_abbreviated >= q_full


class _Packuments:
    """Packuments as index documents (`kind.Documents`): the full and the abbreviated
    document are two formats, each recorded as its own entry."""

    def formats(self, upstream: UpstreamConfig, url: str, accept: str | None) -> list[Doc]:
        found = packument_url(upstream, url)
        if found is None:
            return []
        canonical, marked = found
        full = Doc(url=canonical, key=canonical, format="full")
        abbreviated = Doc(url=canonical, key=canonical + ABBREVIATED_QUERY, format="abbreviated")
        if marked or prefers_abbreviated(accept):
            return [abbreviated, full]
        return [full, abbreviated]

    def companions(self, upstream: UpstreamConfig, doc: Doc) -> tuple[str, ...]:
        return ()

    def files(
        self, upstream: UpstreamConfig, doc: Doc, body: bytes, companions: Mapping[str, bytes]
    ) -> list[FileRef]:
        versions: dict[str, Any] = load_packument(body).get("versions") or {}
        refs = []
        for manifest in versions.values():
            found = _tarball(manifest)
            key = tarball_key(upstream, urljoin(doc.url, found[1])) if found else None
            if found is not None and key is not None:
                refs.append(FileRef(key, declared(found[0])))
        return refs

    def declared_by(self, upstream: UpstreamConfig, url: str) -> str | None:
        """A registry tarball's packument, abbreviated (smaller, and it declares the
        same `dist.integrity`)."""
        base = upstream.base + "/"
        if not url.startswith(base):
            return None
        name, sep, _ = url[len(base) :].partition("/-/")
        if not sep:
            return None
        packument = packument_name(canonical_path(name))
        return base + packument + ABBREVIATED_QUERY if packument else None

    def inventory(self, upstream: UpstreamConfig, doc: Doc) -> str | None:
        return None

    def render(self, upstream: UpstreamConfig, doc: Doc, body: bytes | None, view: View) -> bytes:
        assert body is not None
        return render_packument(body, doc.url, upstream, view)


documents = _Packuments()
