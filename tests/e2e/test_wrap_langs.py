"""npm, go and cargo builds under `cachesrv wrap`: recorded online in seed `b1`, then
rebuilt `--offline --strict` from a fresh project and fresh client caches with no
request reaching the upstream.

Each ecosystem has its own fake upstream, proven with the real client
(tests/fakes/npmreg.py, goproxy.py, cargoreg.py), and a config naming only that
upstream. The client's environment is shielded from the machine as the client helpers
do (tests/fakes/npmclient.py, goclient.py, cargoclient.py), but without the settings
the wrapper itself provides (`npm_config_registry`, `GOPROXY`, `CARGO_HOME`, the proxy
variables): what the build gets comes from `cachesrv wrap` alone (docs/build-wrapper.md,
"What the build gets").
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from cachesrv.store import Store
from tests.conftest import CACHESRV, REPO, config_text
from tests.fakes.cargoclient import (
    ancestor_configs,
    cargo_binary,
    cargo_env,
    cargo_or_skip,
    write_bin_crate,
)
from tests.fakes.cargoreg import FakeCargoRegistry, build_crate_bytes, index_path
from tests.fakes.goclient import GO, go_env, write_main_module
from tests.fakes.goproxy import FakeGoProxy
from tests.fakes.npmclient import npm_binary, npm_env, project
from tests.fakes.npmreg import FakeNpmRegistry, make_package

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

SEED = "b1"
#: What the wrapper sets (or removes) itself: never in the environment given to it.
_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy")
_WRAP_SETS = frozenset(
    {"npm_config_registry", "npm_config_proxy", "npm_config_https_proxy", "npm_config_noproxy"}
    | {"GOPROXY", "GONOPROXY", "CARGO_HOME", "APT_CONFIG"}
)


@dataclass
class Wrapped:
    proc: subprocess.CompletedProcess[str]

    @property
    def summary(self) -> str:
        """The wrapper's last line on stderr."""
        lines = self.proc.stderr.strip().splitlines()
        return lines[-1] if lines else ""

    def check(self) -> Wrapped:
        out = f"--- stdout ---\n{self.proc.stdout}\n--- stderr ---\n{self.proc.stderr}"
        assert self.proc.returncode == 0, out
        assert self.summary.startswith("cachesrv wrap: exit 0;"), out
        return self


def wrap_env(client: Mapping[str, str]) -> dict[str, str]:
    """`client` (a shielded client environment) without anything the wrapper provides,
    without cachesrv settings, and with this checkout's cachesrv importable."""
    env = {
        k: v
        for k, v in client.items()
        if k.lower() not in _PROXY_VARS
        and k not in _WRAP_SETS
        and k.upper() not in ("NPM_CONFIG_REGISTRY", "NPM_CONFIG_NOPROXY")
        and not k.startswith("CACHESRV_")
    }
    env["PYTHONPATH"] = str(REPO)
    return env


def wrap(
    config: Path,
    store: Path,
    *args: str,
    command: list[str],
    cwd: Path,
    env: Mapping[str, str],
) -> Wrapped:
    """`cachesrv wrap --config C --store S ARGS --seed b1 -- COMMAND` in `cwd`."""
    cmd = [*CACHESRV, "wrap", "--config", str(config), "--store", str(store), *args]
    proc = subprocess.run(
        [*cmd, "--seed", SEED, "--", *command],
        cwd=cwd,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=150,
        stdin=subprocess.DEVNULL,
    )
    return Wrapped(proc)


def seed_keys(store: Path) -> set[str]:
    opened = Store(store)
    try:
        return set(opened.index.seed_keys(SEED))
    finally:
        opened.close()


def assert_offline_summary(wrapped: Wrapped, entries: int) -> None:
    """Every request of the offline build was a hit on the seed; nothing missed."""
    expected = (
        f"cachesrv wrap: exit 0; {entries} hits, 0 newly recorded, 0 offline misses; "
        f"seed {SEED} ({entries} entries)"
    )
    assert wrapped.summary == expected, wrapped.proc.stderr


# -- npm ---------------------------------------------------------------------------------

UTIL = "@scope/util"
LEFTPAD = "leftpad-ish"


def test_npm_install_under_wrap_online_then_offline(tmp_path: Path) -> None:
    npm = npm_binary()
    if npm is None:
        pytest.skip("npm is not installed")
    packages = tmp_path / "packages"
    tarballs = [
        make_package(packages, UTIL, "1.2.0"),
        make_package(packages, UTIL, "2.0.0"),
        make_package(packages, LEFTPAD, "1.1.0", {UTIL: "1.x"}),
    ]
    store = tmp_path / "store"
    with FakeNpmRegistry(tmp_path / "registry") as registry:
        for tgz in tarballs:
            registry.publish(tgz)
        config = tmp_path / "cachesrv.toml"
        config.write_text(config_text({"npm": ("npm", registry.url)}))

        def build(name: str, *args: str) -> tuple[Wrapped, Path]:
            """`npm install` of a fresh project with a fresh npm cache, under wrap."""
            app = tmp_path / name
            project(app, {LEFTPAD: "^1.0.0"})
            # npm_env's registry is a placeholder: wrap_env drops it, the wrapper sets it.
            env = wrap_env(
                npm_env(tmp_path / f"npm-{name}", "http://127.0.0.1:9/", trap_proxy=False)
            )
            return wrap(config, store, *args, command=[npm, "install"], cwd=app, env=env), app

        online, app1 = build("online")
        online.check()
        assert installed_npm(app1) == {LEFTPAD: "1.1.0", UTIL: "1.2.0"}
        assert sorted(registry.raw_paths()) == [
            "/@scope%2Futil",
            "/@scope/util/-/util-1.2.0.tgz",
            "/leftpad-ish",
            "/leftpad-ish/-/leftpad-ish-1.1.0.tgz",
        ]
        recorded = seed_keys(store)
        assert len(recorded) == 4, recorded
        assert f"4 newly recorded, 0 offline misses; seed {SEED} (4 entries)" in online.summary

        registry.reset_log()
        offline, app2 = build("offline", "--offline", "--strict")
        offline.check()
        assert registry.count() == 0
        assert installed_npm(app2) == {LEFTPAD: "1.1.0", UTIL: "1.2.0"}
        assert_offline_summary(offline, 4)


def installed_npm(app: Path) -> dict[str, str]:
    found = {}
    for manifest in (app / "node_modules").glob("**/package.json"):
        doc = json.loads(manifest.read_text())
        found[doc["name"]] = doc["version"]
    return found


# -- go ----------------------------------------------------------------------------------

GREET = "example.test/greet"
WORDS = "example.test/Upper/words"
SUMDB = "sum.example.test"


def test_go_build_under_wrap_online_then_offline(tmp_path: Path) -> None:
    if GO is None:
        pytest.skip("needs the go command (Debian: golang-go)")
    store = tmp_path / "store"
    gocache = tmp_path / "gocache"  # build results only (content-keyed); no downloads
    with FakeGoProxy(sumdb=SUMDB) as proxy:
        proxy.add_module(
            WORDS,
            "v0.2.0",
            {"words.go": 'package words\n\nfunc Word() string { return "world" }\n'},
        )
        proxy.add_module(
            GREET,
            "v1.1.0",
            {
                "greet.go": 'package greet\n\nimport "example.test/Upper/words"\n\n'
                'func Hello() string { return "hello, " + words.Word() }\n'
            },
            requires={WORDS: "v0.2.0"},
        )
        assert proxy.sumdb is not None
        config = tmp_path / "cachesrv.toml"
        config.write_text(config_text({"goproxy": ("goproxy", proxy.url)}))

        def build(name: str, *args: str) -> tuple[Wrapped, Path, dict[str, str]]:
            """`go build` of a fresh main module, fresh GOPATH/GOMODCACHE, under wrap."""
            main = write_main_module(
                tmp_path / name, {GREET: "v1.1.0"}, {GREET: "Hello", WORDS: "Word"}
            )
            env = go_env(tmp_path / f"go-{name}", "unused", gocache=gocache, trap_proxy=False)
            assert proxy.sumdb is not None
            env["GOSUMDB"] = proxy.sumdb.vkey
            env = wrap_env(env)
            assert "GOPROXY" not in env and "GONOPROXY" not in env
            cmd = [GO, "build", "-o", "prog", "."]
            return wrap(config, store, *args, command=cmd, cwd=main, env=env), main, env

        online, main1, env1 = build("online")
        online.check()
        assert run(main1 / "prog") == "hello, world\nworld\n"
        prefix = f"/sumdb/{SUMDB}/"
        assert sorted(proxy.paths()) == sorted(
            [f"{prefix}lookup/example.test/!upper/words@v0.2.0"]
            + [f"{prefix}lookup/example.test/greet@v1.1.0"]
            + [f"{prefix}supported", f"{prefix}tile/8/0/000.p/2"]
            + [
                f"/{mod}/@v/{v}.{ext}"
                for mod, v in [(GREET, "v1.1.0"), ("example.test/!upper/words", "v0.2.0")]
                for ext in ("info", "mod", "zip")
            ]
        )
        assert len(seed_keys(store)) == 10
        assert f"10 newly recorded, 0 offline misses; seed {SEED} (10 entries)" in online.summary
        assert (Path(env1["GOMODCACHE"]) / f"{GREET}@v1.1.0").is_dir()
        gosum = (main1 / "go.sum").read_text()

        proxy.reset_log()
        offline, main2, env2 = build("offline", "--offline", "--strict")
        offline.check()
        assert proxy.count() == 0
        assert run(main2 / "prog") == "hello, world\nworld\n"
        assert (main2 / "go.sum").read_text() == gosum  # verified against the sumdb again
        assert env2["GOMODCACHE"] != env1["GOMODCACHE"]
        assert_offline_summary(offline, 10)


def run(binary: Path) -> str:
    ran = subprocess.run([binary], capture_output=True, text=True, timeout=30, check=True)
    return ran.stdout


# -- cargo -------------------------------------------------------------------------------


def test_cargo_build_under_wrap_online_then_offline(tmp_path: Path) -> None:
    cargo_or_skip()
    cargo = cargo_binary()
    assert cargo is not None
    store = tmp_path / "store"
    user_cargo_home = tmp_path / "user-cargo-home"  # empty: no machine config merged in
    user_cargo_home.mkdir()
    with FakeCargoRegistry() as reg:
        reg.add_crate(build_crate_bytes("leaf", "0.1.0"))
        reg.add_crate(build_crate_bytes("leaf", "0.2.0"))
        reg.add_crate(build_crate_bytes("mid", "1.0.0", {"leaf": "^0.2"}))
        config = tmp_path / "cachesrv.toml"
        upstream: dict[str, object] = {
            "kind": "cargo",
            "url": reg.index_url.rstrip("/"),
            "file_hosts": [reg.dl_origin.split("://", 1)[1]],
        }
        config.write_text(config_text({"crates": upstream}))

        def build(name: str, *args: str) -> tuple[Wrapped, Path]:
            """`cargo build` of a fresh bin crate with a fresh target dir, under wrap."""
            app = write_bin_crate(tmp_path / name, {"mid": "1"})
            client = cargo_env(tmp_path / f"cargo-{name}", trap_proxy=False)
            assert not ancestor_configs(app, client)
            env = wrap_env(client)
            env["CARGO_HOME"] = str(user_cargo_home)  # what the wrapper reads, then replaces
            wrapped = wrap(config, store, *args, command=[str(cargo), "build"], cwd=app, env=env)
            return wrapped, Path(client["CARGO_TARGET_DIR"])

        online, target1 = build("online")
        online.check()
        assert run(target1 / "debug" / "app") == "mid 1.0.0 -> [leaf 0.2.0]\n"
        assert sorted(reg.paths()) == sorted(
            [
                "/index/config.json",
                f"/index/{index_path('mid')}",
                f"/index/{index_path('leaf')}",
                "/crates/leaf/0.2.0/download",
                "/crates/mid/1.0.0/download",
            ]
        )
        assert len(seed_keys(store)) == 5
        assert f"5 newly recorded, 0 offline misses; seed {SEED} (5 entries)" in online.summary
        assert not any(user_cargo_home.iterdir())  # the wrapper's CARGO_HOME was used

        reg.reset_log()
        offline, target2 = build("offline", "--offline", "--strict")
        offline.check()
        assert reg.requests == []
        assert target2 != target1
        assert "Compiling app" in offline.proc.stderr
        assert run(target2 / "debug" / "app") == "mid 1.0.0 -> [leaf 0.2.0]\n"
        assert_offline_summary(offline, 5)
