"""URL canonicalisation shared by the router and the index-page parsers."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import unquote

from ..config import UpstreamConfig
from ..errors import BadRequest, Forbidden

_PCT = re.compile(r"%([0-9a-fA-F]{2})")
# Characters a path may carry unescaped (RFC 3986 pchar less '%'): an escape of one of
# these means the same URL, so `%3A` from pip and `:` from the index page share a key.
_PCHAR = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@")
# In a query they may also be its delimiters: `a=1%262` is one field, `a=1&2` two.
_QUERY_CHAR = _PCHAR - set("&=+;")


def canonical_escapes(path: str) -> str:
    """Decode needless percent-escapes and upper-case the rest (RFC 3986 6.2.2). In a
    query (after the first `?`), escapes of its delimiters `& = + ;` stay escapes."""

    def one(m: re.Match[str], keep: set[str]) -> str:
        ch = chr(int(m.group(1), 16))
        return ch if ch in keep else "%" + m.group(1).upper()

    plain, sep, query = path.partition("?")
    return (
        _PCT.sub(lambda m: one(m, _PCHAR), plain)
        + sep
        + _PCT.sub(lambda m: one(m, _QUERY_CHAR), query)
    )


def decode(text: str) -> str:
    """Every percent-escape decoded (for checks, never for keys)."""
    return _PCT.sub(lambda m: chr(int(m.group(1), 16)), text)


_NETLOC = re.compile(
    r"(?P<host>[a-z0-9.-]+|\[[0-9a-f:.]+\])(?::(?P<port>[1-9][0-9]{0,4}))?",
    re.IGNORECASE | re.ASCII,
)


def is_netloc(netloc: str) -> bool:
    """Whether `netloc` is exactly `host` or `host:port` (a name or IPv4 address, or an
    IPv6 one in brackets; a port 1-65535). Anything else (`#`, `?`, `@`, `/`, a second
    `:`) makes a URL reach another host than its text seems to name, or none."""
    m = _NETLOC.fullmatch(netloc)
    if m is None or (m["port"] is not None and int(m["port"]) > 65535):
        return False
    if m["host"].startswith("["):
        try:
            ipaddress.IPv6Address(m["host"][1:-1])
        except ValueError:
            return False
    return True


def file_url(upstream: UpstreamConfig, rest: str) -> str:
    """`<scheme>/<host[:port]>/<path>` (what follows `/NAME/files/`) -> the URL, which
    must be on the upstream's own host or one of its `file_hosts`."""
    parts = rest.split("/", 2)
    if len(parts) != 3 or parts[0] not in ("http", "https") or not parts[2]:
        raise BadRequest(f"file URLs look like /{upstream.name}/files/<scheme>/<host>/<path>")
    scheme, netloc, path = parts
    netloc = unquote(netloc)
    if not is_netloc(netloc):
        # `evil.example#.cdn.example` matches `*.cdn.example`, and reaches evil.example.
        raise BadRequest(f"invalid host in file URL: {netloc[:100]!r}")
    if not upstream.allows_host(netloc):
        raise Forbidden(
            f"{netloc} is not a file host of upstream {upstream.name!r}; add it to "
            f"[upstreams.{upstream.name}] file_hosts"
        )
    return f"{scheme}://{netloc}/{path}"


_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
MAX_HOST = 253


def connect_authority(target: str) -> tuple[str, int]:
    """The `host` and `port` of a `CONNECT host:port` request target, checked strictly.

    Host names are LDH labels (lower-cased); IPv4 only in its canonical dotted form
    (`127.1`, `0x7f.0.0.1` and `2130706433` are refused, as their meaning differs
    between resolvers); IPv6 in brackets. The port is required, decimal, 1-65535.
    """
    if len(target) > MAX_HOST + 8:
        raise BadRequest(f"CONNECT target longer than {MAX_HOST + 8} characters")
    host, sep, port_text = target.rpartition(":")
    if not sep or not host:
        raise BadRequest(f"CONNECT needs host:port, not {target[:100]!r}")
    if not port_text.isdigit() or not port_text.isascii() or len(port_text) > 5:
        raise BadRequest(f"CONNECT port must be a number, not {port_text[:20]!r}")
    port = int(port_text)
    if not 0 < port < 65536 or port_text != str(port):
        raise BadRequest(f"CONNECT port out of range or not canonical: {port_text!r}")
    if host.startswith("["):
        if not host.endswith("]"):
            raise BadRequest(f"CONNECT host {host[:100]!r}: unbalanced brackets")
        try:
            addr6 = ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise BadRequest(f"CONNECT host {host[:100]!r} is not an IPv6 address") from None
        return f"[{addr6.compressed}]", port
    host = host.lower()
    if len(host) > MAX_HOST:
        raise BadRequest(f"CONNECT host name longer than {MAX_HOST} characters")
    labels = host.split(".")
    if (
        all(label.isdigit() for label in labels)
        or re.fullmatch(r"[0-9a-fx.]+", host)
        and (labels[-1].isdigit() or labels[-1].startswith("0x"))
    ):
        try:
            addr4 = ipaddress.IPv4Address(host)
        except ValueError:
            addr4 = None
        if addr4 is None or str(addr4) != host:
            raise BadRequest(
                f"CONNECT host {host[:100]!r} is not a canonical IPv4 address (a.b.c.d)"
            )
        return host, port
    if not all(_LABEL.fullmatch(label) for label in labels):
        raise BadRequest(f"CONNECT host {host[:100]!r} is not a valid host name")
    return host, port
