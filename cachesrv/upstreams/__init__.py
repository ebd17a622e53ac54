"""Upstream kinds: what is immutable, what hash an upstream declares, how to route.

One module per kind holds all the kind's rules behind the `kind.Kind` protocol, and
`KINDS` below registers them: the one table that names the kinds. `git` holds git
smart HTTP's rules, on any generic host; `router` maps a request target to an upstream
and a canonical cache key.
"""

from __future__ import annotations

import re

from ..config import UpstreamConfig
from ..models import ArtifactKind
from . import apt, cargo, generic, git, goproxy, npm, pypi, snap
from .kind import Declared, Kind

#: Every upstream kind, by the name `[upstreams.NAME] kind` takes.
KINDS: dict[str, Kind] = {
    "apt": apt,
    "pypi": pypi,
    "snap": snap,
    "generic": generic,
    "npm": npm,
    "goproxy": goproxy,
    "cargo": cargo,
}

_VERSIONED = re.compile(r"^(.+?[-_])\d")


def kind_of(upstream: UpstreamConfig) -> Kind:
    """The rules of an upstream's kind (config checked the name)."""
    return KINDS[upstream.kind]


def artifact_kind(upstream: UpstreamConfig, path: str) -> ArtifactKind:
    """Immutable or mutable, by the upstream's kind and the path under it."""
    return kind_of(upstream).artifact_kind(path)


def declared_hash(upstream: UpstreamConfig, path: str) -> Declared | None:
    """The hash the URL itself declares (apt `by-hash/SHA256/<hex>`), if any."""
    return kind_of(upstream).declared_hash(path)


def upstream_request(upstream: UpstreamConfig, url: str) -> tuple[str, dict[str, str]]:
    """The URL to fetch for a cache key and the extra headers to send."""
    if git.is_key(url):
        return git.upstream_request(url)
    return kind_of(upstream).upstream_request(url)


def package_prefix(filename: str) -> str | None:
    """The `name_` or `name-` prefix shared by other versions of the same package.

    `hello_1.0_all.deb` -> `hello_`; `six-1.16.0-py2.py3-none-any.whl` -> `six-`.
    """
    m = _VERSIONED.match(filename)
    return m.group(1) if m else None
