"""The request target the router reads, for clients that use cachesrv as their HTTP proxy.

`cachesrv wrap` points `http_proxy` and apt's `Acquire::http::Proxy` at the server, so
two kinds of request reach it that the URL alone would get wrong:

- A proxy-form request for one of the server's own URLs: pip's `PIP_INDEX_URL` names
  the server while `http_proxy` names it too, so pip sends
  `GET http://127.0.0.1:3142/@b1/pypi/simple/six/`. That is the origin-form request
  `/@b1/pypi/simple/six/` (apt-cacher-ng treats requests to itself the same way).
  Matched against the address the connection arrived on, so it needs no configuration.
- Proxy credentials `seed:NAME`. A proxy URL carries no path, so a `/@NAME/` prefix
  cannot reach the server through apt's or curl's proxy setting; the user part can:
  `http://seed:NAME@host:3142/` makes apt, pip, uv, curl and wget send
  `Proxy-Authorization: Basic base64("seed:NAME")` with every proxy request. One that
  names no seed in its path is then routed into seed NAME (`/@NAME/...`), with the same
  meaning: recorded in the seed, and in strict offline mode served only from it.
  Other credentials are ignored: cachesrv does no proxy authentication.
- Requests inside a `CONNECT` tunnel (connect.py): origin-form `/path` on the tunnel's
  connection, meaning `https://host[:port]/path`, in the seed the CONNECT named.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import hdrs, web

from ..errors import BadRequest

_SEED_USER = "seed"
_SEED_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


@dataclass(frozen=True)
class Tunnel:
    """Where a CONNECT tunnel leads, and the seed its proxy credentials named."""

    host: str
    port: int
    seed: str | None = None

    @property
    def origin(self) -> str:
        """`https://host` (`https://host:port` for a port other than 443)."""
        return f"https://{self.host}" if self.port == 443 else f"https://{self.host}:{self.port}"


def request_target(
    request: web.BaseRequest, tunnels: Mapping[web.RequestHandler, Tunnel] | None = None
) -> str:
    """The target to resolve: `raw_path`, made origin-form when it names this server,
    and given the seed of the proxy credentials when its path names none; inside a
    tunnel, the `https://` URL it names."""
    target = request.raw_path
    tunnel = tunnels.get(request.protocol) if tunnels else None
    if tunnel is not None:
        if not target.startswith("/"):
            raise BadRequest("inside a CONNECT tunnel, requests name a path (origin form)")
        target = tunnel.origin + target
        return target if tunnel.seed is None else with_seed(target, tunnel.seed)
    if target.startswith("/"):
        return target  # a direct request (proxy credentials come with proxy requests)
    target = _own_origin_form(request, target)
    credentials = request.headers.get(hdrs.PROXY_AUTHORIZATION)
    seed = seed_of(credentials) if credentials is not None else None
    return target if seed is None else with_seed(target, seed)


def seed_of(credentials: str) -> str | None:
    """NAME from `Basic base64("seed:NAME")`; None for any other credentials."""
    scheme, _, token = credentials.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, name = decoded.partition(":")
    if user != _SEED_USER or not sep:
        return None
    if not _SEED_NAME.fullmatch(name):
        raise BadRequest(f"invalid seed name in the proxy credentials: {name[:100]!r}")
    return name


def with_seed(target: str, seed: str) -> str:
    """`target` routed into `seed`, unless its path already names a seed (that wins)."""
    if target.startswith("/@"):
        return target
    if target.startswith("/"):
        return f"/@{seed}{target}"
    scheme, _, rest = target.partition("://")
    host = rest.split("/", 1)[0]
    if host.upper() == "HTTPS":  # http://HTTPS///host/path
        return f"/@{seed}/HTTPS{rest[len(host) :]}"
    return f"/@{seed}/{scheme}://{rest}"


def names_this_server(request: web.BaseRequest, target: str) -> bool:
    """Whether an absolute-form target names the address the request arrived on."""
    return _own_origin_form(request, target) != target


def _own_origin_form(request: web.BaseRequest, target: str) -> str:
    scheme, sep, rest = target.partition("://")
    if not sep or scheme.lower() != "http":
        return target
    netloc, _, path = rest.partition("/")
    transport = request.transport
    sockname = transport.get_extra_info("sockname") if transport is not None else None
    if not isinstance(sockname, tuple) or len(sockname) < 2:
        return target
    if netloc.lower() in _names_of(str(sockname[0]), int(sockname[1])):
        return "/" + path
    return target


def _names_of(host: str, port: int) -> set[str]:
    """How a client may spell the address a connection arrived on."""
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return set()
    hosts = {f"[{addr}]" if addr.version == 6 else str(addr)}
    if addr.is_loopback:
        hosts.add("localhost")
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        hosts.add(str(addr.ipv4_mapped))
    names = {f"{h}:{port}" for h in hosts}
    if port == 80:
        names |= hosts
    return names
