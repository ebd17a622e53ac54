"""Self-tests of the test fakes: FakeUpstream, the signed apt repo builder, AptClient.

These run the real apt-get against FakeUpstream directly (no cachesrv), so when an
end-to-end cachesrv test fails, this file tells whether the fakes themselves still work.
Everything talks to 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import http.client
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from email.message import Message
from email.utils import formatdate
from pathlib import Path

import aiohttp
import pytest

from tests.fakes.aptclient import AptClient
from tests.fakes.aptrepo import AptPackage, AptRepo, add_packages, build_apt_repo
from tests.fakes.upstream import FakeUpstream, Fault, FaultKind

BIG = 300_000


@pytest.fixture
def www(tmp_path: Path) -> Path:
    """A small document root: a text file, a binary file, a .gz and a subfolder."""
    root = tmp_path / "www"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"hello, world\n")
    (root / "sub" / "big.bin").write_bytes(bytes(i % 251 for i in range(BIG)))
    (root / "sub" / "Packages.gz").write_bytes(b"\x1f\x8b not really gzip")
    (root / "empty").write_bytes(b"")
    return root


@pytest.fixture
def up(www: Path) -> Iterator[FakeUpstream]:
    with FakeUpstream(www) as server:
        yield server


def request(
    up: FakeUpstream, path: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, Message, bytes]:
    """One raw HTTP/1.1 request with http.client (no redirects, no URL normalisation)."""
    conn = http.client.HTTPConnection("127.0.0.1", up.port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


# -- FakeUpstream: serving ----------------------------------------------------------------


def test_get_head_and_headers(up: FakeUpstream, www: Path) -> None:
    assert up.url == f"http://127.0.0.1:{up.port}"
    status, headers, body = request(up, "/a.txt")
    assert (status, body) == (200, b"hello, world\n")
    assert headers["Content-Length"] == "13"
    assert headers["ETag"].startswith('"') and not headers["ETag"].startswith("W/")
    mtime = (www / "a.txt").stat().st_mtime
    assert headers["Last-Modified"] == formatdate(mtime, usegmt=True)
    assert headers["Accept-Ranges"] == "bytes"

    status, head_headers, body = request(up, "/a.txt", method="HEAD")
    assert (status, body) == (200, b"")
    assert head_headers["Content-Length"] == "13"
    assert head_headers["ETag"] == headers["ETag"]

    # A .gz is served as the bytes on disk: a type, never a Content-Encoding.
    status, headers, body = request(up, "/sub/Packages.gz")
    assert body == (www / "sub" / "Packages.gz").read_bytes()
    assert headers["Content-Type"] == "application/gzip"
    assert "Content-Encoding" not in headers

    status, headers, body = request(up, "/empty")
    assert (status, body, headers["Content-Length"]) == (200, b"", "0")


def test_missing_dir_and_methods(up: FakeUpstream) -> None:
    assert request(up, "/nope.txt")[0] == 404
    assert request(up, "/sub")[0] == 404
    assert request(up, "/sub/")[0] == 404
    assert request(up, "/")[0] == 404
    assert request(up, "/a.txt", method="POST")[0] == 405


def test_path_traversal_rejected(up: FakeUpstream, www: Path) -> None:
    (www.parent / "secret.txt").write_text("top secret\n")
    (www / "escape").symlink_to(www.parent / "secret.txt")
    for path in ("/../secret.txt", "/sub/../../secret.txt", "/%2e%2e/secret.txt", "/escape"):
        status, _, body = request(up, path)
        assert status in (403, 404), path
        assert b"top secret" not in body


def test_large_file_streams_intact(up: FakeUpstream, www: Path) -> None:
    data = (b"0123456789abcdef" * 65536) * 8  # 8 MiB
    (www / "large.bin").write_bytes(data)
    with urllib.request.urlopen(f"{up.url}/large.bin", timeout=10) as resp:
        body = resp.read()
    assert hashlib.sha256(body).digest() == hashlib.sha256(data).digest()


def test_conditional_get(up: FakeUpstream) -> None:
    _, headers, _ = request(up, "/a.txt")
    etag, last_modified = headers["ETag"], headers["Last-Modified"]

    status, h304, body = request(up, "/a.txt", {"If-None-Match": etag})
    assert (status, body) == (304, b"")
    assert h304["ETag"] == etag
    assert request(up, "/a.txt", {"If-None-Match": f'"other", W/{etag}'})[0] == 304
    assert request(up, "/a.txt", {"If-None-Match": "*"})[0] == 304
    assert request(up, "/a.txt", {"If-None-Match": '"other"'})[0] == 200

    assert request(up, "/a.txt", {"If-Modified-Since": last_modified})[0] == 304
    old = formatdate(time.time() - 10 * 86400, usegmt=True)
    assert request(up, "/a.txt", {"If-Modified-Since": old})[0] == 200
    assert request(up, "/a.txt", {"If-Modified-Since": "garbage"})[0] == 200
    # If-None-Match wins over If-Modified-Since (RFC 9110 13.2.2).
    both = {"If-None-Match": '"other"', "If-Modified-Since": last_modified}
    assert request(up, "/a.txt", both)[0] == 200
    assert request(up, "/a.txt", {"If-None-Match": etag}, method="HEAD")[0] == 304
    assert [r.status for r in up.requests][-1] == 304


def test_range_requests(up: FakeUpstream) -> None:
    full = bytes(i % 251 for i in range(BIG))
    status, headers, body = request(up, "/sub/big.bin", {"Range": "bytes=10-19"})
    assert (status, body) == (206, full[10:20])
    assert headers["Content-Range"] == f"bytes 10-19/{BIG}"
    assert headers["Content-Length"] == "10"

    status, headers, body = request(up, "/sub/big.bin", {"Range": "bytes=-5"})
    assert (status, body) == (206, full[-5:])
    status, _, body = request(up, "/sub/big.bin", {"Range": f"bytes={BIG - 3}-"})
    assert (status, body) == (206, full[-3:])
    status, _, body = request(up, "/sub/big.bin", {"Range": f"bytes=0-{BIG * 2}"})
    assert (status, body) == (206, full)

    status, headers, _ = request(up, "/sub/big.bin", {"Range": f"bytes={BIG}-"})
    assert status == 416
    assert headers["Content-Range"] == f"bytes */{BIG}"
    # Several ranges, or nonsense: the whole file, 200.
    assert request(up, "/sub/big.bin", {"Range": "bytes=0-1,5-6"})[:3:2] == (200, full)
    assert request(up, "/sub/big.bin", {"Range": "lines=1-2"})[0] == 200

    etag = request(up, "/sub/big.bin", method="HEAD")[1]["ETag"]
    assert request(up, "/sub/big.bin", {"Range": "bytes=0-0", "If-Range": etag})[0] == 206
    assert request(up, "/sub/big.bin", {"Range": "bytes=0-0", "If-Range": '"stale"'})[0] == 200
    # HEAD with a Range: headers of the 206, no body.
    status, headers, body = request(up, "/sub/big.bin", {"Range": "bytes=0-99"}, method="HEAD")
    assert (status, headers["Content-Length"], body) == (206, "100", b"")


# -- FakeUpstream: log and lifecycle ------------------------------------------------------


def test_request_log_and_counters(up: FakeUpstream) -> None:
    request(up, "/a.txt", {"X-Test": "one"})
    request(up, "/sub/big.bin?x=1", method="HEAD")
    request(up, "/sub/missing")
    assert up.count() == 3
    assert up.count("/sub/") == 2
    assert up.count("/a") == 1
    assert up.paths("/sub") == ["/sub/big.bin", "/sub/missing"]
    first, second, third = up.requests
    assert (first.method, first.path, first.status) == ("GET", "/a.txt", 200)
    assert first.headers["x-test"] == first.headers["X-TEST"] == "one"
    assert "X-Test" in first.headers and first.headers.get("Missing") is None
    assert (second.method, second.query, second.status) == ("HEAD", "x=1", 200)
    assert third.status == 404 and third.fault is None

    requests = up.requests
    up.reset_log()
    assert up.count() == 0 and up.requests is requests
    request(up, "/a.txt")
    assert up.count("/a.txt") == 1


def test_lifecycle(www: Path) -> None:
    up = FakeUpstream(www)
    up.stop()  # never started: a no-op
    assert up.start() is up
    with pytest.raises(RuntimeError):
        up.start()
    port = up.port
    assert request(up, "/a.txt")[0] == 200
    up.stop()
    up.stop()  # idempotent
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/a.txt", timeout=2)


def test_many_concurrent_requests_are_all_counted(up: FakeUpstream) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(lambda _: request(up, "/sub/big.bin")[0], range(64)))
    assert statuses == [200] * 64
    assert up.count("/sub/big.bin") == 64


# -- FakeUpstream: faults (sync, urllib) --------------------------------------------------


def test_truncate_fault_one_shot(up: FakeUpstream) -> None:
    up.faults["/sub/big.bin"] = Fault.truncate(times=1)
    with (
        pytest.raises(http.client.IncompleteRead) as err,
        urllib.request.urlopen(f"{up.url}/sub/big.bin", timeout=10) as resp,
    ):
        assert resp.headers["Content-Length"] == str(BIG)  # the full length is promised
        resp.read()
    assert len(err.value.partial) == BIG // 2
    assert "/sub/big.bin" not in up.faults  # used up
    assert up.requests[-1].fault is FaultKind.TRUNCATE
    assert up.requests[-1].status == 200
    status, _, body = request(up, "/sub/big.bin")
    assert (status, len(body)) == (200, BIG)


def test_status_fault_times_and_permanent(up: FakeUpstream) -> None:
    up.faults["/a.txt"] = Fault.status(503, "Try Later", times=2)
    assert [request(up, "/a.txt")[0] for _ in range(3)] == [503, 503, 200]
    assert [r.fault for r in up.requests] == [FaultKind.STATUS, FaultKind.STATUS, None]

    up.faults["/not/there"] = Fault.status(500)
    assert [request(up, "/not/there")[0] for _ in range(3)] == [500] * 3
    assert request(up, "/not/there", method="HEAD")[0] == 500
    assert "/not/there" in up.faults
    del up.faults["/not/there"]
    assert request(up, "/not/there")[0] == 404
    with pytest.raises(urllib.error.HTTPError) as err:
        up.faults["/a.txt"] = Fault.status(502, "Bad Gateway Injected")
        urllib.request.urlopen(f"{up.url}/a.txt", timeout=10)
    with err.value:
        assert (err.value.code, err.value.reason) == (502, "Bad Gateway Injected")


def test_lie_fault_same_length_other_bytes(up: FakeUpstream) -> None:
    full = bytes(i % 251 for i in range(BIG))
    up.faults["/sub/big.bin"] = Fault.lie()
    status, headers, body = request(up, "/sub/big.bin")
    assert status == 200 and headers["Content-Length"] == str(BIG)
    assert len(body) == BIG and body != full
    assert bytes(b ^ 0xFF for b in body) == full
    status, _, body = request(up, "/sub/big.bin", {"Range": "bytes=0-9"})
    assert status == 206 and bytes(b ^ 0xFF for b in body) == full[:10]
    assert "/sub/big.bin" in up.faults  # permanent


def test_body_faults_skip_head_and_304(up: FakeUpstream) -> None:
    etag = request(up, "/a.txt", method="HEAD")[1]["ETag"]
    up.faults["/a.txt"] = Fault.lie(times=1)
    assert request(up, "/a.txt", method="HEAD")[0] == 200
    assert request(up, "/a.txt", {"If-None-Match": etag})[0] == 304
    assert "/a.txt" in up.faults  # not used up by HEAD or 304
    assert request(up, "/a.txt")[2] != b"hello, world\n"
    assert request(up, "/a.txt")[2] == b"hello, world\n"


def test_hang_fault_and_prompt_stop(www: Path) -> None:
    up = FakeUpstream(www).start()
    try:
        up.faults["/a.txt"] = Fault.hang()
        with pytest.raises((TimeoutError, urllib.error.URLError)):
            urllib.request.urlopen(f"{up.url}/a.txt", timeout=0.3)
        assert up.requests[-1].status == 0 and up.requests[-1].fault is FaultKind.HANG
    finally:
        started = time.monotonic()
        up.stop()
    assert time.monotonic() - started < 2


def test_stop_leaks_no_socket_when_client_never_reads(www: Path) -> None:
    # A truncated body the client never reads stays in a "closing" transport; stop() must
    # still close its socket, or a later test fails on an unraisable ResourceWarning.
    (www / "huge.bin").write_bytes(b"x" * 20_000_000)
    up = FakeUpstream(www).start()
    up.faults["/huge.bin"] = Fault.truncate()
    with socket.create_connection(("127.0.0.1", up.port), timeout=10) as sock:
        sock.sendall(b"GET /huge.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert sock.recv(12) == b"HTTP/1.1 200"
        up.stop()
    gc.collect()  # a leaked transport would warn here (filterwarnings = error)


def test_stop_right_after_connect_leaks_nothing(www: Path) -> None:
    # A connection accepted (or still being accepted) when stop() runs must be closed too.
    for _ in range(10):
        up = FakeUpstream(www).start()
        with socket.create_connection(("127.0.0.1", up.port), timeout=10):
            up.stop()
        gc.collect()


# -- FakeUpstream from async tests (aiohttp client) ---------------------------------------


async def test_async_truncate_is_payload_error(up: FakeUpstream) -> None:
    up.faults["/sub/big.bin"] = Fault.truncate()
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientPayloadError):
            async with session.get(f"{up.url}/sub/big.bin") as resp:
                assert resp.status == 200
                await resp.read()
        async with session.get(f"{up.url}/a.txt") as resp:
            assert await resp.read() == b"hello, world\n"
    assert up.count("/sub/big.bin") == 1


async def test_async_slow_fault_overlaps(up: FakeUpstream, www: Path) -> None:
    data = bytes(range(256)) * 256  # 64 KiB: 16 chunks of 4 KiB, 15 pauses of 10 ms
    (www / "slow.bin").write_bytes(data)
    up.faults["/slow.bin"] = Fault.slow(chunk_size=4096, delay=0.01)
    loop = asyncio.get_running_loop()

    async def fetch(session: aiohttp.ClientSession) -> tuple[float, float, bytes]:
        async with session.get(f"{up.url}/slow.bin") as resp:
            headers_at = loop.time()
            body = await resp.read()
            return headers_at, loop.time(), body

    async with aiohttp.ClientSession() as session:
        (h1, e1, b1), (h2, e2, b2) = await asyncio.gather(fetch(session), fetch(session))
    assert b1 == b2 == data
    assert e1 - h1 >= 0.1 and e2 - h2 >= 0.1  # really slow
    assert max(h1, h2) < min(e1, e2)  # both were answering at the same time
    assert [r.fault for r in up.requests] == [FaultKind.SLOW, FaultKind.SLOW]


async def test_async_status_and_range(up: FakeUpstream) -> None:
    up.faults["/a.txt"] = Fault.status(500, times=1)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{up.url}/a.txt") as resp:
            assert resp.status == 500
        async with session.get(f"{up.url}/a.txt", headers={"Range": "bytes=7-"}) as resp:
            assert resp.status == 206
            assert await resp.read() == b"world\n"


# -- the apt repository and the real apt-get ----------------------------------------------


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> AptRepo:
    dest = tmp_path_factory.mktemp("aptrepo")
    started = time.monotonic()
    built = build_apt_repo(
        dest,
        [("hello", "1.0"), AptPackage("bigpkg", "2.0", size=2_000_000), ("epochy", "1:2.0")],
    )
    assert time.monotonic() - started < 5  # ~0.4 s here; generous for slow CI
    return built


def _sha256_section(release: str) -> dict[str, str]:
    out: dict[str, str] = {}
    section = ""
    for line in release.splitlines():
        if not line.startswith(" "):
            section = line.rstrip(":")
        elif section == "SHA256":
            digest, _size, name = line.split()
            out[name] = digest
    return out


def test_repo_layout_release_and_signatures(repo: AptRepo, tmp_path: Path) -> None:
    assert repo.root.name == "archive"
    assert not (repo.root / "signing-key.gpg").exists()  # nothing secret is served
    assert repo.debs["epochy"] == repo.root / "pool/main/e/epochy/epochy_2.0_all.deb"
    assert repo.url_path("hello") == "/pool/main/h/hello/hello_1.0_all.deb"
    assert repo.download_name("epochy") == "epochy_1%3a2.0_all.deb"
    assert repo.sources_line("http://127.0.0.1:1/") == (
        f"deb [signed-by={repo.keyring}] http://127.0.0.1:1 stable main"
    )

    release = (repo.dist_dir / "Release").read_text()
    fields = dict(
        line.split(": ", 1) for line in release.splitlines() if ": " in line and line[0] != " "
    )
    assert fields["Acquire-By-Hash"] == "yes"
    assert fields["Suite"] == "stable" and fields["Components"] == "main"
    assert set(fields["Architectures"].split()) >= {"all", "amd64"}
    assert "SHA512:" not in release  # apt's strongest hash is SHA256: by-hash/SHA256
    from email.utils import parsedate_to_datetime

    assert parsedate_to_datetime(fields["Valid-Until"]).timestamp() > time.time() + 86400

    indices = _sha256_section(release)
    for arch in ("all", "amd64"):
        for suffix in ("", ".gz", ".xz"):
            assert f"main/binary-{arch}/Packages{suffix}" in indices
    for name, digest in indices.items():
        by_hash = repo.dist_dir / Path(name).parent / "by-hash" / "SHA256" / digest
        assert by_hash.read_bytes() == (repo.dist_dir / name).read_bytes()
    packages = (repo.dist_dir / "main/binary-all/Packages").read_text()
    assert "Version: 1:2.0" in packages
    assert "Filename: pool/main/h/hello/hello_1.0_all.deb" in packages

    gpgv = ["gpgv", "--homedir", str(tmp_path), "--keyring", str(repo.keyring)]
    for args in (["InRelease"], ["Release.gpg", "Release"]):
        proc = subprocess.run(
            [*gpgv, *args], cwd=repo.dist_dir, capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0, proc.stderr


def test_debs_are_reproducible_and_distinct(repo: AptRepo, tmp_path: Path) -> None:
    other = build_apt_repo(tmp_path / "again", [("hello", "1.0"), ("other", "1.0")])
    assert other.debs["hello"].read_bytes() == repo.debs["hello"].read_bytes()
    assert other.debs["other"].read_bytes() != other.debs["hello"].read_bytes()
    assert other.keyring.read_bytes() != repo.keyring.read_bytes()  # a fresh key per repo
    assert repo.debs["bigpkg"].stat().st_size > 2_000_000


def test_apt_update_and_download_direct(repo: AptRepo, tmp_path: Path) -> None:
    with FakeUpstream(repo.root) as up:
        apt = AptClient(tmp_path / "apt", repo.sources_line(up.url))
        result = apt.update()
        assert "InRelease" in result.stdout
        # By-hash in action: the index came from by-hash/SHA256, never by its plain name.
        assert up.count("/dists/stable/main/binary-all/by-hash/SHA256/") == 1
        assert up.count("/dists/stable/main/binary-all/Packages") == 0
        assert all(r.status == 200 for r in up.requests)
        assert list(apt.lists.glob("*_Packages"))  # lists written privately

        apt.download("hello", "epochy", "bigpkg")
        for name in ("hello", "epochy", "bigpkg"):
            saved = apt.downloads / repo.download_name(name)
            assert saved.read_bytes() == repo.debs[name].read_bytes(), name
        assert up.count("/pool/") == 3

        # A second update revalidates InRelease (If-Modified-Since) and gets a 304: "Hit".
        up.reset_log()
        again = apt.update()
        assert "Hit:" in again.stdout
        inrelease = up.requests[0]
        assert inrelease.path == "/dists/stable/InRelease" and inrelease.status == 304
        assert "If-Modified-Since" in inrelease.headers
        assert up.count("/pool/") == 0


def test_add_packages_republishes(tmp_path: Path) -> None:
    repo = build_apt_repo(tmp_path / "repo", [("hello", "1.0")])
    old_inrelease = (repo.dist_dir / "InRelease").read_bytes()
    with FakeUpstream(repo.root) as up:
        apt = AptClient(tmp_path / "apt", repo.sources_line(up.url))
        apt.update()
        newer = add_packages(repo, [("hello", "1.1"), ("extra", "0.1")])
        assert newer.versions["hello"] == "1.1" and repo.versions["hello"] == "1.0"
        assert (newer.dist_dir / "InRelease").read_bytes() != old_inrelease
        assert repo.debs["hello"].exists()  # the old version stays in the pool
        apt.update()
        apt.download("hello", "extra")
        assert (apt.downloads / "hello_1.1_all.deb").read_bytes() == newer.debs[
            "hello"
        ].read_bytes()
        assert (apt.downloads / "extra_0.1_all.deb").exists()


def test_apt_client_reports_errors(repo: AptRepo, tmp_path: Path) -> None:
    with FakeUpstream(repo.root) as up:
        apt = AptClient(tmp_path / "apt", repo.sources_line(up.url))
        up.faults["/dists/stable/InRelease"] = Fault.status(500, times=1)
        with pytest.raises(AssertionError, match="500"):
            apt.update()
        assert apt.update(check=False).returncode == 0  # fault used up: fine again

        up.faults[repo.url_path("hello")] = Fault.lie()
        with pytest.raises(AssertionError, match="(?i)hash sum mismatch"):
            apt.download("hello")
        assert not (apt.downloads / "hello_1.0_all.deb").exists()


def test_expired_repo_needs_check_valid_until_off(tmp_path: Path) -> None:
    repo = build_apt_repo(tmp_path / "repo", [("hello", "1.0")], valid_days=-1)
    with FakeUpstream(repo.root) as up:
        strict = AptClient(tmp_path / "strict", repo.sources_line(up.url))
        with pytest.raises(AssertionError, match="(?i)expired"):
            strict.update()
        lax = AptClient(
            tmp_path / "lax",
            repo.sources_line(up.url),
            extra_conf='Acquire::Check-Valid-Until "false";',
        )
        lax.update()


def test_apt_client_uses_proxy_setting(repo: AptRepo, tmp_path: Path) -> None:
    # FakeUpstream as a "proxy": apt sends absolute-form request targets to it.
    with FakeUpstream(repo.root) as up:
        apt = AptClient(
            tmp_path / "apt", repo.sources_line("http://127.0.0.1:9"), proxy=up.url + "/"
        )
        assert f'Acquire::http::Proxy "{up.url}/"' in apt.config.read_text()
        apt.update(check=False)
        assert up.count("/dists/stable/InRelease") == 1  # reached via the proxy, not port 9
        assert up.requests[0].headers["Host"] == "127.0.0.1:9"


def test_apt_client_stays_private(tmp_path: Path) -> None:
    apt = AptClient(tmp_path / "apt", "deb http://127.0.0.1:9 stable main")
    conf = apt.config.read_text()
    for key in ("Dir::Etc::Parts", "Dir::State", "Dir::Cache", "Dir::Etc::TrustedParts"):
        assert f'{key} "{apt.workdir}' in conf
    env = apt.env()
    assert env["APT_CONFIG"] == str(apt.config)
    assert not {k.lower() for k in env} & {"http_proxy", "https_proxy", "no_proxy"}
    proc = apt.run("-o", "Debug::NoLocking=1", "check", check=False)
    dump = subprocess.run(
        ["apt-config", "dump"], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert "/etc/apt/apt.conf.d" not in dump and "/var/lib/apt" not in dump
    assert proc.returncode == 0, proc.stderr


def test_apt_download_unknown_package_fails(repo: AptRepo, tmp_path: Path) -> None:
    with FakeUpstream(repo.root) as up:
        apt = AptClient(tmp_path / "apt", repo.sources_line(up.url))
        apt.update()
        with pytest.raises(AssertionError, match="E:"):
            apt.download("no-such-package")
