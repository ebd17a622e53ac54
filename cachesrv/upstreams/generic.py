"""Plain tarball and file hosts (`kind = "generic"`)."""

from __future__ import annotations

from ..models import ArtifactKind

IMMUTABLE_SUFFIXES = (
    ".deb",
    ".udeb",
    ".dsc",
    ".whl",
    ".zip",
    ".snap",
    ".tgz",
    ".tbz2",
    ".txz",
    ".gem",
    ".jar",
    ".crate",
    ".metadata",
)


def artifact_kind(path: str) -> ArtifactKind:
    """Archives (`.tar.*`, `.whl`, `.zip`, `.snap`, ...) never change; anything else may."""
    name = path.split("?", 1)[0].rsplit("/", 1)[-1].lower()
    if ".tar." in name or name.endswith(".tar") or name.endswith(IMMUTABLE_SUFFIXES):
        return ArtifactKind.IMMUTABLE
    return ArtifactKind.MUTABLE
