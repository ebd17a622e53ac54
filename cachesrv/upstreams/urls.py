"""URL canonicalisation shared by the router and the index-page parsers."""

from __future__ import annotations

import re
from urllib.parse import unquote

from ..config import UpstreamConfig
from ..errors import BadRequest, Forbidden

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


def file_url(upstream: UpstreamConfig, rest: str) -> str:
    """`<scheme>/<host[:port]>/<path>` (what follows `/NAME/files/`) -> the URL, which
    must be on the upstream's own host or one of its `file_hosts`."""
    parts = rest.split("/", 2)
    if len(parts) != 3 or parts[0] not in ("http", "https") or not parts[2]:
        raise BadRequest(f"file URLs look like /{upstream.name}/files/<scheme>/<host>/<path>")
    scheme, netloc, path = parts
    netloc = unquote(netloc)
    if not upstream.allows_host(netloc):
        raise Forbidden(
            f"{netloc} is not a file host of upstream {upstream.name!r}; add it to "
            f"[upstreams.{upstream.name}] file_hosts"
        )
    return f"{scheme}://{netloc}/{path}"
