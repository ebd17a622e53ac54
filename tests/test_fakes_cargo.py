"""Self-tests of the fake Cargo sparse registry and the cargo driver, no cachesrv involved.

Real ``cargo`` (>= 1.68; skipped, with the reason, when missing or older) talks to
``FakeCargoRegistry`` on 127.0.0.1 through source replacement; its environment points
every proxy variable at a closed loopback port, so any attempt to leave loopback fails.
The registry serves real ``.crate`` files: ``leaf`` made by ``cargo package`` (by hand
where there is no cargo), ``mid`` (which depends on ``leaf``) built in-process.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import json
import subprocess
import tarfile
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.fakes.cargoclient import (
    MIRROR,
    CargoUnavailable,
    cargo_env,
    cargo_or_skip,
    require_cargo,
    run_cargo,
    write_bin_crate,
    write_mirror_config,
)
from tests.fakes.cargoreg import (
    FakeCargoRegistry,
    build_crate_bytes,
    index_entry,
    index_path,
    make_crate,
    prefix,
)
from tests.fakes.pipclient import TRAP_PROXY

CRATES_IO = "registry+https://github.com/rust-lang/crates.io-index"


@dataclass
class Answer:
    status: int
    headers: Message
    body: bytes


def fetch(url: str, headers: dict[str, str] | None = None) -> Answer:
    """One raw GET of ``url`` (no redirects followed)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request("GET", target, headers=headers or {})
        resp = conn.getresponse()
        return Answer(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


@pytest.fixture(scope="module")
def crates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``leaf`` 0.1.0 and 0.2.0, ``mid`` 1.0.0 (``leaf = "^0.2"``), ``MixedCase`` 0.1.0
    (``leaf = "0.1"``): real ``.crate`` files, keyed ``name-version``."""
    work = tmp_path_factory.mktemp("crates")
    made = [
        make_crate(work, "leaf", "0.1.0"),
        make_crate(work, "leaf", "0.2.0"),
        make_crate(work, "mid", "1.0.0", {"leaf": "^0.2"}),
        make_crate(work, "MixedCase", "0.1.0", {"leaf": "0.1"}),
    ]
    return {path.name.removesuffix(".crate"): path for path in made}


def publish(reg: FakeCargoRegistry, crates: dict[str, Path], *names: str) -> None:
    for name in names or ("leaf-0.1.0", "leaf-0.2.0", "mid-1.0.0"):
        reg.add_crate(crates[name])


@pytest.fixture
def cargo() -> Path:
    return cargo_or_skip()


def cargo_project(
    tmp_path: Path, reg: FakeCargoRegistry, deps: dict[str, str]
) -> tuple[Path, dict[str, str]]:
    """A bin crate depending on ``deps`` and an environment whose crates.io is ``reg``."""
    env = cargo_env(tmp_path)
    write_mirror_config(env, reg.index_url)
    return write_bin_crate(tmp_path / "app", deps), env


def crate_members(crate: Path) -> list[str]:
    with tarfile.open(crate, "r:gz") as tar:
        return tar.getnames()


def lock_packages(app: Path) -> dict[str, dict[str, str]]:
    lock = tomllib.loads((app / "Cargo.lock").read_text())
    return {p["name"]: p for p in lock["package"]}


# --- the registry alone (no cargo needed) ----------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a", "1/a"),
        ("ab", "2/ab"),
        ("abc", "3/a/abc"),
        ("serde", "se/rd/serde"),
        ("MixedCase", "mi/xe/mixedcase"),
    ],
)
def test_index_path(name: str, expected: str) -> None:
    assert index_path(name) == expected


def test_prefix_keeps_case() -> None:
    assert prefix("MixedCase") == "Mi/xe"
    assert prefix("Abc") == "3/A"


def test_hand_built_crate_shape() -> None:
    data = build_crate_bytes("mid", "1.0.0", {"leaf": "^0.2"})
    assert data == build_crate_bytes("mid", "1.0.0", {"leaf": "^0.2"})  # deterministic
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data))) as tar:
        names = tar.getnames()
        manifest = tar.extractfile("mid-1.0.0/Cargo.toml")
        assert manifest is not None
        parsed = tomllib.loads(manifest.read().decode())
    assert names == ["mid-1.0.0/Cargo.toml", "mid-1.0.0/Cargo.toml.orig", "mid-1.0.0/src/lib.rs"]
    assert parsed["dependencies"] == {"leaf": {"version": "^0.2"}}
    entry = index_entry(data)
    assert entry["cksum"] == hashlib.sha256(data).hexdigest()
    assert entry["deps"] == [
        {
            "name": "leaf",
            "req": "^0.2",
            "features": [],
            "optional": False,
            "default_features": True,
            "target": None,
            "kind": "normal",
        }
    ]


def test_serves_config_index_and_downloads(crates: dict[str, Path]) -> None:
    with FakeCargoRegistry() as reg:
        publish(reg, crates)
        assert urlsplit(reg.dl_url).port != urlsplit(reg.url).port  # like static.crates.io
        config = fetch(reg.index_url + "config.json")
        assert config.status == 200
        assert json.loads(config.body) == {"dl": reg.dl_origin + "/crates"}  # no "api"

        leaf = fetch(reg.index_url + "le/af/leaf")
        assert leaf.status == 200
        lines = [json.loads(line) for line in leaf.body.decode().splitlines()]
        assert [(e["name"], e["vers"], e["yanked"]) for e in lines] == [
            ("leaf", "0.1.0", False),
            ("leaf", "0.2.0", False),
        ]
        etag = leaf.headers["ETag"]
        assert fetch(reg.index_url + "le/af/leaf", {"If-None-Match": etag}).status == 304

        crate = fetch(f"{reg.dl_url}/leaf/0.2.0/download")
        assert crate.status == 200
        assert crate.body == crates["leaf-0.2.0"].read_bytes()
        assert hashlib.sha256(crate.body).hexdigest() == lines[1]["cksum"]

        # Adding a version later changes the index file (and its ETag).
        reg.add_crate(build_crate_bytes("leaf", "0.3.0"))
        again = fetch(reg.index_url + "le/af/leaf", {"If-None-Match": etag})
        assert again.status == 200
        assert again.headers["ETag"] != etag
        assert len(again.body.decode().splitlines()) == 3

        # Unknown crates, wrong index paths, the index listener's /crates: 404 with text.
        for url in (
            reg.index_url + "no/pe/nope",
            reg.index_url + "3/x/mid",  # mid lives at 3/m/mid
            reg.index_url + "Le/af/leaf",  # index paths are lowercase
            f"{reg.dl_url}/nope/1.0.0/download",
            f"{reg.url}/crates/leaf/0.2.0/download",
        ):
            answer = fetch(url)
            assert answer.status == 404, url
            assert answer.headers.get_content_type() == "text/plain"

        reg.corrupt("leaf", "0.2.0")
        bad = fetch(f"{reg.dl_url}/leaf/0.2.0/download").body
        assert len(bad) == len(crate.body) and bad != crate.body
        reg.make_missing("leaf", "0.1.0")
        assert fetch(f"{reg.dl_url}/leaf/0.1.0/download").status == 404
        assert reg.count("/index/") == 7
        assert reg.count("/crates/") == 5


def test_marker_template_downloads(crates: dict[str, Path]) -> None:
    with FakeCargoRegistry(markers=True, api="http://127.0.0.1:1/api") as reg:
        published = reg.add_crate(crates["MixedCase-0.1.0"])
        config = json.loads(fetch(reg.index_url + "config.json").body)
        assert config == {
            "dl": reg.dl_origin + "/m/{prefix}/{lowerprefix}/{crate}-{version}.crate"
            "?sum={sha256-checksum}",
            "api": "http://127.0.0.1:1/api",
        }
        good = f"{reg.dl_origin}/m/Mi/xe/mi/xe/MixedCase-0.1.0.crate?sum={published.cksum}"
        assert fetch(good).body == crates["MixedCase-0.1.0"].read_bytes()
        for bad in (
            f"{reg.dl_origin}/m/mi/xe/mi/xe/MixedCase-0.1.0.crate?sum={published.cksum}",
            f"{reg.dl_origin}/m/Mi/xe/mi/xe/MixedCase-0.1.0.crate?sum={'0' * 64}",
            f"{reg.dl_origin}/crates/MixedCase/0.1.0/download",
        ):
            assert fetch(bad).status == 404, bad


# --- real cargo ------------------------------------------------------------------------


def test_cargo_fetch_then_build(cargo: Path, crates: dict[str, Path], tmp_path: Path) -> None:
    """(a) ``cargo fetch`` then ``cargo build`` (not offline); the binary runs."""
    with FakeCargoRegistry() as reg:
        publish(reg, crates)
        app, env = cargo_project(tmp_path, reg, {"mid": "1"})

        # leaf came from `cargo package` (it adds a Cargo.lock), mid was built by hand:
        # cargo takes both.
        assert "leaf-0.2.0/Cargo.lock" in crate_members(crates["leaf-0.2.0"])
        assert "mid-1.0.0/Cargo.lock" not in crate_members(crates["mid-1.0.0"])

        fetched = run_cargo(["fetch"], app, env, check=True)
        assert f"Updating `{MIRROR}` index" in fetched.stderr
        assert f"Downloaded leaf v0.2.0 (registry `{MIRROR}`)" in fetched.stderr
        # The index first: config.json, then each crate's file as the resolver meets it.
        index = [r for r in reg.requests if r.listener == "index"]
        assert [(r.path, r.status) for r in index] == [
            ("/index/config.json", 200),
            ("/index/3/m/mid", 200),
            ("/index/le/af/leaf", 200),
        ]
        for r in index:
            assert r.headers["Accept"] == "text/plain"
            assert r.headers["cargo-protocol"] == "version=1"
            assert r.headers["User-Agent"].startswith("cargo/")
            assert "If-None-Match" not in r.headers
        # Then the downloads, from the dl listener (concurrently: order not fixed).
        downloads = [r for r in reg.requests if r.listener == "dl"]
        assert sorted((r.path, r.status) for r in downloads) == [
            ("/crates/leaf/0.2.0/download", 200),
            ("/crates/mid/1.0.0/download", 200),
        ]
        assert all(r.headers["Accept"] == "*/*" for r in downloads)
        # libcurl offers HTTP/2 over cleartext on every request; aiohttp ignores it.
        assert all(r.headers.get("Upgrade") == "h2c" for r in reg.requests)

        # The lock file names crates.io (source replacement is invisible there).
        locked = lock_packages(app)
        assert locked["leaf"]["version"] == "0.2.0"
        for name, version in (("leaf", "0.2.0"), ("mid", "1.0.0")):
            assert locked[name]["source"] == CRATES_IO
            assert locked[name]["checksum"] == reg.get(name, version).cksum

        reg.reset_log()
        run_cargo(["build"], app, env, check=True)
        assert reg.requests == []  # lock file + downloaded crates: nothing asked

    binary = Path(env["CARGO_TARGET_DIR"]) / "debug" / "app"
    ran = subprocess.run([binary], capture_output=True, text=True, timeout=30, check=True)
    assert ran.stdout == "mid 1.0.0 -> [leaf 0.2.0]\n"


def test_cargo_revalidates_and_sees_new_version(
    cargo: Path, crates: dict[str, Path], tmp_path: Path
) -> None:
    """A version added later: ``cargo update`` revalidates with If-None-Match and locks it."""
    with FakeCargoRegistry() as reg:
        publish(reg, crates)
        app, env = cargo_project(tmp_path, reg, {"mid": "1"})
        run_cargo(["fetch"], app, env, check=True)
        reg.add_crate(build_crate_bytes("leaf", "0.2.1"))
        reg.reset_log()

        run_cargo(["update"], app, env, check=True)
        assert [(r.path, r.status, "If-None-Match" in r.headers) for r in reg.requests] == [
            ("/index/config.json", 200, False),  # asked again, unconditionally
            ("/index/3/m/mid", 304, True),
            ("/index/le/af/leaf", 200, True),  # changed: new ETag
        ]
        assert lock_packages(app)["leaf"]["version"] == "0.2.1"

        # With the lock file up to date the index is not consulted at all: the download
        # URL comes from the config.json cargo kept in CARGO_HOME.
        reg.reset_log()
        run_cargo(["fetch"], app, env, check=True)
        assert reg.paths() == ["/crates/leaf/0.2.1/download"]


def test_cargo_uses_dl_template_markers(
    cargo: Path, crates: dict[str, Path], tmp_path: Path
) -> None:
    """A ``dl`` with markers: cargo fills in {prefix} (case kept), {lowerprefix}, the name,
    the version and the sha256; the crate builds and runs."""
    with FakeCargoRegistry(markers=True) as reg:
        publish(reg, crates, "leaf-0.1.0", "leaf-0.2.0", "MixedCase-0.1.0")
        app, env = cargo_project(tmp_path, reg, {"MixedCase": "0.1"})
        run_cargo(["fetch"], app, env, check=True)
        assert reg.paths("/index/") == [
            "/index/config.json",
            "/index/mi/xe/mixedcase",
            "/index/le/af/leaf",
        ]
        downloads = sorted((r.path, r.query) for r in reg.requests if r.listener == "dl")
        assert downloads == [
            ("/m/Mi/xe/mi/xe/MixedCase-0.1.0.crate", f"sum={reg.get('MixedCase', '0.1.0').cksum}"),
            ("/m/le/af/le/af/leaf-0.1.0.crate", f"sum={reg.get('leaf', '0.1.0').cksum}"),
        ]
        assert all(r.status == 200 for r in reg.requests)
        ran = run_cargo(["run", "-q"], app, env, check=True)
        assert ran.stdout == "MixedCase 0.1.0 -> [leaf 0.1.0]\n"


def test_cargo_rejects_corrupted_crate(
    cargo: Path, crates: dict[str, Path], tmp_path: Path
) -> None:
    """(b) A download not matching the index's cksum: cargo's checksum error."""
    with FakeCargoRegistry() as reg:
        publish(reg, crates)
        reg.corrupt("leaf", "0.2.0")
        app, env = cargo_project(tmp_path, reg, {"mid": "1"})
        proc = run_cargo(["fetch"], app, env)
    assert proc.returncode == 101
    assert (
        "error: failed to download replaced source registry `crates-io`\n\n"
        "Caused by:\n"
        f"  failed to verify the checksum of `leaf v0.2.0 (registry `{MIRROR}`)`\n"
    ) in proc.stderr
    assert ("/crates/leaf/0.2.0/download", 200) in [(r.path, r.status) for r in reg.requests]
    # Nothing of it was unpacked.
    assert not list(Path(env["CARGO_HOME"]).glob("registry/src/*/leaf-0.2.0"))


def _missing_download(reg: FakeCargoRegistry) -> None:
    reg.make_missing("leaf", "0.2.0")


def _index_500(reg: FakeCargoRegistry) -> None:
    reg.fail("/index/le/af/leaf", 500, "index exploded: see the upstream log\n")


def _index_404_with_body(reg: FakeCargoRegistry) -> None:
    reg.fail("/index/le/af/leaf", 404, "custom 404 body nobody reads\n")


def _index_410(reg: FakeCargoRegistry) -> None:
    reg.fail("/index/le/af/leaf", 410, "custom 410 body nobody reads\n")


def _config_404(reg: FakeCargoRegistry) -> None:
    reg.fail("/index/config.json", 404, "custom 404 body nobody reads\n")


@pytest.mark.parametrize(
    ("deps", "breakage", "shown", "hidden"),
    [
        pytest.param(
            {"nope": "1"},
            None,
            "error: no matching package named `nope` found\n"
            f"location searched: `{MIRROR}` index (which is replacing registry `crates-io`)\n",
            "no crate at index path",  # the 404's text body: not printed
            id="unknown-crate",
        ),
        pytest.param(
            {"mid": "1"},
            _index_404_with_body,
            "error: no matching package named `leaf` found\n",
            "custom 404 body",
            id="index-404-body",
        ),
        pytest.param(
            {"mid": "1"},
            _index_410,
            "error: no matching package named `leaf` found\n",
            "custom 410 body",
            id="index-410-body",
        ),
        pytest.param(
            {"mid": "1"},
            _config_404,
            "Caused by:\n  config.json not found in registry\n",
            "custom 404 body",
            id="config-404",
        ),
        pytest.param(
            {"mid": "1"},
            _missing_download,
            "got 404\n  body:\n  crate file leaf-0.2.0.crate is gone\n",
            None,
            id="download-404-body",
        ),
        pytest.param(
            {"mid": "1"},
            _index_500,
            "Caused by:\n  download of le/af/leaf failed\n\nCaused by:\n"
            "  failed to get successful HTTP response from `{index}le/af/leaf` (127.0.0.1),"
            " got 500\n  body:\n  index exploded: see the upstream log\n",
            None,
            id="index-500-body",
        ),
    ],
)
def test_cargo_reports_http_errors(
    cargo: Path,
    crates: dict[str, Path],
    tmp_path: Path,
    deps: dict[str, str],
    breakage: Callable[[FakeCargoRegistry], None] | None,
    shown: str,
    hidden: str | None,
) -> None:
    """(c) What cargo prints for error answers with a text body: a 404 (or 410/451) on an
    index file means "no such crate" (body not shown), any other failure shows the body."""
    with FakeCargoRegistry() as reg:
        publish(reg, crates)
        if breakage is not None:
            breakage(reg)
        app, env = cargo_project(tmp_path, reg, deps)
        proc = run_cargo(["fetch"], app, env)
    assert proc.returncode == 101
    assert shown.format(index=reg.index_url) in proc.stderr
    if hidden is not None:
        assert hidden not in proc.stderr + proc.stdout
    assert any(r.status is not None and r.status >= 400 for r in reg.requests)


def test_cargo_env_traps_proxies(cargo: Path, crates: dict[str, Path], tmp_path: Path) -> None:
    """cargo (libcurl) obeys the proxy variables: without the loopback NO_PROXY exemption
    even the fake is reached through the trap proxy, which refuses at once."""
    with FakeCargoRegistry() as reg:
        publish(reg, crates)
        app, env = cargo_project(tmp_path, reg, {"mid": "1"})
        del env["no_proxy"], env["NO_PROXY"]
        proc = run_cargo(["fetch"], app, env)
        assert reg.requests == []
    assert proc.returncode == 101
    assert f"Failed to connect to 127.0.0.1 port {urlsplit(TRAP_PROXY).port}" in proc.stderr


def test_cargo_env_is_shielded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var, value in (
        ("CARGO_HOME", "/elsewhere"),
        ("CARGO_NET_OFFLINE", "true"),
        ("RUSTC_WRAPPER", "sccache"),
        ("HTTPS_PROXY", "http://proxy.example:3128"),
    ):
        monkeypatch.setenv(var, value)
    env = cargo_env(tmp_path)
    assert env["CARGO_HOME"] == str(tmp_path / "cargo-home")
    assert env["CARGO_TARGET_DIR"] == str(tmp_path / "cargo-target")
    assert "CARGO_NET_OFFLINE" not in env and "RUSTC_WRAPPER" not in env
    assert env["HTTPS_PROXY"] == env["http_proxy"] == TRAP_PROXY
    assert env["CARGO_NET_RETRY"] == "0"
    assert "RUSTUP_HOME" in env
    config = write_mirror_config(env, "http://127.0.0.1:1/index")
    assert tomllib.loads(config.read_text())["source"] == {
        "crates-io": {"replace-with": MIRROR},
        MIRROR: {"registry": "sparse+http://127.0.0.1:1/index/"},
    }


def test_too_old_cargo_is_refused(cargo: Path) -> None:
    with pytest.raises(CargoUnavailable, match=r"sparse registries need >= 99\.0\.0"):
        require_cargo((99, 0, 0))
