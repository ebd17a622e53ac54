"""The environment `cachesrv wrap` gives a build: every client pointed at one server.

- pip: `PIP_INDEX_URL=<server>/[@seed/]<pypi>/simple/`, `PIP_TRUSTED_HOST`;
- uv: `UV_DEFAULT_INDEX`, `UV_INDEX_URL` (older uv), `UV_INSECURE_HOST`;
- apt: `APT_CONFIG`, a generated file (see `apt_config_text`);
- snap tooling: `SNAPPY_FORCE_API_URL`, `SNAPPY_FORCE_SAS_URL`, `UBUNTU_STORE_URL` =
  `<server>/[@seed/]<snap>/`, and `SNAPPY_STORE_NO_CDN=1`;
- npm: `npm_config_registry=<server>/[@seed/]<npm>/`, and the update notifier, audit
  and fund requests off (each would be a miss in every offline build);
- go: `GOPROXY=<server>/[@seed/]<goproxy>` alone (no `direct`) and `GONOPROXY=none`,
  so even `GOPRIVATE` modules come through the cache; the checksum database is asked
  through the proxy (`/sumdb/`), so `GOSUMDB` is left as the build has it;
- cargo: `CARGO_HOME`, a private one whose `config.toml` is the user's with crates.io
  replaced by `sparse+<server>/[@seed/]<cargo>/` (Cargo's `[source]` table has no
  environment form; see `cargo_config_text`);
- curl, wget, git, Python and the rest: `http_proxy`, `HTTP_PROXY`, `https_proxy`,
  `HTTPS_PROXY` = `http://[seed:NAME@]host:port/`; `https://` URLs then go through a
  `CONNECT` tunnel that the server terminates with a certificate from its local CA
  (docs/https.md). The build trusts that CA without the system being touched: a bundle
  of the CAs it trusted already plus the cache's (`SSL_CERT_FILE`, `REQUESTS_CA_BUNDLE`,
  `CURL_CA_BUNDLE`, `PIP_CERT`, `GIT_SSL_CAINFO`, apt's `Acquire::https::CAInfo`, a
  `WGETRC` that repeats the user's), and `NODE_EXTRA_CA_CERTS` (node adds it to its
  own); `GIT_HTTP_PROXY_AUTHMETHOD=basic` makes git send the seed on `CONNECT`;
- scripts: `CACHESRV_URL` (the server) and `CACHESRV_SEED`.

Index and store URLs carry the seed in their path (`/@NAME/`). A proxy URL cannot: a
client sends the proxy only the URL it wants, never the proxy's path. So the seed rides
in the proxy's user part, `http://seed:NAME@host:port/`, which apt, curl, wget, pip and
uv send pre-emptively as `Proxy-Authorization` (cachesrv/web/target.py reads it). The
same works for the private server and for a shared one given with `--server`.

`no_proxy` would let a client go around the server, so it is removed (a server named by
host name is put back into it: a client must reach that one directly). Extra indexes
in the environment (`PIP_EXTRA_INDEX_URL`, `UV_EXTRA_INDEX_URL`, `UV_INDEX`) are
removed for the same reason; configuration files are the build's business.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
import shutil
import ssl
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .config import Config
from .errors import ConfigError, WrapError
from .upstreams.apt import OFFLINE_SETTINGS

SEED_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
#: Removed from the build's environment: each lets a client go around the server.
BYPASS_VARS = (
    "no_proxy",
    "NO_PROXY",
    "PIP_EXTRA_INDEX_URL",
    "UV_EXTRA_INDEX_URL",
    "UV_INDEX",
    "npm_config_noproxy",
    "NPM_CONFIG_NOPROXY",
    "NPM_CONFIG_REGISTRY",
)
#: What the generated apt configuration names the rewritten sources (next to apt.conf).
SOURCES_DIR = "apt-sources"


@dataclass(frozen=True)
class Server:
    """The cache server as a client reaches it."""

    #: `http://host:port` and any path prefix, without a trailing slash.
    url: str
    #: `host:port` as written in the URL (brackets kept for IPv6).
    netloc: str
    #: The host name or address, without brackets.
    host: str

    @classmethod
    def parse(cls, text: str) -> Server:
        parts = urlsplit(text.strip())
        try:
            host = parts.hostname
            parts.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError:
            host = None
        if (
            parts.scheme != "http"
            or not host
            or parts.username is not None
            or parts.query
            or parts.fragment
            or '"' in text
        ):
            raise ConfigError(
                f"the server must be an http:// URL such as http://cache.example:3142, not {text!r}"
            )
        return cls(
            url=f"http://{parts.netloc}{parts.path}".rstrip("/"), netloc=parts.netloc, host=host
        )

    @property
    def named_by_address(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    def base(self, seed: str | None) -> str:
        """Where path-style URLs start: the server, and `/@seed` when recording one."""
        return f"{self.url}/@{seed}" if seed else self.url

    def proxy(self, seed: str | None) -> str:
        """The proxy URL; a seed rides in the user part (see the module doc)."""
        return f"http://seed:{seed}@{self.netloc}/" if seed else f"http://{self.netloc}/"


def first_upstream(config: Config, kind: str) -> str | None:
    """The name of the first upstream of `kind` in the config, if any."""
    return next((name for name, u in config.upstreams.items() if u.kind == kind), None)


@dataclass(frozen=True)
class TlsTrust:
    """The files that make a build trust the cache's CA (see the module doc)."""

    #: The CAs the build trusted already, then the cache's.
    bundle: Path
    #: The cache's CA alone.
    ca: Path
    #: wget's configuration: the user's, then `ca_certificate`.
    wgetrc: Path


def write_tls_trust(workdir: Path, *, ca_pem: bytes, env: Mapping[str, str]) -> TlsTrust:
    """Write the CA files into `workdir` (the build's private directory)."""
    ca = workdir / "cachesrv-ca.pem"
    ca.write_bytes(ca_pem)
    trusted = b""
    for name in _trusted_files(env):
        try:
            trusted = Path(name).read_bytes()
            break
        except OSError:
            continue
    bundle = workdir / "ca-bundle.pem"
    bundle.write_bytes(trusted.rstrip(b"\n") + b"\n" + ca_pem if trusted else ca_pem)
    wgetrc = workdir / "wgetrc"
    user = env.get("WGETRC") or str(Path(env.get("HOME", "/nonexistent")) / ".wgetrc")
    try:
        mine = Path(user).read_text(encoding="utf-8", errors="surrogateescape")
    except OSError:
        mine = ""
    wgetrc.write_text(
        f"{mine.rstrip()}\n# cachesrv wrap: trust the cache's CA too\nca_certificate = {bundle}\n",
        encoding="utf-8",
        errors="surrogateescape",
    )
    return TlsTrust(bundle=bundle, ca=ca, wgetrc=wgetrc)


def _trusted_files(env: Mapping[str, str]) -> list[str]:
    """Where the CAs the build trusts now are: its own setting, else the system's."""
    paths = ssl.get_default_verify_paths()
    found = [env.get("SSL_CERT_FILE"), env.get("REQUESTS_CA_BUNDLE"), paths.cafile]
    found += [paths.openssl_cafile, "/etc/ssl/certs/ca-certificates.crt"]
    return [f for f in found if f and os.path.isfile(f)]


def wrap_variables(
    server: Server,
    *,
    seed: str | None,
    config: Config,
    apt_config: Path | None,
    tls: TlsTrust | None = None,
    cargo_home: Path | None = None,
) -> dict[str, str]:
    """The variables the build gets (see the module doc)."""
    found: dict[str, str] = {"CACHESRV_URL": server.url}
    if seed:
        found["CACHESRV_SEED"] = seed
    found["http_proxy"] = found["HTTP_PROXY"] = server.proxy(seed)
    if tls is not None:
        found["https_proxy"] = found["HTTPS_PROXY"] = server.proxy(seed)
        bundle = str(tls.bundle)
        for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "PIP_CERT"):
            found[name] = bundle
        found["GIT_SSL_CAINFO"] = bundle
        found["NODE_EXTRA_CA_CERTS"] = str(tls.ca)
        found["WGETRC"] = str(tls.wgetrc)
        # git sends proxy credentials (the seed) on CONNECT only when told to.
        found["GIT_HTTP_PROXY_AUTHMETHOD"] = "basic"
    if not server.named_by_address:
        # Proxy-form requests for the server's own URLs are served as such when they
        # arrive on the address they name (web/target.py); a host name cannot be
        # matched that way, so clients must not send those through the proxy.
        found["no_proxy"] = found["NO_PROXY"] = server.host
    pypi = first_upstream(config, "pypi")
    if pypi is not None:
        index = f"{server.base(seed)}/{pypi}/simple/"
        found.update(
            PIP_INDEX_URL=index,
            PIP_TRUSTED_HOST=server.netloc,
            UV_DEFAULT_INDEX=index,
            UV_INDEX_URL=index,
            UV_INSECURE_HOST=server.netloc,
        )
    snap = first_upstream(config, "snap")
    if snap is not None:
        store = f"{server.base(seed)}/{snap}/"
        found.update(
            SNAPPY_FORCE_API_URL=store,
            SNAPPY_FORCE_SAS_URL=store,
            UBUNTU_STORE_URL=store,
            SNAPPY_STORE_NO_CDN="1",
        )
    npm = first_upstream(config, "npm")
    if npm is not None:
        found.update(
            npm_config_registry=f"{server.base(seed)}/{npm}/",
            npm_config_update_notifier="false",
            npm_config_audit="false",
            npm_config_fund="false",
        )
    goproxy = first_upstream(config, "goproxy")
    if goproxy is not None:
        found.update(GOPROXY=f"{server.base(seed)}/{goproxy}", GONOPROXY="none")
    if cargo_home is not None:
        found["CARGO_HOME"] = str(cargo_home)
    if apt_config is not None:
        found["APT_CONFIG"] = str(apt_config)
    return found


def client_env(base: Mapping[str, str], variables: Mapping[str, str]) -> dict[str, str]:
    """`base` without the bypass variables, with `variables` laid over it."""
    env = {k: v for k, v in base.items() if k not in BYPASS_VARS}
    env.update(variables)
    return env


def shell_lines(variables: Mapping[str, str]) -> list[str]:
    """`unset` and `export` lines for `eval` in a POSIX shell."""
    lines = [f"unset {name}" for name in BYPASS_VARS if name not in variables]
    lines += [f"export {name}={shlex.quote(value)}" for name, value in variables.items()]
    return lines


# -- cargo --------------------------------------------------------------------------

#: The name the generated Cargo configuration gives the cache's registry.
CARGO_SOURCE = "cachesrv"
_TOML_TABLE = re.compile(r"^\s*\[\[?\s*([^\]]*?)\s*\]\]?\s*(#.*)?$")


def cargo_registry(server: Server, *, seed: str | None, config: Config) -> str | None:
    """`sparse+<server>/[@seed/]<cargo upstream>/`, if the config has a cargo upstream."""
    name = first_upstream(config, "cargo")
    return f"sparse+{server.base(seed)}/{name}/" if name else None


def cargo_config_text(user: str, registry: str) -> str:
    """The user's Cargo configuration with crates.io replaced by the cache.

    Tables of the user's that would fight the replacement (`[source.crates-io]`,
    `[source.cachesrv]`) are dropped, line by line, so the TOML stays valid; every
    other setting (`[build]`, `[net]`, `[registries]`, `[target]`, ...) is kept as it is.
    """
    kept: list[str] = []
    dropping = False
    for line in user.splitlines():
        m = _TOML_TABLE.match(line)
        if m:
            name = m.group(1).replace('"', "").replace("'", "").replace(" ", "")
            dropping = name in ("source.crates-io", f"source.{CARGO_SOURCE}")
        if not dropping:
            kept.append(line)
    head = "\n".join(kept).rstrip()
    ours = (
        "# cachesrv wrap: crates.io through the cache\n"
        "[source.crates-io]\n"
        f'replace-with = "{CARGO_SOURCE}"\n\n'
        f"[source.{CARGO_SOURCE}]\n"
        f'registry = "{registry}"\n'
    )
    return f"{head}\n\n{ours}" if head else ours


def write_cargo_home(workdir: Path, *, env: Mapping[str, str], registry: str | None) -> Path | None:
    """A private `CARGO_HOME` in `workdir` whose `config.toml` is `cargo_config_text` of
    the user's (`$CARGO_HOME/config.toml`, or the older `config`); None without a cargo
    upstream. Its registry cache starts empty, so every crate the build uses passes
    through the cache and is recorded."""
    if registry is None:
        return None
    user_home = Path(env.get("CARGO_HOME") or Path(env.get("HOME", "/nonexistent")) / ".cargo")
    user = ""
    for name in ("config.toml", "config"):
        try:
            user = (user_home / name).read_text(encoding="utf-8")
            break
        except (OSError, UnicodeError):
            continue
    home = workdir / "cargo-home"
    home.mkdir(exist_ok=True)
    (home / "config.toml").write_text(cargo_config_text(user, registry), encoding="utf-8")
    return home


# -- apt ----------------------------------------------------------------------------


@dataclass(frozen=True)
class AptPaths:
    """Where apt reads its configuration and sources, as `apt-config` resolves them."""

    parts: Path | None = None
    main: Path | None = None
    source_list: Path | None = None
    source_parts: Path | None = None


def apt_paths(env: Mapping[str, str]) -> AptPaths | None:
    """Ask `apt-config` (under the build's `APT_CONFIG`); None where apt is not installed."""
    exe = shutil.which("apt-config", path=env.get("PATH"))
    if exe is None:
        return None
    proc = subprocess.run(
        [exe, "shell"]
        + ["PARTS", "Dir::Etc::Parts/d", "MAIN", "Dir::Etc::main/f"]
        + ["SL", "Dir::Etc::SourceList/f", "SP", "Dir::Etc::SourceParts/d"],
        env=dict(env),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise WrapError(f"apt-config cannot read the apt configuration: {last}")
    values: dict[str, Path] = {}
    for line in proc.stdout.splitlines():
        for word in shlex.split(line):
            name, sep, value = word.partition("=")
            if sep and value:
                values[name] = Path(value)
    return AptPaths(
        parts=values.get("PARTS"),
        main=values.get("MAIN"),
        source_list=values.get("SL"),
        source_parts=values.get("SP"),
    )


def apt_config_text(
    *,
    incoming: Path | None,
    paths: AptPaths,
    proxy: str,
    offline: bool,
    sources: Path | None = None,
    ca_bundle: Path | None = None,
) -> str:
    """The configuration `APT_CONFIG` names for the build.

    apt reads `APT_CONFIG` first, then `Dir::Etc::Parts`, then `Dir::Etc::main`, so a
    system snippet (an `01proxy` for another cache, `Proxy-Auto-Detect`) would override
    anything set here. So this file reads all three itself, in apt's order, sets the
    cache last, and points Parts and main at /dev/null so apt does not read them again.
    `#clear` drops per-host proxy settings (`Acquire::http::Proxy::host "DIRECT"`).
    """
    lines = ["// Generated by `cachesrv wrap`: the usual apt configuration, then the cache."]
    if incoming is not None and incoming.is_file():
        lines.append(f'#include "{_apt_path(incoming)}";')
    if paths.parts is not None and paths.parts.is_dir():
        lines.append(f'#include "{_apt_path(paths.parts, directory=True)}";')
    if paths.main is not None and paths.main.is_file():
        lines.append(f'#include "{_apt_path(paths.main)}";')
    lines += ['Dir::Etc::Parts "/dev/null";', 'Dir::Etc::main "/dev/null";']
    lines += apt_proxy_lines(proxy)
    if ca_bundle is not None:
        lines.append(f'Acquire::https::CAInfo "{_apt_path(ca_bundle)}";')
    if offline:
        lines += apt_offline_lines()
    if sources is not None:
        lines += [
            f'Dir::Etc::SourceList "{_apt_path(sources / "sources.list")}";',
            f'Dir::Etc::SourceParts "{_apt_path(sources / "sources.list.d", directory=True)}";',
        ]
    return "\n".join(lines) + "\n"


def apt_proxy_lines(proxy: str) -> list[str]:
    """apt through the cache at `proxy` (also `cachesrv client-config apt`).

    `#clear` drops per-host proxy settings (`Acquire::http::Proxy::host "DIRECT"`), and
    proxy auto-detection (auto-apt-proxy) is off. What a clean machine asks for: full
    indices (no diffs against local lists), no translations; set online too, so that
    what is recorded is what offline clients ask for.
    """
    return [
        "#clear Acquire::http::Proxy;",
        f'Acquire::http::Proxy "{proxy}";',
        'Acquire::http::Proxy-Auto-Detect "";',
        'Acquire::http::ProxyAutoDetect "";',
        "#clear Acquire::https::Proxy;",
        f'Acquire::https::Proxy "{proxy}";',
        'Acquire::PDiffs "false";',
        'Acquire::Languages "none";',
    ]


def apt_offline_lines() -> list[str]:
    """Offline, a recorded Release is the one there is, however old: apt must accept it
    past its `Valid-Until`, and on a machine whose clock is off (`Check-Date`)."""
    return list(OFFLINE_SETTINGS)


def _apt_path(path: Path, *, directory: bool = False) -> str:
    text = str(path)
    if '"' in text or "\n" in text:
        raise WrapError(f"cannot name {text!r} in an apt configuration file")
    # `#include` reads a directory only when the name ends with a slash.
    return text.rstrip("/") + "/" if directory else text


def https_sources(paths: AptPaths) -> dict[str, str] | None:
    """Every sources file, rewritten so that `https://` URIs read `http://HTTPS///`,
    keyed by its path under the new sources directory; None when none names https.

    apt fetches an `https://` source through an http proxy with `CONNECT`, a tunnel a
    cache cannot look into (cachesrv refuses it). apt-cacher-ng's `http://HTTPS///host/path`
    form reaches the proxy in plain HTTP and the server fetches `https://host/path`.
    """
    files: list[tuple[str, Path]] = []
    if paths.source_list is not None and paths.source_list.is_file():
        files.append(("sources.list", paths.source_list))
    if paths.source_parts is not None and paths.source_parts.is_dir():
        for path in sorted(paths.source_parts.iterdir()):
            if path.suffix in (".list", ".sources") and path.is_file():
                files.append((f"sources.list.d/{path.name}", path))
    rewritten: dict[str, str] = {}
    changed = False
    for name, path in files:
        try:
            text = path.read_text(encoding="utf-8", errors="surrogateescape")
        except OSError as exc:
            raise WrapError(f"cannot read apt sources {path}: {exc.strerror}") from None
        new = rewrite_https(text, deb822=path.suffix == ".sources")
        changed |= new != text
        rewritten[name] = new
    return rewritten if changed else None


_ONE_LINE_HTTPS = re.compile(r"^(\s*deb(?:-src)?\s+(?:\[[^\]]*\]\s*)?)https://", re.MULTILINE)
_HTTPS_WORD = re.compile(r"(?<!\S)https://")


def rewrite_https(text: str, *, deb822: bool) -> str:
    """`https://host/path` -> `http://HTTPS///host/path` in the URIs of a sources file
    (one-line `deb` lines, or the `URIs:` field of deb822 `.sources` stanzas)."""
    if not deb822:
        return _ONE_LINE_HTTPS.sub(r"\1http://HTTPS///", text)
    out: list[str] = []
    field = ""
    for line in text.splitlines(keepends=True):
        if line.startswith("#"):
            out.append(line)
            continue
        if line[:1] not in (" ", "\t") and ":" in line:
            field = line.split(":", 1)[0].strip().lower()
        elif not line.strip():
            field = ""
        if field == "uris":
            name, sep, value = (
                line.partition(":") if line[:1] not in (" ", "\t") else ("", "", line)
            )
            line = name + sep + _HTTPS_WORD.sub("http://HTTPS///", value)
        out.append(line)
    return "".join(out)


def write_apt_config(
    workdir: Path,
    *,
    env: Mapping[str, str],
    proxy: str,
    offline: bool,
    ca_bundle: Path | None = None,
) -> Path | None:
    """Write `apt.conf` (and rewritten sources, if any name https) into `workdir`;
    None where apt is not installed."""
    paths = apt_paths(env)
    if paths is None:
        return None
    incoming = Path(env["APT_CONFIG"]) if env.get("APT_CONFIG") else None
    sources = https_sources(paths)
    sources_dir = None
    if sources is not None:
        sources_dir = workdir / SOURCES_DIR
        if sources_dir.exists():
            shutil.rmtree(sources_dir)
        (sources_dir / "sources.list.d").mkdir(parents=True)
        for name, text in sources.items():
            (sources_dir / name).write_text(text, encoding="utf-8", errors="surrogateescape")
    conf = workdir / "apt.conf"
    conf.write_text(
        apt_config_text(
            incoming=incoming,
            paths=paths,
            proxy=proxy,
            offline=offline,
            sources=sources_dir,
            ca_bundle=ca_bundle,
        )
    )
    return conf
