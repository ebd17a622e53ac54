"""Snap assertions as snapd reads them (`canonical/snapd` `asserts/asserts.go`).

The text format is headers (`name: value` lines), a blank line, an optional body of
`body-length` bytes and a blank line, then the signature; `format` (default 0) says
which features an assertion uses, and a client states the highest it supports per type
with `?max-format=N` (`asserts.MaxSupportedFormats`; `store/store_asserts.go`). A stream
(`asserts.Encoder`, what `snap download` writes to `.assert`) separates assertions by
one extra newline. Assertions name a sha3-384 as unpadded base64url
(`asserts.EncodeDigest`), where the refresh answer gives hex.
"""

from __future__ import annotations

import base64
import binascii
from urllib.parse import parse_qsl, urlsplit

from ..errors import BadRequest

ASSERTIONS_PREFIX = "v2/assertions/"
ASSERTION = "application/x.ubuntu.assertion"
#: What snapd itself asks for (`asserts.MaxSupportedFormats`, asserts/asserts.go).
MAX_FORMATS = {"snap-declaration": 5, "account-key": 1}


def assertion_path(kind: str, *primary_key: str) -> str:
    """Path of an assertion under the upstream, with the max-format snapd sends."""
    key = "/".join(primary_key)
    return f"{ASSERTIONS_PREFIX}{kind}/{key}?max-format={MAX_FORMATS.get(kind, 0)}"


def max_format(url: str) -> int:
    value = dict(parse_qsl(urlsplit(url).query)).get("max-format", "0")
    return int(value) if value.isdecimal() else 0  # not isdigit: int("²") fails


def assertion_headers(text: bytes) -> dict[str, str]:
    """The top-level `name: value` headers of one assertion (asserts.go `Decode`);
    multi-line values (indented continuation lines) are not needed here."""
    head = text.split(b"\n\n", 1)[0].decode("utf-8", "replace")
    out: dict[str, str] = {}
    for line in head.split("\n"):
        if line[:1] in (" ", "") or ":" not in line:
            continue
        name, _, value = line.partition(":")
        out[name] = value.strip()
    return out


def assertion_format(text: bytes) -> int:
    value = assertion_headers(text).get("format", "0")
    return int(value) if value.isdecimal() else 0  # not isdigit: int("²") fails


def encode_digest(hexdigest: str) -> str:
    """The sha3-384 as assertions name it (asserts.EncodeDigest: unpadded base64url)."""
    try:
        raw = binascii.unhexlify(hexdigest)
    except (binascii.Error, ValueError):
        raise BadRequest(f"not a hex digest: {hexdigest!r}") from None
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def encode_stream(assertions: list[bytes]) -> bytes:
    """Assertions as one stream (asserts.go `Encoder`): each ends with a newline, and
    one more newline separates it from the next."""
    parts = [a if a.endswith(b"\n") else a + b"\n" for a in assertions]
    return b"\n".join(parts)
