"""Debian/Ubuntu archive rules (`kind = "apt"`)."""

from __future__ import annotations

import re

from ..models import ArtifactKind

_BY_HASH_SHA256 = re.compile(r"/by-hash/SHA256/([0-9a-fA-F]{64})$")
_IMMUTABLE_SUFFIXES = (".deb", ".udeb", ".ddeb", ".dsc", ".diff.gz", ".buildinfo", ".changes")


def artifact_kind(path: str) -> ArtifactKind:
    """`pool/**`, `by-hash/**` and package files never change; indices do."""
    p = "/" + path.lstrip("/")
    name = p.rsplit("/", 1)[-1]
    if (
        p.startswith("/pool/")
        or "/pool/" in p
        or "/by-hash/" in p
        or name.endswith(_IMMUTABLE_SUFFIXES)
        or ".tar." in name
    ):
        return ArtifactKind.IMMUTABLE
    return ArtifactKind.MUTABLE


def declared_sha256(path: str) -> str | None:
    """apt's `Acquire-By-Hash` URLs name the sha256 of their body."""
    m = _BY_HASH_SHA256.search(path)
    return m.group(1).lower() if m else None
