"""`cachesrv client-config KIND`: each drop-in parses as its client reads it, names
where it goes, and carries the settings `cachesrv wrap` gives a build."""

from __future__ import annotations

import configparser
import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from cachesrv.clientconfig import KINDS, client_config, default_server
from cachesrv.config import Config, UpstreamConfig, load_config
from cachesrv.upstreams.apt import OFFLINE_SETTINGS
from cachesrv.wrapenv import AptPaths, Server, apt_config_text
from tests.conftest import run_cli

SERVER = "http://127.0.0.1:3142"
UPSTREAMS = {
    "debian": ("apt", "http://127.0.0.1:9/debian"),
    "pypi": ("pypi", "http://127.0.0.1:9/simple"),
    "snapstore": ("snap", "http://127.0.0.1:9"),
    "goproxy": ("goproxy", "http://127.0.0.1:9"),
    "crates": {"kind": "cargo", "url": "http://127.0.0.1:9/index"},
}
FIRST_LINE = {
    "apt": "// /etc/apt/apt.conf.d/99cachesrv",
    "pip": "# /etc/pip.conf",
    "uv": "# /etc/uv/uv.toml",
    "npm": "# /etc/npmrc",
    "go": "# /etc/profile.d/cachesrv-go.sh",
    "cargo": "# $CARGO_HOME/config.toml (~/.cargo/config.toml; keep your other settings in it)",
    "snap": "# /etc/systemd/system/snapd.service.d/cachesrv.conf",
}


@pytest.fixture
def config(write_config: Callable[..., Path]) -> Path:
    return write_config(UPSTREAMS)


def printed(config: Path, kind: str, *args: str) -> str:
    out = run_cli("client-config", kind, "--config", config, "--server", SERVER, *args).stdout
    assert out.splitlines()[0] == FIRST_LINE[kind]
    return out


def apt_dump(tmp_path: Path, dropin: str) -> str:
    """`apt-config dump` with the drop-in as the only snippet in Dir::Etc::Parts."""
    parts = tmp_path / "apt.conf.d"
    parts.mkdir(exist_ok=True)
    (parts / "99cachesrv").write_text(dropin)
    main = tmp_path / "apt.conf"
    main.write_text(f'Dir::Etc::Parts "{parts}/";\nDir::Etc::main "/dev/null";\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("APT_")}
    proc = subprocess.run(
        ["apt-config", "dump"],
        env={**env, "APT_CONFIG": str(main), "LC_ALL": "C"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0 and "E:" not in proc.stderr, proc.stderr
    return proc.stdout


@pytest.mark.skipif(shutil.which("apt-config") is None, reason="needs apt-config (Debian apt)")
def test_apt_dropin_parses_and_sets_the_proxy(tmp_path: Path, config: Path) -> None:
    online = apt_dump(tmp_path, printed(config, "apt", "--online"))
    for line in (
        'Acquire::http::Proxy "http://127.0.0.1:3142/";',
        'Acquire::https::Proxy "http://127.0.0.1:3142/";',
        'Acquire::http::Proxy-Auto-Detect "";',
        'Acquire::PDiffs "false";',
    ):
        assert line in online.splitlines()
    assert "Check-Valid-Until" not in online and "Check-Date" not in online
    assert "CAInfo" not in online  # a hint in a comment, not a setting

    dropin = printed(config, "apt", "--offline")
    offline = apt_dump(tmp_path, dropin)
    for line in OFFLINE_SETTINGS:
        assert line in offline.splitlines()
    assert "cachesrv ca cert" in dropin and "Acquire::https::CAInfo" in dropin
    assert f"deb {SERVER}/debian SUITE" in dropin  # the sources alternative


def test_offline_is_the_configs_mode_by_default(write_config: Callable[..., Path]) -> None:
    offline = write_config(UPSTREAMS, mode="offline")
    assert OFFLINE_SETTINGS[0] in printed(offline, "apt")
    assert OFFLINE_SETTINGS[0] not in printed(offline, "apt", "--online")


def test_wrapper_and_dropin_share_the_offline_settings() -> None:
    wrap = apt_config_text(incoming=None, paths=AptPaths(), proxy=SERVER + "/", offline=True)
    dropin = client_config("apt", Config(), Server.parse(SERVER), offline=True)
    for line in OFFLINE_SETTINGS:
        assert line in wrap.splitlines() and line in dropin.splitlines()


def test_pip_conf(tmp_path: Path, config: Path) -> None:
    text = printed(config, "pip")
    parsed = configparser.ConfigParser()
    parsed.read_string(text)
    assert parsed["global"]["index-url"] == f"{SERVER}/pypi/simple/"
    assert parsed["global"]["trusted-host"] == "127.0.0.1:3142"
    conf = tmp_path / "pip.conf"
    conf.write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"],
        env={**env, "PIP_CONFIG_FILE": str(conf)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"global.index-url='{SERVER}/pypi/simple/'" in listed.splitlines()


def test_uv_toml(tmp_path: Path, config: Path) -> None:
    text = printed(config, "uv")
    parsed = tomllib.loads(text)
    assert parsed["index"] == [{"url": f"{SERVER}/pypi/simple/", "default": True}]
    assert parsed["allow-insecure-host"] == ["127.0.0.1:3142"]
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is None:
        return
    # uv rejects unknown keys; read as system configuration, it asks the cache (offline
    # here: it only says where it would ask).
    etc = tmp_path / "xdg" / "uv"
    etc.mkdir(parents=True)
    (etc / "uv.toml").write_text(text)
    (tmp_path / "req.in").write_text("six\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("UV_")}
    env.update(XDG_CONFIG_DIRS=str(tmp_path / "xdg"), XDG_CONFIG_HOME=str(tmp_path / "home"))
    proc = subprocess.run(
        [uv, "pip", "compile", "--offline", "--no-cache", "-v", "req.in"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "Failed to parse" not in proc.stderr, proc.stderr
    assert f"Found system configuration in: {etc / 'uv.toml'}" in proc.stderr
    assert f"{SERVER}/pypi/simple/six/" in proc.stderr


def npmrc(text: str) -> dict[str, str]:
    settings = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith(("#", ";")):
            continue
        key, sep, value = line.partition("=")
        assert sep and key.strip() and value.strip(), line
        settings[key.strip()] = value.strip()
    return settings


def test_npmrc_proxy_without_an_npm_upstream(tmp_path: Path, config: Path) -> None:
    text = printed(config, "npm")
    assert npmrc(text) == {
        "proxy": f"{SERVER}/",
        "https-proxy": f"{SERVER}/",
        "cafile": "/etc/ssl/certs/ca-certificates.crt",
    }
    assert "[tls] intercept" in text  # the registry's host is not intercepted here
    npm = shutil.which("npm")
    if npm is not None:
        rc = tmp_path / "npmrc"
        rc.write_text(text)
        got = subprocess.run(
            [npm, "config", "get", "https-proxy", "--userconfig", str(rc)],
            env={**os.environ, "HOME": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout.strip()
        assert got == f"{SERVER}/"


def test_npmrc_registry_with_an_npm_upstream(tmp_path: Path) -> None:
    cfg = load_config(None, store=tmp_path / "store")
    npm = UpstreamConfig(name="npmjs", kind="npm", url="https://registry.npmjs.org")
    cfg = dataclasses.replace(cfg, upstreams={"npmjs": npm})
    text = client_config("npm", cfg, Server.parse(SERVER), offline=False)
    assert npmrc(text) == {"registry": f"{SERVER}/npmjs/"}
    offline = npmrc(client_config("npm", cfg, Server.parse(SERVER), offline=True))
    assert offline == {
        "registry": f"{SERVER}/npmjs/",
        "update-notifier": "false",
        "audit": "false",
        "fund": "false",
    }


def test_go_profile_sets_the_cache_only(config: Path, tmp_path: Path) -> None:
    script = tmp_path / "go.sh"
    script.write_text(printed(config, "go"))
    out = subprocess.run(
        ["sh", "-c", f'. "{script}" && echo "$GOPROXY|$GONOPROXY"'],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert out == f"{SERVER}/goproxy|none"


def test_cargo_config_replaces_crates_io(config: Path) -> None:
    doc = tomllib.loads(printed(config, "cargo"))
    assert doc == {
        "source": {
            "crates-io": {"replace-with": "cachesrv"},
            "cachesrv": {"registry": f"sparse+{SERVER}/crates/"},
        }
    }


def test_snapd_dropin(config: Path) -> None:
    text = printed(config, "snap")
    sections = [line for line in text.splitlines() if line.startswith("[")]
    assert sections == ["[Service]"]
    env = dict(
        line.removeprefix("Environment=").split("=", 1)
        for line in text.splitlines()
        if line.startswith("Environment=")
    )
    store = f"{SERVER}/snapstore/"
    assert env == {
        "SNAPPY_FORCE_API_URL": store,
        "SNAPPY_FORCE_SAS_URL": store,
        "SNAPPY_STORE_NO_CDN": "1",
    }
    body = [ln for ln in text.splitlines() if ln and not ln.startswith(("#", "[", "Env"))]
    assert body == []
    assert "snap set system proxy.http=" in text  # the alternative, as a comment


def test_every_kind_and_the_errors(config: Path, write_config: Callable[..., Path]) -> None:
    for kind in KINDS:
        printed(config, kind)
    bad = run_cli("client-config", "yum", "--config", config, check=False)
    assert bad.returncode != 0 and bad.stdout == ""
    assert bad.stderr.strip().splitlines() == [
        "cachesrv: error: unknown client 'yum': use one of apt, pip, uv, npm, go, cargo, snap"
    ]
    apt_only = write_config({"debian": ("apt", "http://127.0.0.1:9/debian")})
    for kind in ("pip", "uv", "snap", "go", "cargo"):
        r = run_cli("client-config", kind, "--config", apt_only, check=False)
        assert r.returncode == 1 and "no upstream of kind" in r.stderr, r.stderr
    r = run_cli("client-config", "apt", "--config", config, "--server", "ftp://x", check=False)
    assert r.returncode == 1 and "http:// URL" in r.stderr


def test_default_server_is_the_configs_listen(write_config: Callable[..., Path]) -> None:
    cfg = load_config(write_config(UPSTREAMS, listen="127.0.0.1:3150"))
    assert default_server(cfg).url == "http://127.0.0.1:3150"
    out = run_cli("client-config", "pip", "--config", write_config(UPSTREAMS, listen="[::1]:3151"))
    assert "index-url = http://[::1]:3151/pypi/simple/" in out.stdout
    wildcard = load_config(write_config(UPSTREAMS, listen="0.0.0.0:3142"))
    assert default_server(wildcard).url == f"http://{socket.gethostname()}:3142"
