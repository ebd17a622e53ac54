"""The real go through cachesrv: record online, build offline with 0 upstream requests.

A `cachesrv serve` subprocess stands in front of the fake Go module proxy
(tests/fakes/goproxy.py, real module zips) as `[upstreams.goproxy] kind = "goproxy"`;
go (Debian's golang-go, 1.19) reaches nothing but the cache: `GOPROXY=<cache>/goproxy`
alone (no `direct`), `GOFLAGS=-mod=mod`, every proxy variable a closed port
(tests/fakes/goclient.py). Checksum verification is off (`GOSUMDB=off`) except in the
tests that say otherwise, which use the fake's own checksum database.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import CachesrvProcess, run_cli
from tests.fakes.goclient import GO, go_env, run_go, write_main_module
from tests.fakes.goproxy import FakeGoProxy, hash_zip

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(GO is None, reason="needs the go command (Debian: golang-go)"),
]

GREET = "example.test/greet"
WORDS = "example.test/Upper/words"  # an upper-case letter: !upper in proxy URLs
WORDS_GO = 'package words\n\n// Word is a word.\nfunc Word() string { return "world" }\n'
GREET_10_GO = 'package greet\n\nfunc Hello() string { return "hello from greet v1.0.0" }\n'
GREET_11_GO = (
    'package greet\n\nimport "example.test/Upper/words"\n\n'
    'func Hello() string { return "hello, " + words.Word() + " (greet v1.1.0)" }\n'
)
GREET_12_GO = 'package greet\n\nfunc Hello() string { return "hello from greet v1.2.0" }\n'
EXPECTED_OUTPUT = "hello, world (greet v1.1.0)\nworld\n"
SUMDB = "sum.example.test"  # the fake's checksum database, used where GOSUMDB names it


class Site:
    """The fake Go module proxy, and a cachesrv in front of it that can be restarted."""

    def __init__(
        self, proxy: FakeGoProxy, start: Callable[..., CachesrvProcess], tmp: Path, config: Path
    ) -> None:
        self.proxy = proxy
        self.start_server = start
        self.tmp = tmp
        self.config = config
        self.store = tmp / "store"
        self.server: CachesrvProcess | None = None

    def serve(self, mode: str) -> str:
        """(Re)start cachesrv in `mode`; the GOPROXY URL that reaches it."""
        if self.server is not None:
            self.server.stop()
        self.server = self.start_server(
            "--config", self.config, "--store", self.store, "--mode", mode
        )
        return f"{self.server.url}/goproxy"

    def env(self, name: str, goproxy: str, gocache: Path, *, sumdb: bool = False) -> dict[str, str]:
        """A go environment with its own, empty module cache and checksum-database state
        (under `tmp/name`); `sumdb`: verify against the fake's checksum database."""
        env = go_env(self.tmp / name, goproxy, gocache=gocache)
        if sumdb:
            assert self.proxy.sumdb is not None
            env["GOSUMDB"] = self.proxy.sumdb.vkey
        return env

    def misses(self) -> list[str]:
        return run_cli("misses", "--store", self.store, "--format", "urls").stdout.split()


@pytest.fixture(scope="module")
def gocache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One build cache for the module's tests (content-keyed; makes builds fast)."""
    return tmp_path_factory.mktemp("gocache")


@pytest.fixture
def site(
    tmp_path: Path, write_config: Callable[..., Path], cachesrv: Callable[..., CachesrvProcess]
) -> Iterator[Site]:
    with FakeGoProxy(sumdb=SUMDB) as proxy:
        proxy.add_module(GREET, "v1.0.0", {"greet.go": GREET_10_GO})
        proxy.add_module(WORDS, "v0.2.0", {"words.go": WORDS_GO, "README": "words\n"})
        proxy.add_module(GREET, "v1.1.0", {"greet.go": GREET_11_GO}, requires={WORDS: "v0.2.0"})
        config = write_config({"goproxy": {"kind": "goproxy", "url": proxy.url}})
        yield Site(proxy, cachesrv, tmp_path, config)


def main_module(directory: Path) -> Path:
    """Requires greet v1.1.0 (which requires words v0.2.0); calls both."""
    return write_main_module(directory, {GREET: "v1.1.0"}, {GREET: "Hello", WORDS: "Word"})


def run_prog(path: Path) -> str:
    return subprocess.run([path], capture_output=True, text=True, timeout=30, check=True).stdout


def test_build_online_then_offline_with_no_upstream_request(
    site: Site, tmp_path: Path, gocache: Path
) -> None:
    goproxy = site.serve("online")
    main = main_module(tmp_path / "main")
    env = site.env("online", goproxy, gocache)
    run_go(["mod", "download"], main, env)
    run_go(["build", "-o", "prog", "."], main, env)
    assert run_prog(main / "prog") == EXPECTED_OUTPUT
    # What go asked, once each, through the cache: .mod, .info and .zip of both modules.
    assert sorted(site.proxy.paths()) == sorted(
        f"/{mod}/@v/{v}.{ext}"
        for mod, v in [(GREET, "v1.1.0"), ("example.test/!upper/words", "v0.2.0")]
        for ext in ("info", "mod", "zip")
    )
    gosum = (main / "go.sum").read_text()

    site.proxy.reset_log()
    goproxy = site.serve("offline")
    # The same build, from a fresh module cache: everything comes from the store.
    env = site.env("offline", goproxy, gocache)
    run_go(["mod", "download"], main, env)
    run_go(["build", "-o", "prog2", "."], main, env)
    assert run_prog(main / "prog2") == EXPECTED_OUTPUT
    assert (main / "go.sum").read_text() == gosum
    # And from the original go.mod (no go.sum): go resolves the same graph offline.
    again = main_module(tmp_path / "again")
    run_go(["build", "-o", "prog", "."], again, site.env("offline2", goproxy, gocache))
    assert run_prog(again / "prog") == EXPECTED_OUTPUT
    assert (again / "go.sum").read_text() == gosum
    assert site.proxy.count() == 0
    assert site.misses() == []


def test_unpinned_get_latest_offline_resolves_to_the_stored_version(
    site: Site, tmp_path: Path, gocache: Path
) -> None:
    goproxy = site.serve("online")
    run_go(["build", "-o", "prog", "."], main_module(tmp_path / "main"),
           site.env("online", goproxy, gocache))  # fmt: skip
    # Published upstream after the online run: never fetched, so not offline.
    site.proxy.add_module(GREET, "v1.2.0", {"greet.go": GREET_12_GO})
    assert not any(p.endswith(("/@v/list", "/@latest")) for p in site.proxy.paths())

    site.proxy.reset_log()
    goproxy = site.serve("offline")
    fresh = write_main_module(tmp_path / "fresh", {}, {GREET: "Hello"})
    env = site.env("offline", goproxy, gocache)
    got = run_go(["get", "example.test/greet@latest"], fresh, env)
    assert "go: added example.test/greet v1.1.0" in got.stderr
    assert "\texample.test/greet v1.1.0 // indirect\n" in (fresh / "go.mod").read_text()
    run_go(["build", "-o", "prog", "."], fresh, env)
    assert run_prog(fresh / "prog") == "hello, world (greet v1.1.0)\n"
    # What go lists offline is what the store holds (the list was never recorded).
    listed = run_go(["list", "-m", "-versions", GREET], fresh, env)
    assert listed.stdout == f"{GREET} v1.1.0\n"
    assert site.proxy.count() == 0
    # go tries every path prefix as a module: `example.test` is none, a harmless miss.
    assert site.misses() == [f"{site.proxy.url}/example.test/@v/list"]


def test_offline_miss_is_explained(site: Site, tmp_path: Path, gocache: Path) -> None:
    goproxy = site.serve("online")
    run_go(["build", "-o", "prog", "."], main_module(tmp_path / "main"),
           site.env("online", goproxy, gocache))  # fmt: skip
    site.proxy.reset_log()
    goproxy = site.serve("offline")
    env = site.env("offline", goproxy, gocache)
    fresh = write_main_module(tmp_path / "fresh", {}, {})

    # A version that exists upstream (v1.0.0) but was never fetched.
    failed = run_go(["get", "example.test/greet@v1.0.0"], fresh, env, check=False)
    assert failed.returncode == 1
    info = f"{site.proxy.url}/example.test/greet/@v/v1.0.0.info"
    assert (
        f"go: example.test/greet@v1.0.0: reading {goproxy}/example.test/greet/@v/v1.0.0.info: "
        "404 Not in offline seed\n\tserver response:\n\tNot in offline seed\n"
        f"\turl:    {info}\n"
    ) in failed.stderr
    # A module of which nothing is stored: its version list is the miss.
    failed = run_go(["get", "example.test/nope@latest"], fresh, env, check=False)
    assert failed.returncode == 1
    assert (
        f"reading {goproxy}/example.test/nope/@v/list: 404 Not in offline seed\n"
        "\tserver response:\n\tNot in offline seed\n"
    ) in failed.stderr
    assert site.proxy.count() == 0
    missed = site.misses()
    assert info in missed
    assert f"{site.proxy.url}/example.test/nope/@v/list" in missed


def test_corrupted_zip_online_fails_as_it_would_without_the_cache(
    site: Site, tmp_path: Path, gocache: Path
) -> None:
    """go.sum names the real zip; the upstream serves other bytes. go refuses them through
    the cache exactly as it would directly, and nothing of them reaches go.sum or a build."""
    main = main_module(tmp_path / "main")
    greet = site.proxy.module(GREET, "v1.1.0")
    words = site.proxy.module(WORDS, "v0.2.0")
    (main / "go.sum").write_text("".join(line + "\n" for line in sorted(
        greet.gosum_lines() + words.gosum_lines())))  # fmt: skip
    gosum = (main / "go.sum").read_text()
    tampered = site.proxy.corrupt_zip(GREET, "v1.1.0")

    goproxy = site.serve("online")
    failed = run_go(["mod", "download"], main, site.env("online", goproxy, gocache), check=False)
    assert failed.returncode == 1
    assert (
        f"verifying {GREET}@v1.1.0: checksum mismatch\n"
        f"\tdownloaded: {hash_zip(tampered)}\n"
        f"\tgo.sum:     {greet.h1}\n\nSECURITY ERROR\n"
    ) in failed.stderr
    assert (main / "go.sum").read_text() == gosum
    # Offline the recorded bytes are refused the same way: the cache adds no way round.
    goproxy = site.serve("offline")
    env = site.env("offline", goproxy, gocache)
    failed = run_go(["build", "-o", "prog", "."], main, env, check=False)
    assert failed.returncode == 1
    assert f"verifying {GREET}@v1.1.0: checksum mismatch" in failed.stderr
    assert not (main / "prog").exists()
    assert not (Path(env["GOMODCACHE"]) / f"{GREET}@v1.1.0").exists()


def test_checksum_database_through_the_cache_online_and_offline(
    site: Site, tmp_path: Path, gocache: Path
) -> None:
    """With GOSUMDB naming the database, go asks the cache whether it proxies it
    (`sumdb/<name>/supported`), then looks modules up and reads tiles through it; offline
    the recorded answers verify the same downloads again."""
    goproxy = site.serve("online")
    main = main_module(tmp_path / "main")
    run_go(["build", "-o", "prog", "."], main, site.env("online", goproxy, gocache, sumdb=True))
    prefix = f"/sumdb/{SUMDB}/"
    assert sorted(p for p in site.proxy.paths() if p.startswith(prefix)) == [
        f"{prefix}lookup/example.test/!upper/words@v0.2.0",
        f"{prefix}lookup/example.test/greet@v1.1.0",
        f"{prefix}supported",
        f"{prefix}tile/8/0/000.p/3",
    ]
    assert site.proxy.count() == 10  # and .mod, .info, .zip of both modules
    gosum = (main / "go.sum").read_text()

    site.proxy.reset_log()
    goproxy = site.serve("offline")
    # No go.sum and no checksum-database state: every hash is checked against the
    # database again, through the recorded lookups and tiles.
    again = main_module(tmp_path / "again")
    env = site.env("offline", goproxy, gocache, sumdb=True)
    run_go(["build", "-o", "prog", "."], again, env)
    assert run_prog(again / "prog") == EXPECTED_OUTPUT
    assert (again / "go.sum").read_text() == gosum
    fresh = write_main_module(tmp_path / "fresh", {}, {GREET: "Hello"})
    got = run_go(["get", "example.test/greet@latest"], fresh, env)
    assert "go: added example.test/greet v1.1.0" in got.stderr
    # The database's URL given in GOSUMDB (no `supported` question): the same keys.
    third = main_module(tmp_path / "third")
    env = site.env("offline-url", goproxy, gocache, sumdb=True)
    env["GOSUMDB"] += f" {goproxy}/sumdb/{SUMDB}"
    run_go(["build", "-o", "prog", "."], third, env)
    assert (third / "go.sum").read_text() == gosum
    assert site.proxy.count() == 0
    assert site.misses() == [f"{site.proxy.url}/example.test/@v/list"]


def test_checksum_database_never_asked_online_is_a_miss_offline_not_a_network_error(
    site: Site, tmp_path: Path, gocache: Path
) -> None:
    """Offline, `supported` is answered even if never recorded, so go looks modules up
    through the cache: a lookup never recorded is an explained miss, where going to the
    database's own host would fail on the network. A go.sum that has the hashes needs
    no lookup at all."""
    goproxy = site.serve("online")
    main = main_module(tmp_path / "main")
    run_go(["build", "-o", "prog", "."], main, site.env("online", goproxy, gocache))  # off
    site.proxy.reset_log()
    goproxy = site.serve("offline")
    env = site.env("offline", goproxy, gocache, sumdb=True)
    run_go(["build", "-o", "prog2", "."], main, env)  # go.sum has every hash
    assert run_prog(main / "prog2") == EXPECTED_OUTPUT

    again = main_module(tmp_path / "again")
    failed = run_go(["build", "-o", "prog", "."], again, env, check=False)
    assert failed.returncode == 1
    lookup = f"sumdb/{SUMDB}/lookup/example.test/greet@v1.1.0"
    assert failed.stderr.startswith(
        f"example.test/greet@v1.1.0: verifying module: example.test/greet@v1.1.0: "
        f"reading {goproxy}/{lookup}: 404 Not in offline seed\n"
        "\tserver response:\n\tNot in offline seed\n"
        f"\turl:    {site.proxy.url}/{lookup}\n"
    )
    assert "dial tcp" not in failed.stderr
    assert site.proxy.count() == 0
    assert f"{site.proxy.url}/{lookup}" in site.misses()
