"""Debian/Ubuntu archive rules (`kind = "apt"`): what never changes, the hashes URLs
declare, and the dates of Release files (apt refuses one past its `Valid-Until`)."""

from __future__ import annotations

import datetime as dt
import email.utils
import re
from dataclasses import dataclass

from ..models import ArtifactKind
from .kind import Declared, Documents, base_key_url, plain_request

documents: Documents | None = None
encoded_slash = False
key_url = base_key_url
upstream_request = plain_request

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


def declared_hash(path: str) -> Declared | None:
    """apt's `Acquire-By-Hash` URLs name the sha256 of their body."""
    m = _BY_HASH_SHA256.search(path)
    return Declared("sha256", m.group(1).lower()) if m else None


# -- Release files and their dates ---------------------------------------------------

#: What makes apt accept a recorded `Release` past its `Valid-Until`, and a machine clock
#: behind the archive's: `Check-Date "false"` turns off every time check of apt
#: (sources.list(5)), `Check-Valid-Until "false"` names the one that fails offline.
OFFLINE_SETTINGS = ('Acquire::Check-Valid-Until "false";', 'Acquire::Check-Date "false";')
#: The file names of an archive's signed index of indices.
RELEASE_NAMES = ("InRelease", "Release")
#: Enough of a Release file for its header (the hash lists follow it).
RELEASE_HEAD_BYTES = 16384

_DATE_FIELD = re.compile(rb"^(Date|Valid-Until):[ \t]*(.+?)[ \t]*$")


@dataclass(frozen=True)
class ReleaseDates:
    """The `Date` and `Valid-Until` of a Release file, as epoch seconds (None if absent)."""

    date: float | None = None
    valid_until: float | None = None

    def expired(self, now: float) -> bool:
        return self.valid_until is not None and self.valid_until < now


def release_dates(body: bytes) -> ReleaseDates:
    """Read `Date` and `Valid-Until` from a `Release` or clearsigned `InRelease` body
    (or its first `RELEASE_HEAD_BYTES`). Dates are RFC 2822 as apt writes them
    (`Sat, 01 Jun 2024 12:00:00 UTC`, or `+0000`); an unreadable one counts as absent."""
    found: dict[bytes, float | None] = {}
    for line in body.splitlines():
        if line.startswith(b"-----BEGIN PGP SIGNATURE"):
            break
        if line[:1] in (b" ", b"\t") and found:
            break  # the hash lists: the header is over
        m = _DATE_FIELD.match(line)
        if m and m.group(1) not in found:
            found[m.group(1)] = parse_date(m.group(2).decode("ascii", "replace"))
    return ReleaseDates(date=found.get(b"Date"), valid_until=found.get(b"Valid-Until"))


def parse_date(text: str) -> float | None:
    """An RFC 2822 date as apt writes it -> epoch seconds; None if unreadable."""
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # `-0000` and unknown zone names: apt's dates are UTC
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def suite_dir(path: str) -> str | None:
    """`dists/<suite>/` for a path under an archive's `dists/` (its indices), else None."""
    m = _SUITE.match(path.lstrip("/"))
    return m.group(0) if m else None


def is_release(path: str) -> bool:
    """Whether `path` is a suite's `InRelease` or `Release` (not one under by-hash)."""
    parts = path.strip("/").split("/")
    return (
        len(parts) >= 3
        and parts[0] == "dists"
        and parts[-1] in RELEASE_NAMES
        and ("by-hash" not in parts)
    )


_SUITE = re.compile(r"dists/[^/]+/")
