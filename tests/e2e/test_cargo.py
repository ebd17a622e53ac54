"""Real cargo through cachesrv: record a sparse registry online, replay it offline.

A `cachesrv serve` subprocess stands in front of FakeCargoRegistry (index on one port,
downloads on another, like index.crates.io and static.crates.io); cargo (>= 1.68, else
the tests are skipped with the reason) replaces crates.io with
`sparse+http://127.0.0.1:PORT/crates/` and is shielded from the machine's own settings
and from any network but loopback (tests/fakes/cargoclient.py).
"""

from __future__ import annotations

import json
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CachesrvProcess, run_cli
from tests.fakes.cargoclient import (
    MIRROR,
    cargo_env,
    cargo_or_skip,
    run_cargo,
    write_bin_crate,
    write_mirror_config,
)
from tests.fakes.cargoreg import FakeCargoRegistry, build_crate_bytes, make_crate
from tests.fakes.pipclient import ClientFailed

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def crates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real `.crate` files keyed `name-version`: `leaf` 0.1.0, 0.2.0 and 0.2.1, `mid`
    1.0.0 (`leaf = "^0.2"`), `MixedCase` 0.1.0 (`leaf = "0.1"`)."""
    cargo_or_skip()
    work = tmp_path_factory.mktemp("crates")
    made = [
        make_crate(work, "leaf", "0.1.0"),
        make_crate(work, "leaf", "0.2.0"),
        make_crate(work, "leaf", "0.2.1"),
        make_crate(work, "mid", "1.0.0", {"leaf": "^0.2"}),
        make_crate(work, "MixedCase", "0.1.0", {"leaf": "0.1"}),
    ]
    return {path.name.removesuffix(".crate"): path for path in made}


class Site:
    """A fake sparse registry and a cachesrv in front of it, restartable offline."""

    def __init__(
        self,
        reg: FakeCargoRegistry,
        start: Callable[..., CachesrvProcess],
        tmp: Path,
        config: Path,
    ) -> None:
        self.reg = reg
        self.start_server = start
        self.tmp = tmp
        self.config = config
        self.store = tmp / "store"
        self.server: CachesrvProcess | None = None
        self._homes = 0

    def serve(self, mode: str) -> str:
        """(Re)start cachesrv in `mode`; the registry URL cargo is given."""
        if self.server is not None:
            self.server.stop()
        self.server = self.start_server(
            "--config", self.config, "--store", self.store, "--mode", mode
        )
        return f"{self.server.url}/crates/"

    def env(self, registry: str) -> dict[str, str]:
        """A fresh CARGO_HOME (and target dir) whose crates.io is `registry`."""
        self._homes += 1
        env = cargo_env(self.tmp / f"home{self._homes}")
        write_mirror_config(env, registry)
        return env

    def entries(self, prefix: str) -> list[dict[str, Any]]:
        """The store's entries under `prefix`, from the running server's API."""
        assert self.server is not None
        query = urllib.parse.urlencode({"prefix": prefix})
        url = f"{self.server.url}/_cachesrv/api/v1/entries?{query}"
        with urllib.request.urlopen(url, timeout=10) as resp:
            found: list[dict[str, Any]] = json.load(resp)
        return found

    def get(self, path: str) -> bytes:
        assert self.server is not None
        with urllib.request.urlopen(f"{self.server.url}{path}", timeout=10) as resp:
            body: bytes = resp.read()
        return body


@pytest.fixture
def site_factory(
    tmp_path: Path,
    write_config: Callable[..., Path],
    cachesrv: Callable[..., CachesrvProcess],
    crates: dict[str, Path],
) -> Iterator[Callable[..., Site]]:
    registries: list[FakeCargoRegistry] = []

    def make(*names: str, markers: bool = False) -> Site:
        reg = FakeCargoRegistry(markers=markers).start()
        registries.append(reg)
        for name in names or ("leaf-0.1.0", "leaf-0.2.0", "mid-1.0.0"):
            reg.add_crate(crates[name])
        config = write_config(
            {
                "crates": {
                    "kind": "cargo",
                    "url": reg.index_url.rstrip("/"),
                    "file_hosts": [reg.dl_origin.split("://", 1)[1]],
                }
            }
        )
        return Site(reg, cachesrv, tmp_path, config)

    yield make
    for reg in registries:
        reg.stop()


def run_binary(env: dict[str, str]) -> str:
    binary = Path(env["CARGO_TARGET_DIR"]) / "debug" / "app"
    ran = subprocess.run([binary], capture_output=True, text=True, timeout=30, check=True)
    return ran.stdout


@pytest.mark.parametrize(
    ("markers", "deps", "expected"),
    [
        (False, {"mid": "1"}, "mid 1.0.0 -> [leaf 0.2.0]\n"),
        (True, {"MixedCase": "0.1"}, "MixedCase 0.1.0 -> [leaf 0.1.0]\n"),
    ],
    ids=["default-dl", "marker-dl"],
)
def test_fetch_and_build_online_then_build_offline(
    site_factory: Callable[..., Site],
    tmp_path: Path,
    markers: bool,
    deps: dict[str, str],
    expected: str,
) -> None:
    """(1) `cargo fetch` + `cargo build` online; offline with a fresh CARGO_HOME the same
    build (with its lock file, and without) succeeds and the registry sees no request."""
    names = ("leaf-0.1.0", "leaf-0.2.0", "mid-1.0.0", "MixedCase-0.1.0")
    site = site_factory(*names, markers=markers)
    registry = site.serve("online")
    app = write_bin_crate(tmp_path / "app", deps)
    env = site.env(registry)
    fetched = run_cargo(["fetch"], app, env, check=True)
    assert f"Updating `{MIRROR}` index" in fetched.stderr
    run_cargo(["build"], app, env, check=True)
    assert run_binary(env) == expected
    online = {"index": site.reg.count("/index/"), "all": site.reg.count()}
    assert online["index"] == 3  # config.json, the dependency's and leaf's index files
    assert online["all"] == 5  # and two downloads
    assert len(site.entries(site.reg.dl_origin + "/")) == 2  # recorded by cachesrv
    # What cargo got: downloads through cachesrv, `api` gone.
    config = json.loads(site.get("/crates/config.json"))
    assert config["dl"].startswith(f"{registry}files/http/{site.reg.dl_origin[7:]}/")
    assert "api" not in config

    site.reg.reset_log()
    registry = site.serve("offline")
    env = site.env(registry)
    built = run_cargo(["build"], app, env, check=True)
    assert "Compiling app" in built.stderr
    assert run_binary(env) == expected
    # Without a lock file cargo resolves again, from what is stored.
    unlocked = write_bin_crate(tmp_path / "unlocked", deps)
    env = site.env(registry)
    run_cargo(["build"], unlocked, env, check=True)
    assert run_binary(env) == expected
    assert site.reg.requests == []


def test_crate_not_matching_cksum_is_not_recorded(
    site_factory: Callable[..., Site], tmp_path: Path
) -> None:
    """(2) A `.crate` whose bytes do not match the index's `cksum` is refused: nothing
    recorded, cargo fails."""
    site = site_factory()
    site.reg.corrupt("leaf", "0.2.0")
    registry = site.serve("online")
    app = write_bin_crate(tmp_path / "app", {"mid": "1"})
    proc = run_cargo(["fetch"], app, site.env(registry))
    assert proc.returncode == 101
    # cachesrv checks the body as it streams it and cuts the connection at the end: cargo
    # (libcurl) reports a partial transfer, before its own checksum check could run.
    through = f"{registry}files/http/{site.reg.dl_origin[7:]}/crates/leaf/0.2.0/download"
    assert f"error: failed to download from `{through}`" in proc.stderr
    assert "Transferred a partial file" in proc.stderr
    assert ("/crates/leaf/0.2.0/download", 200) in [(r.path, r.status) for r in site.reg.requests]
    # (mid's download may or may not be recorded: cargo drops its other transfers when
    # one fails, and they run concurrently.)
    downloads = [e["key"] for e in site.entries(site.reg.dl_origin + "/")]
    assert f"{site.reg.dl_origin}/crates/leaf/0.2.0/download" not in downloads
    assert site.server is not None
    assert "sha256 is" in site.server.output()

    # Once the upstream serves the right bytes, the same fetch records them.
    site.reg.get("leaf", "0.2.0").corrupt = False
    run_cargo(["fetch"], app, site.env(registry), check=True)
    assert len(site.entries(site.reg.dl_origin + "/")) == 2


def test_offline_index_lists_only_stored_versions(
    site_factory: Callable[..., Site], tmp_path: Path
) -> None:
    """(3) Offline, an index file lists only versions whose `.crate` is stored: cargo
    resolves `leaf = "0.2"` to the stored 0.2.0, not the upstream's newer 0.2.1; a lock
    file naming 0.2.1 (resolved online, never downloaded) fails with cargo's own words."""
    site = site_factory("leaf-0.1.0", "leaf-0.2.0", "leaf-0.2.1")
    registry = site.serve("online")
    pinned = write_bin_crate(tmp_path / "pinned", {"leaf": "=0.2.0"})
    run_cargo(["fetch"], pinned, site.env(registry), check=True)
    locked = write_bin_crate(tmp_path / "locked", {"leaf": "0.2"})
    run_cargo(["generate-lockfile"], locked, site.env(registry), check=True)
    assert site.reg.paths("/crates/") == ["/crates/leaf/0.2.0/download"]

    registry = site.serve("offline")
    listed = [json.loads(line)["vers"] for line in site.get("/crates/le/af/leaf").splitlines()]
    assert listed == ["0.2.0"]
    site.reg.reset_log()
    app = write_bin_crate(tmp_path / "app", {"leaf": "0.2"})
    env = site.env(registry)
    run_cargo(["build"], app, env, check=True)
    assert run_binary(env) == "leaf 0.2.0\n"

    proc = run_cargo(["build"], locked, site.env(registry))
    assert proc.returncode == 101
    assert (
        'error: failed to select a version for the requirement `leaf = "^0.2"` '
        "(locked to 0.2.1)\ncandidate versions found which didn't match: 0.2.0\n"
    ) in proc.stderr
    assert site.reg.requests == []


def test_never_recorded_crate_offline(site_factory: Callable[..., Site], tmp_path: Path) -> None:
    """(4) A crate never recorded: offline cargo says there is no such package (it prints
    no body for a 404 on an index file); `cachesrv misses` lists the index file's URL."""
    site = site_factory()
    registry = site.serve("online")
    recorded = write_bin_crate(tmp_path / "recorded", {"mid": "1"})
    run_cargo(["fetch"], recorded, site.env(registry), check=True)
    site.reg.add_crate(build_crate_bytes("nope", "1.0.0"))

    registry = site.serve("offline")
    site.reg.reset_log()
    app = write_bin_crate(tmp_path / "app", {"mid": "1", "nope": "1"})
    with pytest.raises(ClientFailed) as failed:
        run_cargo(["build"], app, site.env(registry), check=True)
    assert failed.value.returncode == 101
    assert (
        "error: no matching package named `nope` found\n"
        f"location searched: `{MIRROR}` index (which is replacing registry `crates-io`)\n"
    ) in failed.value.stderr
    assert site.reg.requests == []
    missed = run_cli("misses", "--store", site.store, "--format", "urls").stdout.split()
    assert missed == [site.reg.index_url + "no/pe/nope"]
