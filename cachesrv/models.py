"""Value objects shared by every layer. All immutable."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, order=True)
class Digest:
    """A blake3-256 digest, as 64 lowercase hex characters."""

    hex: str

    def __post_init__(self) -> None:
        if not _HEX64.fullmatch(self.hex):
            raise ValueError(f"not a blake3-256 hex digest: {self.hex!r}")

    def __str__(self) -> str:
        return self.hex

    @property
    def fanout(self) -> str:
        """The two-character directory a blob lives in."""
        return self.hex[:2]


class ArtifactKind(enum.Enum):
    """Whether a cached URL can ever change upstream.

    Immutable artifacts are served from the store once recorded without asking
    upstream; mutable metadata is revalidated while online.
    """

    IMMUTABLE = "immutable"
    MUTABLE = "mutable"


class Mode(enum.Enum):
    ONLINE = "online"
    OFFLINE = "offline"


@dataclass(frozen=True)
class CacheKey:
    """The canonical upstream URL of an artifact, and the upstream it belongs to.

    `url` is the cache key: the same artifact reached by path, by absolute-form
    proxy request or by apt-cacher-ng's `http://HTTPS///` form has one key.
    """

    upstream: str
    url: str

    def __str__(self) -> str:
        return self.url

    @property
    def directory(self) -> str:
        return self.url.rsplit("/", 1)[0] + "/"

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class BlobInfo:
    """What the store knows of a committed blob."""

    digest: Digest
    size: int
    sha256: str


@dataclass(frozen=True)
class Entry:
    """One recorded URL: its key, the blob holding its body and the headers to replay."""

    key: CacheKey
    digest: Digest
    size: int
    sha256: str
    kind: ArtifactKind
    content_type: str = "application/octet-stream"
    etag: str | None = None
    last_modified: str | None = None
    recorded: float = 0.0
    validated: float = 0.0
    seeds: tuple[str, ...] = field(default=())


class MissReason(enum.Enum):
    """Why an offline request could not be answered."""

    NEVER_RECORDED = "never recorded"
    NOT_IN_SEED = "not in the requested seed"
    QUARANTINED = "blob quarantined (failed verification)"
    BLOB_MISSING = "blob missing from the store"


@dataclass(frozen=True)
class Diagnosis:
    """Everything a person needs to fix an offline miss."""

    key: CacheKey
    reason: MissReason
    seed: str | None
    nearest: tuple[str, ...]
    fixes: tuple[str, ...]
    #: What else may explain the failure (an apt Release file past its Valid-Until).
    notes: tuple[str, ...] = ()

    def as_text(self) -> str:
        lines = [
            "Not in offline seed",
            f"url:    {self.key.url}",
            f"key:    {self.key.url} (upstream {self.key.upstream})",
            f"reason: {self.reason.value}" + (f" (seed {self.seed!r})" if self.seed else ""),
        ]
        lines.extend(f"note:   {n}" for n in self.notes)
        if self.nearest:
            lines.append("nearest recorded entries:")
            lines.extend(f"  {u}" for u in self.nearest)
        else:
            lines.append("nearest recorded entries: none")
        lines.append("to fix:")
        lines.extend(f"  {c}" for c in self.fixes)
        return "\n".join(lines) + "\n"

    def as_json(self) -> dict[str, object]:
        return {
            "error": "Not in offline seed",
            "url": self.key.url,
            "key": self.key.url,
            "upstream": self.key.upstream,
            "reason": self.reason.name.lower(),
            "reason_text": self.reason.value,
            "seed": self.seed,
            "nearest": list(self.nearest),
            "fix": list(self.fixes),
            "notes": list(self.notes),
        }
