"""Map a request target to an upstream and its canonical cache key.

Three spellings reach one key (SPEC "URLs"):
- origin form `/<upstream>/<path>` (what `deb http://host:3142/debian ...` sends),
- absolute form `http://deb.debian.org/debian/<path>` (apt's `Acquire::http::Proxy`),
- apt-cacher-ng's `http://HTTPS///deb.debian.org/debian/<path>` (also as a path,
  `/HTTPS///host/path`), for an `https://` upstream.
An optional `/@<seed>/` prefix names the seed the entry is recorded in.

Matching an absolute URL to an upstream ignores the scheme: `http://` and
`https://` of the same host and path are the same artifact. Anything that is not
under a configured upstream (or one of its `file_hosts`, or a `tls.intercept` host)
is refused: cachesrv is never an open proxy. A private server started by `cachesrv
wrap` (`tls.any_host`) records whatever host its build reaches.

Hosts outside the upstreams (`tls.intercept`, any host) share one synthetic generic
upstream, `INTERCEPT`, whose key is the URL as asked (`https://host[:port]/path`).
The same policy says which `CONNECT host:port` tunnels are terminated
(`allows_connect`).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass

from ..config import TlsConfig, UpstreamConfig
from ..errors import BadRequest, Forbidden
from ..models import CacheKey
from . import kind_of
from .urls import canonical_escapes, decode, is_netloc

#: The upstream name of hosts that are reached through `tls.intercept` (or, for a
#: private wrap server, any host). Config names cannot start with "_".
INTERCEPT = "_intercept"
_SEED = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_CTL = re.compile(r"[\x00-\x20\x7f\\]")
_BAD_ESCAPES = re.compile(r"%(00|5c)", re.IGNORECASE)
_ENCODED_SLASH = re.compile(r"%2f", re.IGNORECASE)


@dataclass(frozen=True)
class Route:
    """Where a request goes: the upstream, the canonical key, and the seed if any."""

    upstream: UpstreamConfig
    key: CacheKey
    path: str  # the path under the upstream, without a leading slash
    seed: str | None = None
    #: The URL the client asked, when the key is another one (a format of an index
    #: document, a git exchange): what a miss lists, and what `prefetch` takes.
    asked: str | None = None

    @property
    def url(self) -> str:
        """The upstream URL to fetch (the key is exactly that URL)."""
        return self.key.url

    @property
    def shown_url(self) -> str:
        """The URL to tell a person (misses, diagnoses): the one the client asked."""
        return self.asked or self.key.url

    def rekeyed(self, key_url: str, path: str | None = None) -> Route:
        """The same request under another key of the same upstream (and, for another
        document, its path); the URL the client asked is kept for misses."""
        return dataclasses.replace(
            self,
            key=CacheKey(self.upstream.name, key_url),
            path=self.path if path is None else path,
            asked=self.shown_url,
        )


class Router:
    """Resolves request targets against the configured upstreams."""

    def __init__(
        self,
        upstreams: Mapping[str, UpstreamConfig],
        max_length: int = 4096,
        tls: TlsConfig | None = None,
    ) -> None:
        self.upstreams = dict(upstreams)
        self.max_length = max_length
        self.tls = tls or TlsConfig()
        # What CONNECT may reach: each upstream's own hosts, port 443 unless its URL
        # names one (`host` or `host:port`), and its file_hosts patterns.
        self._connectable = {
            _connect_netloc(url)
            for u in self.upstreams.values()
            for url in (u.url, u.assertions_url)
            if url
        }
        self._connect_patterns = tuple(h for u in self.upstreams.values() for h in u.file_hosts)
        # (host+path without scheme, upstream), longest first so the most specific wins.
        self._prefixes = sorted(
            ((_strip_scheme(u.base), u) for u in self.upstreams.values()),
            key=lambda p: -len(p[0]),
        )

    def resolve(self, target: str) -> Route:
        """Resolve a raw request target (origin or absolute form)."""
        if len(target) > self.max_length:
            raise BadRequest(f"URL longer than {self.max_length} characters")
        if _CTL.search(target):
            raise BadRequest("URL contains control characters, spaces or backslashes")
        if _BAD_ESCAPES.search(target):
            raise BadRequest("URL contains an encoded backslash or NUL")
        lower = target[:8].lower()
        if lower.startswith(("http://", "https://")):
            scheme, rest = target.split("://", 1)
            host, _, path = rest.partition("/")
            if host.upper() == "HTTPS":
                return self._absolute("https", path.lstrip("/"), seed=None)
            return self._absolute(scheme.lower(), rest, seed=None)
        if not target.startswith("/"):
            raise BadRequest("request target must be a path or an absolute http:// URL")
        path = target[1:]
        seed = None
        if path.startswith("@"):
            name, _, path = path[1:].partition("/")
            if not _SEED.fullmatch(name):
                raise BadRequest(f"invalid seed name {name!r}")
            seed = name
        head, _, rest = path.partition("/")
        if head.upper() == "HTTPS":
            return self._absolute("https", rest.lstrip("/"), seed=seed)
        if head.lower() in ("http:", "https:"):
            # `/@seed/http://host/path` (a proxy request routed into a seed).
            return self._absolute(head[:-1].lower(), rest.lstrip("/"), seed=seed)
        upstream = self.upstreams.get(head)
        if upstream is None:
            raise Forbidden(
                f"no upstream named {head!r}; add an [upstreams.{_safe(head)}] table "
                "with its url to the config"
            )
        rest = _check_path(rest, upstream)
        url = kind_of(upstream).key_url(upstream, rest)
        return Route(upstream=upstream, key=CacheKey(upstream.name, url), path=rest, seed=seed)

    def _absolute(self, scheme: str, host_path: str, seed: str | None) -> Route:
        host_path_q = host_path
        host_path, _, _ = host_path.partition("?")
        host = host_path.split("/", 1)[0].lower()
        if not is_netloc(host):
            raise BadRequest(f"invalid host in URL: {host!r}")
        default_port = ":443" if scheme == "https" else ":80"
        if host.endswith(default_port):  # `https://host:443/` is `https://host/`
            cut = len(host) - len(default_port)
            host_path, host_path_q = (
                host_path[:cut] + host_path[len(host) :],
                (host_path_q[:cut] + host_path_q[len(host) :]),
            )
            host = host[:cut]
        norm = host + host_path[len(host) :]
        for prefix, upstream in self._prefixes:
            if norm == prefix or norm.startswith(prefix + "/"):
                rest = host_path_q[len(prefix) :].lstrip("/")
                return self._route(upstream, upstream.base, rest, seed)
        for upstream in self.upstreams.values():
            if upstream.file_hosts and upstream.allows_host(host):
                base = f"{scheme}://{host}"
                rest = host_path_q[len(host) :].lstrip("/")
                return self._route(upstream, base, rest, seed)
        if self.tls.intercepts(host):
            upstream = UpstreamConfig(
                name=INTERCEPT,
                kind="generic",
                url=f"{scheme}://{host}",
                # Redirects may lead to the same set of hosts (any, for a private server).
                file_hosts=("*",) if self.tls.any_host else self.tls.intercept,
            )
            return self._route(upstream, upstream.url, host_path_q[len(host) :].lstrip("/"), seed)
        raise Forbidden(
            f"{scheme}://{host}/ is not a configured upstream; add "
            f'[upstreams.NAME] url = "{scheme}://{_safe(host)}/..." '
            f'or [tls] intercept = ["{_safe(host)}"] to the config'
        )

    def allows_connect(self, host: str, port: int) -> bool:
        """Whether a `CONNECT host:port` tunnel is terminated and served: the upstreams'
        hosts (port 443, or the port their URL names), their `file_hosts` (a pattern
        without a port means 443), `tls.intercept`, or any host for a private server."""
        netloc = host if port == 443 else f"{host}:{port}"
        if netloc in self._connectable or self.tls.intercepts(netloc):
            return True
        return any(fnmatch.fnmatchcase(netloc, p.lower()) for p in self._connect_patterns)

    def _route(self, upstream: UpstreamConfig, base: str, path: str, seed: str | None) -> Route:
        path = _check_path(path, upstream)
        url = f"{base}/{path}" if path else base + "/"
        return Route(upstream=upstream, key=CacheKey(upstream.name, url), path=path, seed=seed)


def _check_path(path: str, upstream: UpstreamConfig) -> str:
    """Refuse traversal in any spelling, and an encoded slash where the kind has no use
    for one; normalise percent-escapes to upper case."""
    path = canonical_escapes(path)
    plain, _, _ = path.partition("?")
    if _ENCODED_SLASH.search(plain) and not kind_of(upstream).encoded_slash:
        raise BadRequest("URL contains an encoded slash")
    decoded = decode(plain)
    for segment in decoded.split("/"):
        if segment in (".", ".."):
            raise BadRequest("path traversal ('..' or '.') is not allowed")
    if "//" in plain:
        raise BadRequest("empty path segment ('//') in URL")
    return path


def _connect_netloc(url: str) -> str:
    """`https://host:8443/x` -> `host:8443`; `http://host/x` -> `host` (CONNECT to 443)."""
    netloc = url.split("://", 1)[1].split("/", 1)[0].lower()
    return netloc[: -len(":443")] if netloc.endswith(":443") else netloc


def _strip_scheme(url: str) -> str:
    """`https://Host/Path` -> `host/Path`: host names ignore case, paths do not."""
    host, slash, path = (url.split("://", 1)[1] if "://" in url else url).partition("/")
    return host.lower() + slash + path


def _safe(text: str) -> str:
    """Echo user input into a message without letting it forge lines or markup."""
    return re.sub(r"[^A-Za-z0-9._:\[\]-]", "_", text)[:100]
