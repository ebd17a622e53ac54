"""URL canonicalisation shared by the router and the index-page parsers."""

from __future__ import annotations

import re

_PCT = re.compile(r"%([0-9a-fA-F]{2})")
# Characters a path may carry unescaped (RFC 3986 pchar less '%'): an escape of one of
# these means the same URL, so `%3A` from pip and `:` from the index page share a key.
_PCHAR = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@")


def canonical_escapes(path: str) -> str:
    """Decode needless percent-escapes and upper-case the rest (RFC 3986 6.2.2)."""

    def one(m: re.Match[str]) -> str:
        ch = chr(int(m.group(1), 16))
        return ch if ch in _PCHAR else "%" + m.group(1).upper()

    return _PCT.sub(one, path)


def decode(text: str) -> str:
    """Every percent-escape decoded (for checks, never for keys)."""
    return _PCT.sub(lambda m: chr(int(m.group(1), 16)), text)
