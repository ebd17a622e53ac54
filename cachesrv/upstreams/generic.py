"""Plain tarball and file hosts (`kind = "generic"`): archives never change.

Also the defaults other kinds take where they have no rule of their own.
"""

from __future__ import annotations

from ..models import ArtifactKind
from .kind import Documents, base_key_url, no_declared_hash, plain_request

documents: Documents | None = None
encoded_slash = False
key_url = base_key_url
declared_hash = no_declared_hash
upstream_request = plain_request

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
