"""The drop-in files that point a site's machines at a shared server
(`cachesrv client-config KIND`): the settings `cachesrv wrap` gives one build
(wrapenv.py), written as the files each client reads system-wide.

Each kind is one file whose first line is a comment naming where it goes, so the
command's output can be redirected there as it is:

- apt: `/etc/apt/apt.conf.d/99cachesrv`: the proxy (http and https sources), and
  offline `Acquire::Check-Valid-Until "false"` and `Acquire::Check-Date "false"` (a
  recorded Release is served however old; apt refuses one past its `Valid-Until`);
- pip: `/etc/pip.conf`: `index-url` and `trusted-host`;
- uv: `/etc/uv/uv.toml` (uv's system-level configuration): a default `[[index]]`;
- npm: `/etc/npmrc`: `registry` when the config has an npm upstream, else the proxy
  and the CA bundle (the registry's host must then be one cachesrv intercepts);
- go: `/etc/profile.d/cachesrv-go.sh` (or `go env -w`): `GOPROXY` at the cache only and
  `GONOPROXY=none`;
- cargo: `$CARGO_HOME/config.toml` (`~/.cargo/config.toml`): crates.io replaced by the
  cache's sparse registry;
- snap: a systemd drop-in for snapd with the store URLs (`SNAPPY_FORCE_API_URL`...).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable

from .config import Config
from .errors import ConfigError
from .wrapenv import (
    Server,
    apt_offline_lines,
    apt_proxy_lines,
    cargo_config_text,
    cargo_registry,
    first_upstream,
)

KINDS = ("apt", "pip", "uv", "npm", "go", "cargo", "snap")
#: Where a machine keeps the cache's CA once trusted (Debian's update-ca-certificates).
CA_FILE = "/usr/local/share/ca-certificates/cachesrv.crt"
SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
#: The host npm reaches when no upstream stands in for its registry.
NPM_REGISTRY_HOST = "registry.npmjs.org"


def default_server(config: Config) -> Server:
    """`http://<server.listen>`; a wildcard address becomes this machine's host name."""
    host, _, port = config.server.listen.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    return Server.parse(f"http://{f'[{host}]' if ':' in host else host}:{port}")


def client_config(kind: str, config: Config, server: Server, *, offline: bool) -> str:
    """The drop-in file for `kind` (one of `KINDS`), starting with a comment naming
    where it goes."""
    render = _RENDERERS.get(kind)
    if render is None:
        raise ConfigError(f"unknown client {kind!r}: use one of {', '.join(KINDS)}")
    return render(config, server, offline)


def _command(kind: str, server: Server, offline: bool) -> str:
    return f"cachesrv client-config {kind} --server {server.url}" + (
        " --offline" if offline else ""
    )


def _ca_hint(server: Server, comment: str) -> list[str]:
    return [
        f"{comment} Trust the cache's CA once per machine (`cachesrv ca cert` on the server",
        f"{comment} prints the same PEM):",
        f"{comment}   curl -fsS {server.url}/_cachesrv/ca.pem -o {CA_FILE}",
        f"{comment}   update-ca-certificates",
    ]


def _apt(config: Config, server: Server, offline: bool) -> str:
    path = "/etc/apt/apt.conf.d/99cachesrv"
    apt_upstreams = [u for u in config.upstreams.values() if u.kind == "apt"]
    lines = [
        f"// {path}",
        f"// apt through the cache at {server.url}: {_command('apt', server, offline)}",
        "// Named 99 to be read after the other snippets, so that these settings win.",
        "//",
        "// The cache serves the archives of its apt upstreams; sources naming them stay:",
        *(f"//   {u.name}: {u.url}" for u in apt_upstreams),
        "// Or leave out the proxy lines and name the cache in the sources instead:",
        *(f"//   deb {server.url}/{u.name} SUITE COMPONENT..." for u in apt_upstreams),
        *apt_proxy_lines(server.proxy(None)),
        "// https:// sources reach the cache as CONNECT, answered with its local CA.",
        *_ca_hint(server, "//"),
        "// apt then trusts it through the system's CAs; to name a bundle instead:",
        f'//   Acquire::https::CAInfo "{SYSTEM_BUNDLE}";',
    ]
    if offline:
        lines += [
            "// Offline the cache serves the Release files it recorded, however old: accept",
            "// them past their Valid-Until, and on a clock behind the archive's (Check-Date",
            '// "false" turns off every time check of apt, Valid-Until included).',
            *apt_offline_lines(),
        ]
    else:
        lines.append(f"// Offline sites: {_command('apt', server, True)}")
    return "\n".join(lines) + "\n"


def _pypi_index(config: Config, server: Server, kind: str) -> str:
    pypi = first_upstream(config, "pypi")
    if pypi is None:
        raise ConfigError(
            f"the config has no upstream of kind 'pypi' for {kind} to use "
            '(add one: [upstreams.pypi] kind = "pypi")'
        )
    return f"{server.url}/{pypi}/simple/"


def _pip(config: Config, server: Server, offline: bool) -> str:
    index = _pypi_index(config, server, "pip")
    return (
        "# /etc/pip.conf\n"
        f"# pip through the cache at {server.url}: {_command('pip', server, offline)}\n"
        "# (one user: ~/.config/pip/pip.conf; one shell: PIP_INDEX_URL, PIP_TRUSTED_HOST)\n"
        "# trusted-host: pip refuses a plain-HTTP index on another host without it.\n"
        "[global]\n"
        f"index-url = {index}\n"
        f"trusted-host = {server.netloc}\n"
    )


def _uv(config: Config, server: Server, offline: bool) -> str:
    index = _pypi_index(config, server, "uv")
    return (
        "# /etc/uv/uv.toml\n"
        f"# uv through the cache at {server.url}: {_command('uv', server, offline)}\n"
        "# (uv's system-level configuration; one user: ~/.config/uv/uv.toml; one project:\n"
        "# [[tool.uv.index]] in pyproject.toml; one shell: UV_DEFAULT_INDEX, UV_INSECURE_HOST)\n"
        f"allow-insecure-host = [{json.dumps(server.netloc)}]\n"
        "\n"
        "[[index]]\n"
        f"url = {json.dumps(index)}\n"
        "default = true\n"
    )


def _npm(config: Config, server: Server, offline: bool) -> str:
    head = [
        "# /etc/npmrc",
        f"# npm through the cache at {server.url}: {_command('npm', server, offline)}",
        "# (npm's global config, where `npm config get globalconfig` points; one user:",
        "# ~/.npmrc)",
    ]
    npm = first_upstream(config, "npm")
    if npm is not None:
        lines = [*head, f"registry={server.url}/{npm}/"]
        if offline:
            lines += ["update-notifier=false", "audit=false", "fund=false"]
        return "\n".join(lines) + "\n"
    intercepted = config.tls.intercepts(NPM_REGISTRY_HOST)
    lines = [
        *head,
        "# The config has no npm upstream: npm reaches its registry through the cache as",
        "# a proxy, and the cache answers CONNECT with its local CA.",
    ]
    if not intercepted:
        lines.append(f"# The cache refuses {NPM_REGISTRY_HOST} until its [tls] intercept lists it.")
    lines += [
        *_ca_hint(server, "#"),
        f"proxy={server.proxy(None)}",
        f"https-proxy={server.proxy(None)}",
        f"cafile={SYSTEM_BUNDLE}",
    ]
    return "\n".join(lines) + "\n"


def _go(config: Config, server: Server, offline: bool) -> str:
    goproxy = _needs(config, "goproxy", "go", '[upstreams.goproxy] kind = "goproxy"')
    url = f"{server.url}/{goproxy}"
    return (
        "# /etc/profile.d/cachesrv-go.sh\n"
        f"# go through the cache at {server.url}: {_command('go', server, offline)}\n"
        "# (one user instead: go env -w GOPROXY=... GONOPROXY=none)\n"
        "# The cache only, no `direct`: a module it lacks is a clear miss, never a clone.\n"
        "# The checksum database is asked through it too (/sumdb/); for modules it cannot\n"
        "# know (private ones) set GONOSUMDB=<their path prefixes>.\n"
        f"export GOPROXY={url}\n"
        "export GONOPROXY=none\n"
    )


def _cargo(config: Config, server: Server, offline: bool) -> str:
    _needs(config, "cargo", "cargo", '[upstreams.crates] kind = "cargo"')
    registry = cargo_registry(server, seed=None, config=config)
    assert registry is not None
    head = (
        "# $CARGO_HOME/config.toml (~/.cargo/config.toml; keep your other settings in it)\n"
        f"# cargo through the cache at {server.url}: {_command('cargo', server, offline)}\n"
    )
    return head + cargo_config_text("", registry)


def _needs(config: Config, kind: str, client: str, example: str) -> str:
    name = first_upstream(config, kind)
    if name is None:
        raise ConfigError(
            f"the config has no upstream of kind {kind!r} for {client} to use (add one: {example})"
        )
    return name


def _snap(config: Config, server: Server, offline: bool) -> str:
    snap = first_upstream(config, "snap")
    if snap is None:
        raise ConfigError(
            "the config has no upstream of kind 'snap' for snapd to use "
            '(add one: [upstreams.snapstore] kind = "snap")'
        )
    store = f"{server.url}/{snap}/"
    return (
        "# /etc/systemd/system/snapd.service.d/cachesrv.conf\n"
        f"# snapd through the cache at {server.url}: {_command('snap', server, offline)}\n"
        "# Then: systemctl daemon-reload && systemctl restart snapd.service\n"
        "# `snap download`, snapcraft and image tools run as the user and read the same\n"
        "# variables from their environment:\n"
        f"#   export SNAPPY_FORCE_API_URL={store} SNAPPY_FORCE_SAS_URL={store}\n"
        f"#   export UBUNTU_STORE_URL={store} SNAPPY_STORE_NO_CDN=1\n"
        "# Or, instead of this file, snapd's own proxy settings (HTTPS through the cache's CA):\n"
        f"#   snap set system proxy.http={server.proxy(None)} proxy.https={server.proxy(None)}\n"
        '#   snap set system store-certs.cachesrv="$(curl -fsS '
        f'{server.url}/_cachesrv/ca.pem)"\n'
        "[Service]\n"
        f"Environment=SNAPPY_FORCE_API_URL={store}\n"
        f"Environment=SNAPPY_FORCE_SAS_URL={store}\n"
        "Environment=SNAPPY_STORE_NO_CDN=1\n"
    )


_RENDERERS: dict[str, Callable[[Config, Server, bool], str]] = {
    "apt": _apt,
    "pip": _pip,
    "uv": _uv,
    "npm": _npm,
    "go": _go,
    "cargo": _cargo,
    "snap": _snap,
}
