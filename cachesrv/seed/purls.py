"""Package URLs (purl-spec) of recorded artifacts: the rules of `cachesrv seed sbom`.

An artifact is an immutable body that is a package or a file a build used; mutable
metadata, apt's `by-hash/` copies of indices, PEP 658 `.metadata` files and git answers
are not (`is_artifact`). `purl_of` names an artifact by its upstream's kind and its file
name, or by what a recorded index says it is (`Identity`, found by `sbom.identities`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from packageurl import PackageURL

from ..models import ArtifactKind, Entry
from ..upstreams import git
from ..upstreams.pypi import normalize

_DEB_VERSION = r"[0-9][A-Za-z0-9.+~:-]*"
_DEB_NAME = r"[a-z0-9][a-z0-9+.-]+"
_DEB = re.compile(rf"({_DEB_NAME})_({_DEB_VERSION})_([a-z0-9-]+)\.(?:deb|udeb|ddeb)")
_DEB_SOURCE = re.compile(
    rf"({_DEB_NAME})_({_DEB_VERSION}?)"
    r"(?:\.dsc|\.debian\.tar\.\w+|\.orig(?:-[a-z0-9-]+)?\.tar\.\w+(?:\.asc)?|\.diff\.gz|\.tar\.\w+)"
)
_SDIST_SUFFIXES = (".tar.gz", ".tar.bz2", ".tar.xz", ".tgz", ".zip", ".tar")
_NPM = re.compile(r"/(?:(@[^/]+)/)?([^/@][^/]*)/-/([^/]+)\.tgz")
_GO = re.compile(r"/(.+)/@v/(v[^/]+)\.zip")


@dataclass(frozen=True)
class Identity:
    """What a recorded index says a file is (`known` in `purl_of`)."""

    name: str
    version: str
    arch: str | None = None
    #: The sha3-384 the snap store declared for a snap (checked when it was recorded).
    sha3_384: str | None = None


# -- what an entry is ----------------------------------------------------------------


def is_artifact(entry: Entry) -> bool:
    """Immutable bodies that are packages or files, not metadata about them."""
    url = entry.key.url
    path = urlsplit(url).path
    return (
        entry.kind is ArtifactKind.IMMUTABLE
        and not git.is_key(url)
        and "/by-hash/" not in path
        and not path.endswith(".metadata")
        and not path.endswith("/")
    )


def purl_of(
    entry: Entry, upstream_kind: str | None, known: Identity | None = None
) -> PackageURL | None:
    """The package URL of an artifact, or None for an entry that is not one.

    `upstream_kind` is the kind of the entry's upstream (None when this store's config
    does not name it: the URL decides then); `known` is what a recorded index says the
    file is. Rules: apt files are `pkg:deb/<debian|ubuntu>/NAME@VERSION?arch=ARCH`
    (source files `arch=source`), pypi files `pkg:pypi/NAME@VERSION?file_name=FILE` (the
    PEP 503 name; `file_name` tells a release's wheels and sdist apart), snaps
    `pkg:generic/NAME@REVISION?download_url=URL`, npm, cargo and Go module archives their
    own types; anything else `pkg:generic/FILE?download_url=URL`.
    """
    if not is_artifact(entry):
        return None
    url = entry.key.url
    parts = urlsplit(url)
    filename = unquote(parts.path.rsplit("/", 1)[-1])
    kind = upstream_kind or _guess_kind(parts.netloc, parts.path)
    found: PackageURL | None = None
    if kind == "apt" or (kind == "generic" and "/pool/" in parts.path):
        found = _deb(entry, filename, known)
    elif kind == "pypi":
        found = _pypi(filename)
    elif kind == "snap" and known is not None:
        found = PackageURL("generic", None, known.name, known.version, {"download_url": url})
    if found is None and kind in ("npm", "generic"):
        found = _npm(parts.path)
    if found is None and kind in ("cargo", "generic"):
        found = _crate(parts.path, filename)
    if found is None and kind in ("goproxy", "generic"):
        found = _go(parts.path)
    return found or PackageURL(
        "generic", None, filename or parts.netloc, None, {"download_url": url}
    )


def _guess_kind(host: str, path: str) -> str:
    """For upstreams this config does not name (another site's, `_intercept`)."""
    if host == "files.pythonhosted.org" or path.endswith(".whl"):
        return "pypi"
    if "/pool/" in path and re.search(r"\.(?:deb|udeb|ddeb|dsc)$", path):
        return "apt"
    if path.endswith(".snap"):
        return "snap"
    return "generic"


def _distro(entry: Entry) -> str:
    where = f"{entry.key.upstream} {entry.key.url}".lower()
    return "ubuntu" if "ubuntu" in where else "debian"


def _deb(entry: Entry, filename: str, known: Identity | None) -> PackageURL | None:
    if m := _DEB.fullmatch(filename):
        name, version, arch = m[1], m[2], m[3]
    elif m := _DEB_SOURCE.fullmatch(filename):
        name, version, arch = m[1], m[2], "source"
    elif known is None:
        return None
    else:
        arch = "source"
    if known is not None:
        name, version, arch = known.name, known.version, known.arch or arch
    qualifiers = {"arch": arch}
    if arch == "source":  # the .dsc and its tarballs share name and version
        qualifiers["file_name"] = filename
    return PackageURL("deb", _distro(entry), name, version, qualifiers)


def _pypi(filename: str) -> PackageURL | None:
    if filename.endswith(".whl"):
        fields = filename[: -len(".whl")].split("-")
        if len(fields) not in (5, 6):
            return None
        name, version = fields[0], fields[1]
    else:
        suffix = next((s for s in _SDIST_SUFFIXES if filename.lower().endswith(s)), None)
        if suffix is None:
            return None
        name, _, version = filename[: -len(suffix)].rpartition("-")
        if not name or not version[:1].isdigit():
            return None
    return PackageURL("pypi", None, normalize(name), version, {"file_name": filename})


def _npm(path: str) -> PackageURL | None:
    m = _NPM.search(unquote(path))
    if not m or not m[3].startswith(m[2] + "-"):
        return None
    return PackageURL("npm", m[1], m[2], m[3][len(m[2]) + 1 :])


def _crate(path: str, filename: str) -> PackageURL | None:
    if not filename.endswith(".crate"):
        return None
    name = path.rstrip("/").split("/")[-2] if path.count("/") >= 2 else ""
    stem = filename[: -len(".crate")]
    if not name or not stem.startswith(name + "-"):
        return None
    return PackageURL("cargo", None, name, stem[len(name) + 1 :])


def _go(path: str) -> PackageURL | None:
    m = _GO.search(path)
    if not m:
        return None
    # The module proxy protocol escapes upper case letters as `!` + lower case.
    module = re.sub(r"!([a-z])", lambda c: c[1].upper(), unquote(m[1]))
    namespace, _, name = module.rpartition("/")
    return PackageURL("golang", namespace or None, name, m[2])


def role_of(purl: PackageURL) -> str:
    """CycloneDX component type (SPDX primary purpose): a named snap (the only generic
    purl with a version) is an application, another generic purl a file, any package of
    an ecosystem a library."""
    if purl.type == "generic":
        return "application" if purl.version else "file"
    return "library"
