"""`cachesrv wrap`: exit status, signals, --print-env, option errors, the generated apt
configuration, and the server side (proxy-form requests to the server itself, the seed
in proxy credentials). Real apt-get and pip builds are in tests/e2e/test_wrap.py."""

from __future__ import annotations

import base64
import http.client
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from cachesrv.config import load_config
from cachesrv.wrap import summary
from cachesrv.wrapenv import (
    AptPaths,
    Server,
    apt_config_text,
    cargo_config_text,
    https_sources,
    rewrite_https,
    wrap_variables,
)
from tests.conftest import CACHESRV, REPO, CachesrvProcess, config_text
from tests.fakes.upstream import FakeUpstream


def _env(tmp: Path) -> dict[str, str]:
    """The test's environment without any cachesrv or proxy settings, a private HOME."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CACHESRV_") and "proxy" not in k.lower() and k != "APT_CONFIG"
    }
    env.update(HOME=str(tmp / "home"), XDG_CACHE_HOME=str(tmp / "cache"), PYTHONPATH=str(REPO))
    return env


def _wrap(tmp: Path, *args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        [*CACHESRV, "wrap", "--store", str(tmp / "store"), *args],
        env=_env(tmp),
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        **kw,
    )


# -- the wrapped command --------------------------------------------------------------


@pytest.mark.parametrize("status", [0, 1, 42])
def test_exit_status_is_the_commands(tmp_path: Path, status: int) -> None:
    r = _wrap(tmp_path, "--", "sh", "-c", f'echo "via $CACHESRV_URL"; exit {status}')
    assert r.returncode == status, r.stderr
    assert r.stdout.startswith("via http://127.0.0.1:")
    assert r.stderr.strip().splitlines()[-1] == (
        f"cachesrv wrap: exit {status}; 0 hits, 0 newly recorded, 0 offline misses"
    )


def test_a_command_that_cannot_start_is_127(tmp_path: Path) -> None:
    r = _wrap(tmp_path, "--", str(tmp_path / "no-such-build"))
    assert r.returncode == 127
    assert r.stderr == f"cachesrv wrap: cannot run {tmp_path / 'no-such-build'}: not found\n"
    assert not (tmp_path / "store").exists()  # found out before starting a server


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_a_signal_to_the_wrapper_ends_the_build_and_the_server(
    tmp_path: Path, sig: signal.Signals
) -> None:
    build = "import os, signal, time; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    build += "print(os.getpid(), os.environ['CACHESRV_URL'], flush=True); "
    build += "time.sleep(120)"  # the build being interrupted, not a wait for anything
    proc = subprocess.Popen(
        [*CACHESRV, "wrap", "--store", str(tmp_path / "store"), "--", sys.executable, "-c", build],
        env=_env(tmp_path),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        started = proc.stdout.readline().split()
        assert len(started) == 2, proc.stderr.read() if proc.poll() is not None else started
        pid_text, url = started
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + sig, err
    assert f"cachesrv wrap: exit {128 + sig};" in err and "Traceback" not in err
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_text), 0)
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, int(port)), timeout=10).close()
    assert not _serving(tmp_path / "store"), "the private server outlived the wrapper"


def _serving(store: Path) -> list[str]:
    """Command lines of live `cachesrv serve` processes over `store`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [a.decode(errors="replace") for a in argv]
        if "serve" in words and str(store) in words:
            found.append(" ".join(words))
    return found


# -- options ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--isolate", "--", "true"], "--isolate needs --offline"),
        (
            ["--offline", "--isolate", "--server", "http://127.0.0.1:9", "--", "true"],
            "drop --server",
        ),
        (["--offline", "--strict", "--", "true"], "--strict serves one seed only"),
        (["--strict", "--seed", "b", "--", "true"], "--strict applies to offline serving"),
        (["--seed", "../x", "--", "true"], "is not a seed name"),
        (["--server", "https://cache:3142", "--", "true"], "must be an http:// URL"),
        ([], "no command to run"),
    ],
)
def test_option_errors_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    r = _wrap(tmp_path, *args)
    assert r.returncode == 1
    assert message in r.stderr and r.stderr.strip().count("\n") == 0, r.stderr
    assert not (tmp_path / "store").exists()  # refused before any server started


def test_a_server_that_cannot_start_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "store").write_text("a file, not a store")
    r = _wrap(tmp_path, "--", "true")
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("cachesrv: error: the private cachesrv server did not start: ")
    assert "Not a directory" in r.stderr


def test_offline_against_an_online_server_is_refused(
    tmp_path: Path, cachesrv: Callable[..., CachesrvProcess]
) -> None:
    server = cachesrv("--store", tmp_path / "shared")
    r = _wrap(tmp_path, "--server", server.url, "--offline", "--", "true")
    assert r.returncode == 1 and f"the server at {server.url} is online" in r.stderr


def test_print_env_points_every_client_at_the_server(tmp_path: Path) -> None:
    env = _env(tmp_path)
    env.update(no_proxy="deb.debian.org", PIP_EXTRA_INDEX_URL="https://elsewhere/simple")
    r = subprocess.run(
        [*CACHESRV, "wrap", "--server", "http://127.0.0.1:3142", "--seed", "b1", "--print-env"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    exported = {}
    for line in r.stdout.splitlines():
        if line.startswith("export "):
            name, _, value = line.removeprefix("export ").partition("=")
            exported[name] = shlex.split(value)[0]
    index = "http://127.0.0.1:3142/@b1/pypi/simple/"
    snap = "http://127.0.0.1:3142/@b1/snapstore/"
    assert exported["PIP_INDEX_URL"] == exported["UV_DEFAULT_INDEX"] == index
    assert exported["UV_INDEX_URL"] == index
    assert exported["PIP_TRUSTED_HOST"] == exported["UV_INSECURE_HOST"] == "127.0.0.1:3142"
    assert exported["http_proxy"] == exported["HTTP_PROXY"] == "http://seed:b1@127.0.0.1:3142/"
    assert exported["SNAPPY_FORCE_API_URL"] == exported["SNAPPY_FORCE_SAS_URL"] == snap
    assert exported["UBUNTU_STORE_URL"] == snap and exported["SNAPPY_STORE_NO_CDN"] == "1"
    assert exported["CACHESRV_URL"] == "http://127.0.0.1:3142"
    assert exported["CACHESRV_SEED"] == "b1"
    for name in ("no_proxy", "NO_PROXY", "PIP_EXTRA_INDEX_URL"):
        assert f"unset {name}" in r.stdout.splitlines()
    if "APT_CONFIG" in exported:  # apt is installed
        apt = Path(exported["APT_CONFIG"]).read_text()
        assert 'Acquire::http::Proxy "http://seed:b1@127.0.0.1:3142/";' in apt
        assert "Check-Valid-Until" not in apt  # online
        assert Path(exported["APT_CONFIG"]).is_relative_to(tmp_path / "cache")
    # npm, Go and Cargo (issue 14): the cache only, nothing that goes around it.
    assert exported["npm_config_registry"] == "http://127.0.0.1:3142/@b1/npm/"
    assert exported["npm_config_update_notifier"] == "false"
    assert exported["npm_config_audit"] == exported["npm_config_fund"] == "false"
    assert exported["GOPROXY"] == "http://127.0.0.1:3142/@b1/goproxy"  # no ",direct"
    assert exported["GONOPROXY"] == "none"
    cargo = Path(exported["CARGO_HOME"]) / "config.toml"
    assert tomllib.loads(cargo.read_text()) == {
        "source": {
            "crates-io": {"replace-with": "cachesrv"},
            "cachesrv": {"registry": "sparse+http://127.0.0.1:3142/@b1/crates/"},
        }
    }


def test_print_env_keeps_the_users_cargo_settings(tmp_path: Path) -> None:
    env = _env(tmp_path)
    home = tmp_path / "cargo"
    home.mkdir()
    (home / "config.toml").write_text(
        '[build]\njobs = 3\n\n[source.crates-io]\nreplace-with = "vendored"\n\n'
        '[source."vendored"]\ndirectory = "vendor"\n\n[net]\nretry = 7\n'
    )
    env["CARGO_HOME"] = str(home)
    r = subprocess.run(
        [*CACHESRV, "wrap", "--server", "http://127.0.0.1:3142", "--print-env"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    line = next(x for x in r.stdout.splitlines() if x.startswith("export CARGO_HOME="))
    generated = Path(shlex.split(line.partition("=")[2])[0])
    assert generated != home and generated.is_relative_to(tmp_path / "cache")
    doc = tomllib.loads((generated / "config.toml").read_text())
    assert doc["build"] == {"jobs": 3} and doc["net"] == {"retry": 7}
    assert doc["source"]["crates-io"] == {"replace-with": "cachesrv"}
    assert doc["source"]["vendored"] == {"directory": "vendor"}
    assert doc["source"]["cachesrv"]["registry"] == "sparse+http://127.0.0.1:3142/crates/"
    assert "[build]" in (home / "config.toml").read_text()  # the user's file is untouched


def test_cargo_config_drops_only_the_tables_it_replaces() -> None:
    user = (
        "[source.crates-io] # theirs\nreplace-with = 'x'\n"
        "[ source . cachesrv ]\nregistry = 'old'\n[[bin]]\nname = 'a'\n"
    )
    doc = tomllib.loads(cargo_config_text(user, "sparse+http://c/crates/"))
    assert doc["source"] == {
        "crates-io": {"replace-with": "cachesrv"},
        "cachesrv": {"registry": "sparse+http://c/crates/"},
    }
    assert doc["bin"] == [{"name": "a"}]


# -- the generated apt configuration ------------------------------------------------------


def test_apt_config_reads_the_system_first_and_sets_the_cache_last(tmp_path: Path) -> None:
    incoming = tmp_path / "private.conf"
    incoming.write_text('Acquire::http::Proxy "DIRECT";\n')
    parts = tmp_path / "apt.conf.d"
    parts.mkdir()
    text = apt_config_text(
        incoming=incoming,
        paths=AptPaths(parts=parts, main=tmp_path / "absent.conf"),
        proxy="http://127.0.0.1:1/",
        offline=True,
    )
    lines = text.splitlines()
    assert lines.index(f'#include "{incoming}";') < lines.index(f'#include "{parts}/";')
    assert lines.index(f'#include "{parts}/";') < lines.index('Dir::Etc::Parts "/dev/null";')
    assert lines.index("#clear Acquire::http::Proxy;") < lines.index(
        'Acquire::http::Proxy "http://127.0.0.1:1/";'
    )
    assert "absent.conf" not in text
    for setting in ('Check-Valid-Until "false"', 'Languages "none"', 'PDiffs "false"'):
        assert f"Acquire::{setting};" in lines
    online = apt_config_text(
        incoming=None, paths=AptPaths(), proxy="http://127.0.0.1:1/", offline=False
    )
    assert "Check-Valid-Until" not in online and "#include" not in online


def test_https_sources_are_rewritten_in_both_formats(tmp_path: Path) -> None:
    one_line = (
        "# deb https://commented.example/debian stable main\n"
        "deb [signed-by=/k.gpg] https://repo.example/debian stable main\n"
        "deb-src https://repo.example/debian stable main\n"
        "deb http://deb.debian.org/debian stable main\n"
    )
    assert rewrite_https(one_line, deb822=False) == (
        "# deb https://commented.example/debian stable main\n"
        "deb [signed-by=/k.gpg] http://HTTPS///repo.example/debian stable main\n"
        "deb-src http://HTTPS///repo.example/debian stable main\n"
        "deb http://deb.debian.org/debian stable main\n"
    )
    deb822 = (
        "Types: deb\n"
        "URIs: https://a.example/debian http://b.example/debian\n"
        " https://c.example/debian\n"
        "Suites: stable\n"
        "Signed-By: /k.gpg\n"
        "X-Note: https://not-a-uri.example/\n"
    )
    assert rewrite_https(deb822, deb822=True) == (
        "Types: deb\n"
        "URIs: http://HTTPS///a.example/debian http://b.example/debian\n"
        " http://HTTPS///c.example/debian\n"
        "Suites: stable\n"
        "Signed-By: /k.gpg\n"
        "X-Note: https://not-a-uri.example/\n"
    )
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text("deb http://deb.debian.org/debian stable main\n")
    (tmp_path / "sources.list.d" / "extra.sources").write_text(deb822)
    (tmp_path / "sources.list.d" / "ignored.txt").write_text(one_line)
    paths = AptPaths(
        source_list=tmp_path / "sources.list", source_parts=tmp_path / "sources.list.d"
    )
    rewritten = https_sources(paths)
    assert rewritten is not None and set(rewritten) == {
        "sources.list",
        "sources.list.d/extra.sources",
    }
    (tmp_path / "sources.list.d" / "extra.sources").unlink()
    assert https_sources(paths) is None  # no https: apt reads the sources where they are


def test_a_server_named_by_host_name_is_reached_directly(tmp_path: Path) -> None:
    config = load_config(None, store=tmp_path / "s")
    named = wrap_variables(
        Server.parse("http://cache.example:3142/"), seed=None, config=config, apt_config=None
    )
    assert named["no_proxy"] == "cache.example" and named["http_proxy"] == (
        "http://cache.example:3142/"
    )
    by_address = wrap_variables(
        Server.parse("http://[::1]:3142"), seed="s", config=config, apt_config=None
    )
    assert "no_proxy" not in by_address
    assert by_address["PIP_INDEX_URL"] == "http://[::1]:3142/@s/pypi/simple/"


def test_summary_counts_only_this_builds_requests() -> None:
    before = {"requests": {"hit": 5, "recorded": 2, "offline_miss": 1}}
    after = {"requests": {"hit": 6, "recorded": 4, "offline_miss": 3, "refused": 1}}
    line = summary(
        1,
        before=before,
        after=after,
        seed="b1",
        seeds=[{"name": "b1", "entries": 7, "bytes": 10}],
        misses_hint="cachesrv misses --since X",
    )
    assert line == (
        "cachesrv wrap: exit 1; 1 hit, 2 newly recorded, 2 offline misses "
        "(list them: cachesrv misses --since X), 1 refused or failed upstream; seed b1 (7 entries)"
    )


# -- the server side: proxy-form requests ------------------------------------------------


def _get(port: int, target: str, **headers: str) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", target, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.getheader("X-Cachesrv-Status") or "", resp.read()
    finally:
        conn.close()


def _basic(credentials: str) -> str:
    return "Basic " + base64.b64encode(credentials.encode()).decode()


def test_proxy_credentials_name_the_seed_and_requests_to_the_server_itself_are_served(
    tmp_path: Path, upstream: FakeUpstream, cachesrv: Callable[..., CachesrvProcess]
) -> None:
    (upstream.root / "pool").mkdir()
    for name in ("a", "b", "c"):
        (upstream.root / "pool" / f"{name}.tar.gz").write_bytes(name.encode() * 100)
    config = tmp_path / "c.toml"
    config.write_text(config_text({"files": ("generic", upstream.url)}))
    server = cachesrv("--config", config, "--store", tmp_path / "store")

    # A proxy request, with the seed as proxy credentials (apt, curl, pip, uv, wget).
    target = f"{upstream.url}/pool/a.tar.gz"
    assert _get(server.port, target, **{"Proxy-Authorization": _basic("seed:s1")})[0] == 200
    # https via apt-cacher-ng's spelling: the same upstream (scheme is not matched).
    https_form = f"http://HTTPS///{upstream.url.removeprefix('http://')}/pool/b.tar.gz"
    assert _get(server.port, https_form, **{"Proxy-Authorization": _basic("seed:s1")})[0] == 200
    # Other credentials are not ours: no seed.
    assert _get(server.port, f"{upstream.url}/pool/c.tar.gz", **{
        "Proxy-Authorization": _basic("alice:secret")
    })[0] == 200  # fmt: skip
    # A request for one of the server's own URLs, through itself as the proxy
    # (PIP_INDEX_URL and http_proxy both name the server); a path seed wins.
    own = f"{server.url}/@s2/files/pool/a.tar.gz"
    status, outcome, body = _get(server.port, own, **{"Proxy-Authorization": _basic("seed:s1")})
    assert (status, outcome, body) == (200, "hit", b"a" * 100)
    status, _, body = _get(server.port, f"{server.url}/_cachesrv/api/v1/seeds")
    seeds = {s["name"]: s["entries"] for s in json.loads(body)}
    assert status == 200 and seeds == {"s1": 2, "s2": 1}

    bad = _get(server.port, target, **{"Proxy-Authorization": _basic("seed:../etc")})
    assert bad[0] == 400
    assert upstream.count("/pool/a.tar.gz") == 1  # fetched once, whatever the spelling
