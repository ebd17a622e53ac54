"""Self-tests of the fake Go module proxy and the go driver, with no cachesrv involved.

The real ``go`` (Debian's golang-go) talks to ``FakeGoProxy`` on 127.0.0.1 with
``GOPROXY=<fake>`` alone and ``GOSUMDB=off``; every proxy variable points at a closed
loopback port, so an attempt to reach anything else fails at once. The modules are real:
go verifies the zips against go.sum, compiles them and the built program runs. The
request sequences checked here are the ones tests/fakes/goproxy.py documents.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import subprocess
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from io import BytesIO
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.fakes.goclient import GO, go_env, run_go, sumdb_key, write_main_module
from tests.fakes.goproxy import (
    DEFAULT_TIME,
    FakeGoProxy,
    escape_path,
    hash1,
    hash_zip,
    unescape_path,
)
from tests.fakes.pipclient import ClientFailed

needs_go = pytest.mark.skipif(GO is None, reason="needs the go command (Debian: golang-go)")

GREET = "example.test/greet"
WORDS = "example.test/Upper/words"  # an upper-case letter: !upper in proxy URLs
WORDS_URL = "/example.test/!upper/words"
PSEUDO = "v0.0.0-20240102030405-abcdefabcdef"

WORDS_GO = 'package words\n\n// Word is a word.\nfunc Word() string { return "world" }\n'
GREET_10_GO = 'package greet\n\nfunc Hello() string { return "hello from greet v1.0.0" }\n'
GREET_11_GO = (
    'package greet\n\nimport "example.test/Upper/words"\n\n'
    'func Hello() string { return "hello, " + words.Word() + " (greet v1.1.0)" }\n'
)
GREET_12_GO = 'package greet\n\nfunc Hello() string { return "hello from greet v1.2.0" }\n'
EXPECTED_OUTPUT = "hello, world (greet v1.1.0)\nworld\n"


@dataclass
class Answer:
    status: int
    headers: Message
    body: bytes


def fetch(
    base: str, path: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> Answer:
    """One raw request to ``base`` (an origin URL)."""
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return Answer(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def add_test_modules(proxy: FakeGoProxy) -> None:
    """greet v1.0.0 and v1.1.0 (which requires words v0.2.0), Upper/words v0.2.0."""
    proxy.add_module(GREET, "v1.0.0", {"greet.go": GREET_10_GO})
    proxy.add_module(WORDS, "v0.2.0", {"words.go": WORDS_GO, "README": "words\n"})
    proxy.add_module(GREET, "v1.1.0", {"greet.go": GREET_11_GO}, requires={WORDS: "v0.2.0"})


@pytest.fixture
def proxy() -> Iterator[FakeGoProxy]:
    with FakeGoProxy() as server:
        add_test_modules(server)
        yield server


@pytest.fixture(scope="module")
def gocache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One build cache for the module's tests: builds after the first take well under 1 s."""
    return tmp_path_factory.mktemp("gocache")


def main_module(tmp_path: Path) -> Path:
    """The main module of these tests: requires greet v1.1.0, calls greet and words."""
    return write_main_module(tmp_path / "main", {GREET: "v1.1.0"}, {GREET: "Hello", WORDS: "Word"})


def gosum_lines(proxy: FakeGoProxy, *mods: tuple[str, str]) -> list[str]:
    return sorted(line for m in mods for line in proxy.module(*m).gosum_lines())


# --- the server over plain HTTP --------------------------------------------------------


def test_case_encoding() -> None:
    assert escape_path(WORDS) == "example.test/!upper/words"
    assert escape_path("github.com/BurntSushi/toml") == "github.com/!burnt!sushi/toml"
    assert unescape_path("github.com/!burnt!sushi/toml") == "github.com/BurntSushi/toml"
    assert unescape_path("v1.0.0-!r!c1") == "v1.0.0-RC1"
    for bad in ("example.test/Upper", "example.test/!", "example.test/!1", "a/!!b"):
        assert unescape_path(bad) is None


def test_hash1_is_dirhash() -> None:
    # As golang.org/x/mod/sumdb/dirhash's TestHash1 states it: the sha256 of the summary
    # "<sha256 hex>  <name>\n" over the names sorted. (Test (a) checks it against go.sum.)
    files = {"xyz": b"data for xyz", "abc": b"data for abc"}
    summary = "".join(f"{hashlib.sha256(files[n]).hexdigest()}  {n}\n" for n in ("abc", "xyz"))
    digest = base64.b64encode(hashlib.sha256(summary.encode()).digest()).decode()
    assert hash1(files) == f"h1:{digest}"


def test_protocol(proxy: FakeGoProxy) -> None:
    url = proxy.url
    listing = fetch(url, "/example.test/greet/@v/list")
    assert (listing.status, listing.body) == (200, b"v1.0.0\nv1.1.0\n")
    assert listing.headers["Content-Type"] == "text/plain; charset=utf-8"

    info = fetch(url, f"{WORDS_URL}/@v/v0.2.0.info")
    assert info.headers["Content-Type"] == "application/json"
    assert json.loads(info.body) == {"Version": "v0.2.0", "Time": DEFAULT_TIME}
    mod = fetch(url, "/example.test/greet/@v/v1.1.0.mod")
    assert mod.body.decode() == (
        "module example.test/greet\n\ngo 1.19\n\nrequire (\n\texample.test/Upper/words v0.2.0\n)\n"
    )
    zipped = fetch(url, f"{WORDS_URL}/@v/v0.2.0.zip")
    assert zipped.headers["Content-Type"] == "application/zip"
    with zipfile.ZipFile(BytesIO(zipped.body)) as zf:
        assert zf.namelist() == [
            f"{WORDS}@v0.2.0/README",
            f"{WORDS}@v0.2.0/go.mod",
            f"{WORDS}@v0.2.0/words.go",
        ]
        assert zf.read(f"{WORDS}@v0.2.0/go.mod") == proxy.module(WORDS, "v0.2.0").mod
    assert hash_zip(zipped.body) == proxy.module(WORDS, "v0.2.0").h1
    head = fetch(url, f"{WORDS_URL}/@v/v0.2.0.zip", method="HEAD")
    assert (head.status, head.body) == (200, b"")
    assert head.headers["Content-Length"] == str(len(zipped.body))

    # The proxy speaks only the encoded form: a raw upper-case letter is a bad request.
    assert fetch(url, "/example.test/Upper/words/@v/list").status == 400
    assert fetch(url, "/example.test/!upper/words/@v/v0.2.0.txt").status == 404
    assert fetch(url, "/example.test/greet/@v/list", method="POST").status == 405

    # Unknown: 404 with a text/plain body naming what is missing.
    for path, what in [
        ("/example.test/nope/@v/list", "example.test/nope/@v/list"),
        ("/example.test/nope/@latest", "example.test/nope@latest"),
        ("/example.test/greet/@v/v9.9.9.info", "example.test/greet@v9.9.9"),
        (f"{WORDS_URL}/@v/v0.1.0.zip", f"{WORDS}@v0.1.0"),
    ]:
        answer = fetch(url, path)
        assert answer.status == 404, path
        assert answer.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert answer.body == f"not found: {what}\n".encode()

    # Not a sumdb proxy: 404, logged like the rest.
    assert fetch(url, "/sumdb/sum.golang.org/supported").status == 404
    assert proxy.paths("/sumdb/") == ["/sumdb/sum.golang.org/supported"]
    assert [r.status for r in proxy.requests if r.path.startswith("/sumdb/")] == [404]
    assert proxy.count(WORDS_URL) == 5


def test_etags_and_a_version_added_later(proxy: FakeGoProxy) -> None:
    url = proxy.url
    listing = fetch(url, "/example.test/greet/@v/list")
    latest = fetch(url, "/example.test/greet/@latest")
    assert json.loads(latest.body)["Version"] == "v1.1.0"
    for path, answer in [("/@v/list", listing), ("/@latest", latest)]:
        etag = answer.headers["ETag"]
        again = fetch(url, "/example.test/greet" + path, {"If-None-Match": etag})
        assert (again.status, again.body, again.headers["ETag"]) == (304, b"", etag)

    proxy.add_module(GREET, "v1.2.0", {"greet.go": GREET_12_GO})
    proxy.add_module(GREET, "v1.3.0-rc.1", {"greet.go": GREET_12_GO})  # not a release
    for path, answer in [("/@v/list", listing), ("/@latest", latest)]:
        etag = answer.headers["ETag"]
        moved = fetch(url, "/example.test/greet" + path, {"If-None-Match": etag})
        assert moved.status == 200
        assert moved.headers["ETag"] != etag
    assert (
        fetch(url, "/example.test/greet/@v/list").body == b"v1.0.0\nv1.1.0\nv1.2.0\nv1.3.0-rc.1\n"
    )
    assert json.loads(fetch(url, "/example.test/greet/@latest").body)["Version"] == "v1.2.0"
    assert proxy.versions(GREET) == ["v1.0.0", "v1.1.0", "v1.2.0", "v1.3.0-rc.1"]


def test_unlisted_versions_corrupt_zips_and_410() -> None:
    with FakeGoProxy(missing_status=410, not_found_message="Not in offline seed: {what}") as px:
        mv = px.add_module("example.test/pseudo", PSEUDO, {"p.go": "package p\n"}, listed=False)
        assert fetch(px.url, "/example.test/pseudo/@v/list").body == b""
        latest = json.loads(fetch(px.url, "/example.test/pseudo/@latest").body)
        assert latest["Version"] == PSEUDO

        original = fetch(px.url, f"/example.test/pseudo/@v/{PSEUDO}.zip").body
        assert original == mv.zip == mv.served_zip
        tampered = px.corrupt_zip("example.test/pseudo", PSEUDO)
        served = fetch(px.url, f"/example.test/pseudo/@v/{PSEUDO}.zip").body
        assert served == tampered != original
        assert mv.zip == original  # what go.sum should say stays known
        assert hash_zip(served) != mv.h1
        px.corrupt_zip("example.test/pseudo", PSEUDO, b"junk")
        assert fetch(px.url, f"/example.test/pseudo/@v/{PSEUDO}.zip").body == b"junk"

        gone = fetch(px.url, "/example.test/other/@v/list")
        assert gone.status == 410
        assert gone.body == b"Not in offline seed: example.test/other/@v/list\n"


# --- the real go -----------------------------------------------------------------------


@needs_go
def test_download_then_build(proxy: FakeGoProxy, tmp_path: Path, gocache: Path) -> None:
    """(a) ``go mod download`` then ``go build``: real zips, real go.sum, a program that runs."""
    env = go_env(tmp_path, proxy.url, gocache=gocache)
    main = main_module(tmp_path)

    run_go(["mod", "download"], main, env)
    # Only what go.mod names (greet): the graph is pruned below a go >= 1.17 module.
    assert sorted(proxy.paths()) == [
        "/example.test/greet/@v/v1.1.0.info",
        "/example.test/greet/@v/v1.1.0.mod",
        "/example.test/greet/@v/v1.1.0.zip",
    ]
    assert proxy.paths()[0] == "/example.test/greet/@v/v1.1.0.mod"
    assert (main / "go.sum").read_text().splitlines() == [
        proxy.module(GREET, "v1.1.0").gosum_lines()[1]
    ]

    proxy.reset_log()
    built = run_go(["build", "-o", "prog", "."], main, env)
    assert "go: downloading example.test/Upper/words v0.2.0" in built.stderr
    assert sorted(proxy.paths()) == [
        f"{WORDS_URL}/@v/v0.2.0.info",
        f"{WORDS_URL}/@v/v0.2.0.mod",
        f"{WORDS_URL}/@v/v0.2.0.zip",
    ]
    assert all(r.status == 200 for r in proxy.requests)
    # go's own hashes of the fake's zips and go.mods are the ones the fake computes.
    assert sorted((main / "go.sum").read_text().splitlines()) == gosum_lines(
        proxy, (GREET, "v1.1.0"), (WORDS, "v0.2.0")
    )
    assert "\texample.test/Upper/words v0.2.0\n" in (main / "go.mod").read_text()

    ran = subprocess.run([main / "prog"], capture_output=True, text=True, timeout=30, check=True)
    assert ran.stdout == EXPECTED_OUTPUT

    # Everything is in the module cache now: another build asks nothing.
    proxy.reset_log()
    run_go(["build", "-o", "prog2", "."], main, env)
    assert proxy.paths() == []


@needs_go
def test_build_on_empty_cache(proxy: FakeGoProxy, tmp_path: Path, gocache: Path) -> None:
    """``go build`` with ``-mod=mod`` alone fetches .mod, .zip and .info of both modules."""
    env = go_env(tmp_path, proxy.url, gocache=gocache)
    main = main_module(tmp_path)
    run_go(["build", "-o", "prog", "."], main, env)
    assert sorted(proxy.paths()) == sorted(
        f"{base}/@v/{v}.{ext}"
        for base, v in [("/example.test/greet", "v1.1.0"), (WORDS_URL, "v0.2.0")]
        for ext in ("info", "mod", "zip")
    )
    ran = subprocess.run([main / "prog"], capture_output=True, text=True, timeout=30, check=True)
    assert ran.stdout == EXPECTED_OUTPUT


@needs_go
def test_get_latest(proxy: FakeGoProxy, tmp_path: Path, gocache: Path) -> None:
    """(b) ``go get greet@latest`` resolves v1.1.0 from @v/list; a newer version moves it."""
    env = go_env(tmp_path, proxy.url, gocache=gocache)
    fresh = write_main_module(tmp_path / "fresh", {}, {})

    got = run_go(["get", "example.test/greet@latest"], fresh, env)
    assert "go: added example.test/greet v1.1.0" in got.stderr
    assert "\texample.test/greet v1.1.0 // indirect\n" in (fresh / "go.mod").read_text()
    paths = proxy.paths()
    # list, not @latest: go 1.19 asks @latest only when the list has no usable version.
    assert "/example.test/greet/@v/list" in paths
    assert not any(p.endswith("/@latest") for p in paths)
    assert sorted(paths) == sorted(
        [
            "/example.test/greet/@v/list",
            "/example.test/@v/list",  # the path prefix might be the module: 404
            "/example.test/greet/@v/v1.1.0.info",
            "/example.test/greet/@v/v1.1.0.mod",
            "/example.test/greet/@v/v1.1.0.zip",
            f"{WORDS_URL}/@v/list",
            f"{WORDS_URL}/@v/v0.2.0.info",
            f"{WORDS_URL}/@v/v0.2.0.mod",
            f"{WORDS_URL}/@v/v0.2.0.zip",
        ]
    )
    assert [r.status for r in proxy.requests if r.path == "/example.test/@v/list"] == [404]
    assert paths.index("/example.test/greet/@v/list") < paths.index(
        "/example.test/greet/@v/v1.1.0.info"
    )

    # A version published later: the next @latest query sees it (go caches no list).
    proxy.add_module(GREET, "v1.2.0", {"greet.go": GREET_12_GO})
    proxy.reset_log()
    got = run_go(["get", "example.test/greet@latest"], fresh, env)
    assert "go: upgraded example.test/greet v1.1.0 => v1.2.0" in got.stderr
    assert sorted(proxy.paths()) == [
        "/example.test/@v/list",
        "/example.test/greet/@v/list",
        "/example.test/greet/@v/v1.2.0.info",
        "/example.test/greet/@v/v1.2.0.mod",
        "/example.test/greet/@v/v1.2.0.zip",
    ]


@needs_go
def test_get_latest_asks_at_latest_when_nothing_is_listed(tmp_path: Path, gocache: Path) -> None:
    """(b) With an empty @v/list (a pseudo-version-only module) go 1.19 asks @latest."""
    with FakeGoProxy() as px:
        px.add_module("example.test/pseudo", PSEUDO, {"p.go": "package p\n"}, listed=False)
        env = go_env(tmp_path, px.url, gocache=gocache)
        fresh = write_main_module(tmp_path / "fresh", {}, {})
        got = run_go(["get", "example.test/pseudo@latest"], fresh, env)
        assert f"go: added example.test/pseudo {PSEUDO}" in got.stderr
        paths = px.paths()
        assert sorted(paths) == sorted(
            [
                "/example.test/pseudo/@v/list",
                "/example.test/@v/list",
                "/example.test/pseudo/@latest",
                f"/example.test/pseudo/@v/{PSEUDO}.mod",
                f"/example.test/pseudo/@v/{PSEUDO}.zip",
            ]
        )
        assert paths.index("/example.test/pseudo/@v/list") < paths.index(
            "/example.test/pseudo/@latest"
        )


@needs_go
@pytest.mark.parametrize("status", [404, 410])
def test_unknown_module_shows_the_body(status: int, tmp_path: Path, gocache: Path) -> None:
    """(c) go prints a text/plain error body after the status: what cachesrv relies on."""
    message = "Not in offline seed: {what}"
    with FakeGoProxy(missing_status=status, not_found_message=message) as px:
        add_test_modules(px)
        env = go_env(tmp_path, px.url, gocache=gocache)
        fresh = write_main_module(tmp_path / "fresh", {}, {})
        reason = {404: "404 Not Found", 410: "410 Gone"}[status]

        failed = run_go(["mod", "download", "example.test/nope@v1.0.0"], fresh, env, check=False)
        assert failed.returncode == 1
        assert failed.stderr == (
            f"go: example.test/nope@v1.0.0: reading {px.url}/example.test/nope/@v/v1.0.0.info: "
            f"{reason}\n\tserver response: Not in offline seed: example.test/nope@v1.0.0\n"
        )
        assert px.paths() == ["/example.test/nope/@v/v1.0.0.info"]

        px.reset_log()
        failed = run_go(["get", "example.test/nope@latest"], fresh, env, check=False)
        assert failed.returncode == 1
        assert (
            f"go: example.test/nope@latest: module example.test/nope: reading "
            f"{px.url}/example.test/nope/@v/list: {reason}\n"
            "\tserver response: Not in offline seed: example.test/nope/@v/list\n"
        ) == failed.stderr
        # Both candidate module paths, no @latest after a 404/410 list.
        assert sorted(px.paths()) == ["/example.test/@v/list", "/example.test/nope/@v/list"]

        # A known module, an unknown version.
        failed = run_go(["get", "example.test/greet@v9.9.9"], fresh, env, check=False)
        assert "\tserver response: Not in offline seed: example.test/greet@v9.9.9\n" in (
            failed.stderr
        )


@needs_go
def test_multiline_body(tmp_path: Path, gocache: Path) -> None:
    """A body of several lines is shown line by line, up to its first blank line."""
    message = "Not in offline seed: {what}\nseed: offline.bundle\n\nnot shown"
    with FakeGoProxy(not_found_message=message) as px:
        env = go_env(tmp_path, px.url, gocache=gocache)
        fresh = write_main_module(tmp_path / "fresh", {}, {})
        failed = run_go(["mod", "download", "example.test/nope@v1.0.0"], fresh, env, check=False)
        assert failed.stderr.endswith(
            "404 Not Found\n\tserver response:\n"
            "\tNot in offline seed: example.test/nope@v1.0.0\n\tseed: offline.bundle\n"
        )


@needs_go
def test_corrupted_zip_fails_checksum(proxy: FakeGoProxy, tmp_path: Path, gocache: Path) -> None:
    """(d) Once go.sum records a zip, other bytes from the proxy are a checksum mismatch."""
    main = main_module(tmp_path)
    run_go(
        ["build", "-o", "prog", "."], main, go_env(tmp_path / "first", proxy.url, gocache=gocache)
    )
    gosum = (main / "go.sum").read_text()
    greet = proxy.module(GREET, "v1.1.0")
    assert f"{GREET} v1.1.0 {greet.h1}\n" in gosum

    tampered = proxy.corrupt_zip(GREET, "v1.1.0")
    proxy.reset_log()
    env = go_env(tmp_path / "second", proxy.url, gocache=gocache)  # an empty module cache
    failed = run_go(["mod", "download"], main, env, check=False)
    assert failed.returncode == 1
    assert (
        f"verifying {GREET}@v1.1.0: checksum mismatch\n"
        f"\tdownloaded: {hash_zip(tampered)}\n"
        f"\tgo.sum:     {greet.h1}\n\nSECURITY ERROR\n"
    ) in failed.stderr
    assert "/example.test/greet/@v/v1.1.0.zip" in proxy.paths()
    assert (main / "go.sum").read_text() == gosum  # go did not "fix" go.sum
    # Nothing of the bad zip is left in the module cache.
    modcache = Path(env["GOMODCACHE"])
    assert not (modcache / "example.test" / "greet@v1.1.0").exists()
    assert not (modcache / "cache/download/example.test/greet/@v/v1.1.0.zip").exists()

    # The same for a build, and for bytes that are not a zip at all.
    proxy.corrupt_zip(GREET, "v1.1.0", b"not a zip")
    env = go_env(tmp_path / "third", proxy.url, gocache=gocache)
    with pytest.raises(ClientFailed) as info:
        run_go(["build", "-o", "prog", "."], main, env)
    assert "zip: not a valid zip file" in info.value.stderr


@needs_go
def test_sumdb_supported_is_asked_and_404_sends_go_direct(
    proxy: FakeGoProxy, tmp_path: Path, gocache: Path
) -> None:
    """With a checksum database on, go asks the proxy whether it proxies it; on 404 go
    goes to the database itself, which the trap proxy stops on loopback."""
    env = go_env(tmp_path, proxy.url, gocache=gocache)
    env["GOSUMDB"] = sumdb_key("sum.example.test")
    main = write_main_module(tmp_path / "main", {WORDS: "v0.2.0"}, {WORDS: "Word"})
    failed = run_go(["mod", "download"], main, env, check=False)
    assert failed.returncode == 1
    assert proxy.paths() == [f"{WORDS_URL}/@v/v0.2.0.mod", "/sumdb/sum.example.test/supported"]
    assert proxy.requests[-1].status == 404
    assert (
        'Get "https://sum.example.test/lookup/example.test/!upper/words@v0.2.0": '
        "proxyconnect tcp: dial tcp 127.0.0.1:9: connect: connection refused"
    ) in failed.stderr


@needs_go
def test_checksum_database(tmp_path: Path, gocache: Path) -> None:
    """With ``sumdb=NAME`` the fake is a real checksum database: go checks the signed tree
    head and the record's place in the log through tiles (two levels here), and refuses
    a zip other than the one the database recorded, with no go.sum to compare."""
    with FakeGoProxy(sumdb="sum.example.test") as px:
        db = px.sumdb
        assert db is not None
        for i in range(300):  # other records first: greet sits in the second level-0 tile
            mod = f"example.test/filler{i}"
            db.add(mod, "v1.0.0", [f"{mod} v1.0.0 h1:{i}", f"{mod} v1.0.0/go.mod h1:{i}"])
        add_test_modules(px)
        assert db.size == 303
        env = go_env(tmp_path / "a", px.url, gocache=gocache)
        env["GOSUMDB"] = db.vkey
        main = main_module(tmp_path / "a")
        run_go(["build", "-o", "prog", "."], main, env)
        assert sorted((main / "go.sum").read_text().splitlines()) == gosum_lines(
            px, (GREET, "v1.1.0"), (WORDS, "v0.2.0")
        )
        sumdb = sorted(p for p in px.paths() if p.startswith("/sumdb/"))
        assert sumdb == [
            "/sumdb/sum.example.test/lookup/example.test/!upper/words@v0.2.0",
            "/sumdb/sum.example.test/lookup/example.test/greet@v1.1.0",
            "/sumdb/sum.example.test/supported",
            "/sumdb/sum.example.test/tile/8/0/001.p/47",
            "/sumdb/sum.example.test/tile/8/1/000.p/1",
        ]
        # The signed tree head, as go reads it: go.sum database tree, size, hash, signature.
        head = fetch(px.url, "/sumdb/sum.example.test/latest").body.decode()
        assert head.startswith("go.sum database tree\n303\n")
        assert "\n\n\u2014 sum.example.test " in head

        tampered = px.corrupt_zip(GREET, "v1.1.0")
        env = go_env(tmp_path / "b", px.url, gocache=gocache)
        env["GOSUMDB"] = db.vkey
        fresh = main_module(tmp_path / "b")
        failed = run_go(["mod", "download"], fresh, env, check=False)
        assert failed.returncode == 1
        assert (
            f"go: {GREET}@v1.1.0: verifying module: checksum mismatch\n"
            f"\tdownloaded: {hash_zip(tampered)}\n"
            f"\tsum.example.test: {px.module(GREET, 'v1.1.0').h1}\n\nSECURITY ERROR\n"
            "This download does NOT match the one reported by the checksum server."
        ) in failed.stderr


@needs_go
def test_go_env_is_shielded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # What a machine may have set: inherited variables, and a `go env -w` file.
    monkeypatch.setenv("GOPRIVATE", "example.test")
    monkeypatch.setenv("GOFLAGS", "-mod=vendor")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    env = go_env(tmp_path, "http://127.0.0.1:1")
    envfile = Path(env["XDG_CONFIG_HOME"]) / "go" / "env"  # go's default GOENV there
    envfile.parent.mkdir(parents=True)
    envfile.write_text("GONOSUMDB=example.test\nGOINSECURE=example.test\n")
    assert env["HTTPS_PROXY"] == env["https_proxy"] == "http://127.0.0.1:9"
    shown = json.loads(run_go(["env", "-json"], tmp_path, env).stdout)
    assert shown["GOPROXY"] == "http://127.0.0.1:1"
    assert shown["GOSUMDB"] == "off"
    assert (shown["GONOSUMDB"], shown["GOPRIVATE"], shown["GONOPROXY"]) == ("", "", "")
    assert shown["GOFLAGS"] == "-mod=mod"
    assert shown["GOENV"] == ""  # off: no file read
    assert shown["GOINSECURE"] == ""
    assert shown["CGO_ENABLED"] == "0"
    for key in ("GOPATH", "GOMODCACHE", "GOCACHE"):
        assert Path(shown[key]).is_relative_to(tmp_path), key
