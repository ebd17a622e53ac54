"""Upstream kinds: what is immutable, what hash an upstream declares, how to route.

One module per kind (`apt`, `pypi`, `snap`, `generic`) holds the kind's rules;
`git` holds git smart HTTP's, on any host; `router` maps a request target to an
upstream and a canonical cache key.
"""

from __future__ import annotations

import re

from ..models import ArtifactKind
from . import apt, generic, git, pypi, snap

_VERSIONED = re.compile(r"^(.+?[-_])\d")


def artifact_kind(upstream_kind: str, path: str) -> ArtifactKind:
    """Immutable or mutable, by the upstream's kind and the path under it."""
    if upstream_kind == "apt":
        return apt.artifact_kind(path)
    return generic.artifact_kind(path)


def declared_sha256(upstream_kind: str, path: str) -> str | None:
    """The sha256 the URL itself declares (apt `by-hash/SHA256/<hex>`), if any."""
    if upstream_kind == "apt":
        return apt.declared_sha256(path)
    return None


def upstream_request(upstream_kind: str, url: str) -> tuple[str, dict[str, str]]:
    """The URL to fetch for a cache key and the extra headers to send."""
    if git.is_key(url):
        return git.upstream_request(url)
    if upstream_kind == "pypi":
        return pypi.upstream_request(url)
    if upstream_kind == "snap":
        return snap.upstream_request(url)
    return url, {}


def package_prefix(filename: str) -> str | None:
    """The `name_` or `name-` prefix shared by other versions of the same package.

    `hello_1.0_all.deb` -> `hello_`; `six-1.16.0-py2.py3-none-any.whl` -> `six-`.
    """
    m = _VERSIONED.match(filename)
    return m.group(1) if m else None
