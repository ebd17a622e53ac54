"""Configuration: typed, frozen, validated in one place (`load_config`).

Where a command finds its store and upstreams (SPEC "Commands"): `--store` or
`CACHESRV_STORE`, else `server.store` of the config file given by `--config` or
`CACHESRV_CONFIG`, else the XDG data directory. A config file that defines any
`[upstreams.*]` table replaces the built-in upstreams entirely, so a site mirror
never contacts a host its operator did not name.
"""

from __future__ import annotations

import fnmatch
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .models import Mode

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
DEFAULT_LISTEN = "127.0.0.1:3142"


@dataclass(frozen=True)
class UpstreamConfig:
    """One `[upstreams.NAME]` table; served at `/<name>/...`."""

    name: str
    kind: str
    url: str
    file_hosts: tuple[str, ...] = ()
    assertions_url: str | None = None
    #: The largest body fetched from this upstream; None: `[fetch] max_body`.
    max_body: int | None = None

    @property
    def base(self) -> str:
        """The upstream URL without a trailing slash."""
        return self.url.rstrip("/")

    def allows_host(self, netloc: str) -> bool:
        """Whether a download may point at `netloc` (host or host:port): the upstream's
        own host or one of its `file_hosts`. A pattern with a port must match the port
        too; one without matches the host name on any port."""
        netloc = netloc.lower()
        own = {_host_of(self.url)}
        if self.assertions_url:
            own.add(_host_of(self.assertions_url))
        if netloc in own:
            return True
        hostname = netloc.rsplit(":", 1)[0] if not netloc.endswith("]") else netloc
        for pattern in self.file_hosts:
            target = netloc if ":" in pattern else hostname
            if fnmatch.fnmatchcase(target, pattern.lower()):
                return True
        return False


@dataclass(frozen=True)
class ServerConfig:
    listen: str = DEFAULT_LISTEN
    mode: Mode = Mode.ONLINE
    store: Path | None = None
    admin_token: str | None = None
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    max_url_length: int = 4096
    log_format: str = "text"


@dataclass(frozen=True)
class StoreLimits:
    """`[store]`: how big the store may grow (docs/operations.md, "Disk space")."""

    #: Bytes of blobs the store may hold; None: no limit but the disk.
    max_size: int | None = None
    #: Disk space to keep free: bytes, or a fraction of the filesystem (0.01 = 1%).
    min_free: int | float = 0.01

    def min_free_bytes(self, filesystem_bytes: int) -> int:
        if isinstance(self.min_free, float):
            return int(self.min_free * filesystem_bytes)
        return self.min_free


@dataclass(frozen=True)
class FetchLimits:
    """`[fetch]`: what one upstream fetch may cost, so that a hostile or broken
    upstream cannot hold the server (docs/reliability.md). Past any limit the fetch
    ends with a 502 saying which, and nothing is recorded."""

    #: The largest body of any upstream (an upstream's own `max_body` overrides it).
    max_body: int = 64 * 1024**3
    #: The largest index document (a pypi page, an npm packument, a Go list, a Cargo
    #: index file): these are read whole, parsed and rewritten.
    max_document: int = 32 * 1024**2
    #: A fetch that moves fewer than `min_rate` bytes a second over `rate_window`
    #: seconds is ended (a silent one ends after `server.read_timeout`).
    min_rate: int = 1024
    rate_window: float = 60.0


@dataclass(frozen=True)
class TlsConfig:
    """`[tls]`: HTTPS interception (docs/https.md)."""

    #: Where `ca.pem` and `ca.key` live; None means `<store>/tls`.
    ca_dir: Path | None = None
    #: Hosts intercepted beyond the upstreams' own: shell patterns, `host:port` for a
    #: port other than 443.
    intercept: tuple[str, ...] = ()
    #: A PEM file of extra CAs trusted for upstream certificates (with the system's).
    upstream_ca: Path | None = None
    #: Not a config key: a private server started by `cachesrv wrap` records whatever
    #: host its build reaches (`serve --any-host`).
    any_host: bool = False

    def intercepts(self, netloc: str) -> bool:
        """Whether `netloc` (`host` for port 443 or 80, else `host:port`) is one of the
        extra hosts. A pattern without a port matches the default ports only."""
        if self.any_host:
            return True
        netloc = netloc.lower()
        return any(fnmatch.fnmatchcase(netloc, p.lower()) for p in self.intercept)


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    upstreams: Mapping[str, UpstreamConfig] = field(default_factory=dict)
    source: str | None = None
    tls: TlsConfig = field(default_factory=TlsConfig)
    limits: StoreLimits = field(default_factory=StoreLimits)
    fetch: FetchLimits = field(default_factory=FetchLimits)
    #: `[seed] trusted_keys`: public keys whose signature `seed import` requires.
    trusted_keys: tuple[Path, ...] = ()

    def with_overrides(
        self,
        *,
        store: Path | None = None,
        listen: str | None = None,
        mode: Mode | None = None,
        any_host: bool = False,
    ) -> Config:
        server = self.server
        tls = replace(self.tls, any_host=True) if any_host else self.tls
        if store is not None:
            server = replace(server, store=store)
        if listen is not None:
            _check_listen(listen, self.source, "--listen")
            server = replace(server, listen=listen)
        if mode is not None:
            server = replace(server, mode=mode)
        return replace(self, server=server, tls=tls)

    @property
    def store(self) -> Path:
        """The resolved store directory (never None once loaded)."""
        assert self.server.store is not None
        return self.server.store

    @property
    def ca_dir(self) -> Path:
        """Where the local CA lives: `tls.ca_dir`, else `<store>/tls`."""
        return self.tls.ca_dir or self.store / "tls"


DEFAULT_UPSTREAMS: dict[str, dict[str, Any]] = {
    "debian": {"kind": "apt", "url": "http://deb.debian.org/debian"},
    "debian-security": {"kind": "apt", "url": "http://deb.debian.org/debian-security"},
    "ubuntu": {"kind": "apt", "url": "http://archive.ubuntu.com/ubuntu"},
    "pypi": {
        "kind": "pypi",
        "url": "https://pypi.org/simple",
        "file_hosts": ["files.pythonhosted.org"],
    },
    "snapstore": {
        "kind": "snap",
        "url": "https://api.snapcraft.io",
        "assertions_url": "https://api.snapcraft.io",
        "file_hosts": ["*.cdn.snapcraftcontent.com", "api.snapcraft.io"],
    },
    "npm": {"kind": "npm", "url": "https://registry.npmjs.org"},
    # The Go module proxy; its checksum database is proxied at /goproxy/sumdb/<name>/.
    "goproxy": {"kind": "goproxy", "url": "https://proxy.golang.org"},
    # crates.io's sparse index; its config.json sends downloads to static.crates.io.
    "crates": {
        "kind": "cargo",
        "url": "https://index.crates.io",
        "file_hosts": ["static.crates.io"],
    },
}

_SERVER_KEYS = {
    "listen",
    "mode",
    "store",
    "admin_token",
    "connect_timeout",
    "read_timeout",
    "max_url_length",
    "log_format",
}
_UPSTREAM_KEYS = {"kind", "url", "file_hosts", "assertions_url", "max_body"}
_FETCH_KEYS = {"max_body", "max_document", "min_rate", "rate_window"}
_TLS_KEYS = {"ca_dir", "intercept", "upstream_ca"}
_STORE_KEYS = {"max_size", "min_free"}
_SEED_KEYS = {"trusted_keys"}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgtp]?i?b?)", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "p": 10**15}
_INTERCEPT = re.compile(r"[a-z0-9*?.\[\]-]+(:[0-9]{1,5})?")


def default_store() -> Path:
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "cachesrv"


def load_config(path: Path | None = None, *, store: Path | None = None) -> Config:
    """Load and validate the configuration, resolving the store as the SPEC says.

    `path` falls back to `CACHESRV_CONFIG`; `store` (the `--store` flag) falls
    back to `CACHESRV_STORE`, then to `server.store`, then to the XDG data dir.
    """
    if path is None and os.environ.get("CACHESRV_CONFIG"):
        path = Path(os.environ["CACHESRV_CONFIG"])
    raw: dict[str, Any] = {}
    source = str(path) if path else None
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError("config file not found", file=source) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"not valid TOML: {exc}", file=source) from None
    config = parse_config(raw, source=source)
    if store is None and os.environ.get("CACHESRV_STORE"):
        store = Path(os.environ["CACHESRV_STORE"])
    if store is None:
        store = config.server.store or default_store()
    return config.with_overrides(store=store)


def parse_config(raw: Mapping[str, Any], *, source: str | None = None) -> Config:
    """Validate a parsed TOML document; every error names the file and key."""
    unknown = set(raw) - {"server", "upstreams", "tls", "store", "seed", "fetch"}
    if unknown:
        raise ConfigError(f"unknown table {sorted(unknown)[0]!r}", file=source)
    server_raw = _table(raw.get("server", {}), source, "server")
    bad = set(server_raw) - _SERVER_KEYS
    if bad:
        raise ConfigError("unknown key", file=source, key=f"server.{sorted(bad)[0]}")
    server = ServerConfig()
    if "listen" in server_raw:
        listen = _str(server_raw, "listen", source, "server")
        _check_listen(listen, source, "server.listen")
        server = replace(server, listen=listen)
    if "mode" in server_raw:
        mode = _str(server_raw, "mode", source, "server")
        try:
            server = replace(server, mode=Mode(mode))
        except ValueError:
            raise ConfigError(
                f"must be 'online' or 'offline', not {mode!r}", file=source, key="server.mode"
            ) from None
    if "store" in server_raw:
        server = replace(server, store=Path(_str(server_raw, "store", source, "server")))
    if "admin_token" in server_raw:
        token = _str(server_raw, "admin_token", source, "server")
        if len(token) < 16:
            raise ConfigError(
                "must be at least 16 characters", file=source, key="server.admin_token"
            )
        server = replace(server, admin_token=token)
    if "log_format" in server_raw:
        fmt = _str(server_raw, "log_format", source, "server")
        if fmt not in ("text", "json"):
            raise ConfigError("must be 'text' or 'json'", file=source, key="server.log_format")
        server = replace(server, log_format=fmt)
    for key in ("connect_timeout", "read_timeout"):
        if key in server_raw:
            value = server_raw[key]
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise ConfigError("must be a positive number", file=source, key=f"server.{key}")
            if key == "connect_timeout":
                server = replace(server, connect_timeout=float(value))
            else:
                server = replace(server, read_timeout=float(value))
    if "max_url_length" in server_raw:
        value = server_raw["max_url_length"]
        if not isinstance(value, int) or isinstance(value, bool) or value < 256:
            raise ConfigError("must be an integer >= 256", file=source, key="server.max_url_length")
        server = replace(server, max_url_length=value)

    ups_raw = _table(raw.get("upstreams", DEFAULT_UPSTREAMS), source, "upstreams")
    upstreams = {
        name: _upstream(name, _table(t, source, f"upstreams.{name}"), source)
        for name, t in ups_raw.items()
    }
    tls = _tls(_table(raw.get("tls", {}), source, "tls"), source)
    limits = _limits(_table(raw.get("store", {}), source, "store"), source)
    fetch = _fetch(_table(raw.get("fetch", {}), source, "fetch"), source)
    seed = _table(raw.get("seed", {}), source, "seed")
    bad = set(seed) - _SEED_KEYS
    if bad:
        raise ConfigError("unknown key", file=source, key=f"seed.{sorted(bad)[0]}")
    keys = seed.get("trusted_keys", [])
    if not isinstance(keys, list) or not all(isinstance(k, str) and k for k in keys):
        raise ConfigError(
            "must be a list of public key files (seed-signing.pub)",
            file=source,
            key="seed.trusted_keys",
        )
    return Config(
        server=server,
        upstreams=upstreams,
        source=source,
        tls=tls,
        limits=limits,
        fetch=fetch,
        trusted_keys=tuple(Path(k) for k in keys),
    )


def parse_size(text: object) -> int:
    """`"200GiB"`, `"1.5 TB"`, `"512MiB"`, `4096` -> bytes (KiB = 1024, kB = 1000)."""
    if isinstance(text, float | bool):
        raise ValueError(f'{text!r}: write a size as a string such as "5GiB" or "5%"')
    if isinstance(text, int):
        if text < 0:
            raise ValueError("a size cannot be negative")
        return text
    m = _SIZE.fullmatch(str(text).strip())
    if not m:
        raise ValueError(f"not a size: {text!r} (e.g. 200GiB, 500MB, 1073741824)")
    unit = m.group(2).lower()
    binary = "i" in unit
    base = unit.replace("i", "").replace("b", "")
    if binary and not base:
        raise ValueError(f"not a size: {text!r}")
    mult = 1024 ** ("kmgtp".index(base) + 1) if binary else _UNITS[base]
    return int(float(m.group(1)) * mult)


def _limits(t: Mapping[str, Any], source: str | None) -> StoreLimits:
    bad = set(t) - _STORE_KEYS
    if bad:
        raise ConfigError("unknown key", file=source, key=f"store.{sorted(bad)[0]}")
    limits = StoreLimits()
    if "max_size" in t:
        try:
            max_size = parse_size(t["max_size"])
            if max_size < 1024 * 1024:
                raise ValueError(f"{t['max_size']!r} is under 1 MiB: no body would fit")
        except ValueError as exc:
            raise ConfigError(str(exc), file=source, key="store.max_size") from None
        limits = replace(limits, max_size=max_size)
    if "min_free" in t:
        value = t["min_free"]
        try:
            if isinstance(value, str) and value.strip().endswith("%"):
                pct = float(value.strip()[:-1])
                if not 0 <= pct < 100:
                    raise ValueError("a percentage between 0 and 100")
                limits = replace(limits, min_free=pct / 100)
            else:
                limits = replace(limits, min_free=parse_size(value))
        except ValueError as exc:
            raise ConfigError(
                f'must be a size such as "5GiB" or a share such as "5%" ({exc})',
                file=source,
                key="store.min_free",
            ) from None
    return limits


def _fetch(t: Mapping[str, Any], source: str | None) -> FetchLimits:
    bad = set(t) - _FETCH_KEYS
    if bad:
        raise ConfigError("unknown key", file=source, key=f"fetch.{sorted(bad)[0]}")
    fetch = FetchLimits()
    for key in ("max_body", "max_document", "min_rate"):
        if key in t:
            fetch = replace(fetch, **{key: _positive_size(t[key], source, f"fetch.{key}")})
    if "rate_window" in t:
        value = t["rate_window"]
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            raise ConfigError("must be a positive number", file=source, key="fetch.rate_window")
        fetch = replace(fetch, rate_window=float(value))
    return fetch


def _positive_size(value: object, source: str | None, key: str) -> int:
    try:
        size = parse_size(value)
        if size <= 0:
            raise ValueError("must be more than 0")
    except ValueError as exc:
        raise ConfigError(f'must be a size such as "64GiB" ({exc})', file=source, key=key) from None
    return size


def _tls(t: Mapping[str, Any], source: str | None) -> TlsConfig:
    bad = set(t) - _TLS_KEYS
    if bad:
        raise ConfigError("unknown key", file=source, key=f"tls.{sorted(bad)[0]}")
    tls = TlsConfig()
    if "ca_dir" in t:
        tls = replace(tls, ca_dir=Path(_str(t, "ca_dir", source, "tls")))
    if "upstream_ca" in t:
        tls = replace(tls, upstream_ca=Path(_str(t, "upstream_ca", source, "tls")))
    if "intercept" in t:
        hosts = t["intercept"]
        if not isinstance(hosts, list) or not all(
            isinstance(h, str) and _INTERCEPT.fullmatch(h.lower()) for h in hosts
        ):
            raise ConfigError(
                'must be a list of host patterns such as "*.example.org" or "host:8443"',
                file=source,
                key="tls.intercept",
            )
        tls = replace(tls, intercept=tuple(h.lower() for h in hosts))
    return tls


def _upstream(name: str, t: Mapping[str, Any], source: str | None) -> UpstreamConfig:
    where = f"upstreams.{name}"
    if not _NAME.fullmatch(name) or name.startswith(("_", "@")) or name.upper() == "HTTPS":
        raise ConfigError(
            "upstream names are letters, digits, '.', '_' and '-'", file=source, key=where
        )
    bad = set(t) - _UPSTREAM_KEYS
    if bad:
        raise ConfigError("unknown key", file=source, key=f"{where}.{sorted(bad)[0]}")
    kind = _str(t, "kind", source, where) if "kind" in t else "generic"
    from .upstreams import KINDS  # the kinds' table needs this module's types

    if kind not in KINDS:
        raise ConfigError(f"must be one of {', '.join(KINDS)}", file=source, key=f"{where}.kind")
    if "url" not in t:
        raise ConfigError("missing", file=source, key=f"{where}.url")
    url = _url(_str(t, "url", source, where), source, f"{where}.url")
    assertions = (
        _url(_str(t, "assertions_url", source, where), source, f"{where}.assertions_url")
        if "assertions_url" in t
        else (url if kind == "snap" else None)
    )
    hosts = t.get("file_hosts", [])
    if not isinstance(hosts, list) or not all(isinstance(h, str) and h for h in hosts):
        raise ConfigError("must be a list of host names", file=source, key=f"{where}.file_hosts")
    max_body = (
        _positive_size(t["max_body"], source, f"{where}.max_body") if "max_body" in t else None
    )
    return UpstreamConfig(
        name=name,
        kind=kind,
        url=url,
        file_hosts=tuple(hosts),
        assertions_url=assertions,
        max_body=max_body,
    )


def _url(value: str, source: str | None, key: str) -> str:
    if not re.fullmatch(r"https?://[^/\s?#]+(/[^\s?#]*)?", value):
        raise ConfigError(
            f"must be an http:// or https:// URL, not {value!r}", file=source, key=key
        )
    return value.rstrip("/")


def _check_listen(listen: str, source: str | None, key: str) -> None:
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"must be HOST:PORT, not {listen!r}", file=source, key=key)


def _table(value: object, source: str | None, key: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError("must be a table", file=source, key=key)
    return value


def _str(t: Mapping[str, Any], key: str, source: str | None, where: str) -> str:
    value = t[key]
    if not isinstance(value, str):
        raise ConfigError("must be a string", file=source, key=f"{where}.{key}")
    return value


def _host_of(url: str) -> str:
    return url.split("://", 1)[1].split("/", 1)[0].lower()


def split_listen(listen: str) -> tuple[str, int]:
    """`"127.0.0.1:3142"` -> `("127.0.0.1", 3142)`; `"[::1]:80"` -> `("::1", 80)`."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)
