"""Self-tests of the fake PyPI index and the pip/uv drivers, with no cachesrv involved.

Real pip and real uv talk to ``FakePyPI`` on 127.0.0.1; their environment points every
proxy variable at a closed loopback port, so any attempt to leave loopback fails the test.
Tests that need real wheels (``requests``, ``six``, ``setuptools``...) take them from the
test-dists cache and skip, saying how to fill it, when it is empty.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import threading
import zipfile
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.fakes.dists import (
    DistsNotCached,
    build_sdist,
    build_wheel,
    fetch_real_dists,
    real_dists_or_skip,
)
from tests.fakes.pipclient import TRAP_PROXY, pip, pip_env, uv, uv_env
from tests.fakes.pypi import HTML_V1, JSON_V1, TEXT_HTML, FakePyPI, negotiate

PIP_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, "
    "text/html; q=0.01"
)
UV_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, "
    "text/html;q=0.01"
)
SIX = "six-1.16.0-py2.py3-none-any.whl"


@dataclass
class Answer:
    status: int
    headers: Message
    body: bytes


def fetch(base: str, method: str, path: str, headers: dict[str, str] | None = None) -> Answer:
    """One raw request (no redirects followed) to ``base`` (an origin URL)."""
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return Answer(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


@pytest.fixture
def dists(tmp_path: Path) -> Path:
    """Directory served by the fake index."""
    path = tmp_path / "dists"
    path.mkdir()
    return path


# --- the server itself -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (PIP_ACCEPT, JSON_V1),
        (UV_ACCEPT, JSON_V1),
        (None, TEXT_HTML),
        ("*/*", TEXT_HTML),
        ("text/html", TEXT_HTML),
        (HTML_V1, HTML_V1),
        ("application/vnd.pypi.simple.latest+json", JSON_V1),
        ("text/html, application/vnd.pypi.simple.v1+json;q=0.5", TEXT_HTML),
        ("application/json", None),
    ],
)
def test_negotiate(accept: str | None, expected: str | None) -> None:
    assert negotiate(accept) == expected


def test_pages_files_and_conditional_requests(dists: Path) -> None:
    wheel = build_wheel(dists, "Foo.Bar", "1.0", requires=["six"], requires_python=">=3.8")
    sdist = build_sdist(dists, "Foo.Bar", "1.1", requires_python="<4,>=3.9")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    with FakePyPI(dists) as index:
        assert index.index_url == index.url + "/simple/"
        for path in ("/simple/Foo.Bar/", "/simple/foo-bar", "/simple/FOO_BAR"):
            answer = fetch(index.url, "GET", path)
            assert (answer.status, answer.headers["Location"]) == (301, "/simple/foo-bar/")

        listing = fetch(index.url, "GET", "/simple/")
        assert listing.status == 200
        assert b'href="/simple/foo-bar/"' in listing.body

        page = fetch(index.url, "GET", "/simple/foo-bar/")
        assert page.headers["Content-Type"] == "text/html; charset=utf-8"
        text = page.body.decode()
        assert f'href="../../files/{wheel.name}#sha256={digest}"' in text
        assert 'data-requires-python="&gt;=3.8"' in text
        assert 'data-requires-python="&lt;4,&gt;=3.9"' in text
        meta_page = fetch(index.url, "GET", f"/files/{wheel.name}.metadata")
        meta_digest = hashlib.sha256(meta_page.body).hexdigest()
        assert b"Requires-Dist: six" in meta_page.body
        assert f'data-core-metadata="sha256={meta_digest}"' in text
        assert f'data-dist-info-metadata="sha256={meta_digest}"' in text
        assert text.count("data-core-metadata") == 1  # sdists have none

        doc = json.loads(fetch(index.url, "GET", "/simple/foo-bar/", {"Accept": PIP_ACCEPT}).body)
        assert doc["meta"] == {"api-version": "1.1"}
        assert doc["versions"] == ["1.0", "1.1"]
        first = doc["files"][0]
        assert first["filename"] == wheel.name
        assert first["hashes"] == {"sha256": digest}
        assert first["core-metadata"] == first["dist-info-metadata"] == {"sha256": meta_digest}
        assert first["size"] == wheel.stat().st_size
        assert first["yanked"] is False
        assert doc["files"][1]["core-metadata"] is False

        assert fetch(index.url, "GET", "/simple/foo-bar/", {"Accept": "image/png"}).status == 406
        assert fetch(index.url, "GET", "/simple/nothing/").status == 404
        etag = page.headers["ETag"]
        again = fetch(index.url, "GET", "/simple/foo-bar/", {"If-None-Match": etag})
        assert (again.status, again.body) == (304, b"")
        since = {"If-Modified-Since": page.headers["Last-Modified"]}
        assert fetch(index.url, "GET", "/simple/foo-bar/", since).status == 304

        head = fetch(index.url, "HEAD", f"/files/{wheel.name}")
        assert head.status == 200 and head.body == b""
        assert head.headers["Content-Length"] == str(wheel.stat().st_size)
        assert head.headers["Accept-Ranges"] == "bytes"
        tail = fetch(index.url, "GET", f"/files/{wheel.name}", {"Range": "bytes=-22"})
        assert tail.status == 206 and tail.body == wheel.read_bytes()[-22:]
        size = wheel.stat().st_size
        assert tail.headers["Content-Range"] == f"bytes {size - 22}-{size - 1}/{size}"
        mid = fetch(index.url, "GET", f"/files/{wheel.name}", {"Range": "bytes=10-19"})
        assert mid.body == wheel.read_bytes()[10:20]
        beyond = fetch(index.url, "GET", f"/files/{wheel.name}", {"Range": f"bytes={size}-"})
        assert beyond.status == 416
        assert fetch(index.url, "GET", f"/files/{sdist.name}").body == sdist.read_bytes()
        assert fetch(index.url, "GET", f"/files/{sdist.name}.metadata").status == 404

        index.hide(sdist.name)
        index.yank(wheel.name, "broken")
        page = fetch(index.url, "GET", "/simple/foo-bar/")
        assert sdist.name.encode() not in page.body
        assert b'data-yanked="broken"' in page.body
        assert fetch(index.url, "GET", "/simple/foo-bar/", {"If-None-Match": etag}).status == 200

        assert index.count("/simple/foo-bar/") == 7
        recorded = index.requests[0]
        assert (recorded.method, recorded.path, recorded.status) == ("GET", "/simple/Foo.Bar/", 301)
        assert [r.status for r in index.requests if r.range] == [206, 206, 416]
        index.reset_log()
        assert index.count() == 0


def test_files_on_other_host_and_no_metadata(dists: Path) -> None:
    wheel = build_wheel(dists, "solo", "1.0")
    with FakePyPI(dists, metadata=False, files_on_other_host=True) as index:
        assert index.files_url != index.url
        doc = json.loads(fetch(index.url, "GET", "/simple/solo/", {"Accept": UV_ACCEPT}).body)
        (entry,) = doc["files"]
        assert entry["url"] == f"{index.files_url}/files/{wheel.name}"
        assert entry["core-metadata"] is False
        assert b"data-core-metadata" not in fetch(index.url, "GET", "/simple/solo/").body
        assert fetch(index.url, "GET", f"/files/{wheel.name}").status == 404
        assert fetch(index.files_url, "GET", "/simple/solo/").status == 404
        assert fetch(index.files_url, "GET", f"/files/{wheel.name}.metadata").status == 404
        assert fetch(index.files_url, "GET", f"/files/{wheel.name}").body == wheel.read_bytes()
        assert [r.listener for r in index.requests] == ["index"] * 3 + ["files"] * 3


def test_start_stop_lifecycle(dists: Path) -> None:
    index = FakePyPI(dists)
    index.stop()  # never started: nothing to do
    with index:
        assert fetch(index.url, "GET", "/simple/").status == 200
        with pytest.raises(RuntimeError):
            index.start()
    index.stop()  # idempotent
    assert not [t for t in threading.enumerate() if t.name == "FakePyPI"]
    with pytest.raises(OSError):
        fetch(index.url, "GET", "/simple/")


# --- building distributions ------------------------------------------------------------


def test_build_wheel_is_valid_and_reproducible(tmp_path: Path) -> None:
    one = build_wheel(tmp_path / "a", "My_Pkg", "2.0", requires=["six>=1"])
    two = build_wheel(tmp_path / "b", "My_Pkg", "2.0", requires=["six>=1"])
    assert one.name == "my_pkg-2.0-py3-none-any.whl"
    assert one.read_bytes() == two.read_bytes()
    with zipfile.ZipFile(one) as zf:
        record = zf.read("my_pkg-2.0.dist-info/RECORD").decode().splitlines()
        assert len(record) == len(zf.namelist())
        metadata = zf.read("my_pkg-2.0.dist-info/METADATA").decode()
    assert "Requires-Dist: six>=1" in metadata
    sdist = build_sdist(tmp_path / "a", "My_Pkg", "2.0")
    assert sdist.name == "my_pkg-2.0.tar.gz"
    assert sdist.read_bytes() == build_sdist(tmp_path / "b", "My_Pkg", "2.0").read_bytes()


def test_fetch_real_dists_never_downloads_by_default(tmp_path: Path) -> None:
    with pytest.raises(DistsNotCached, match="fetch-test-dists.sh"):
        fetch_real_dists(tmp_path / "out", ["six==1.16.0"], cache=tmp_path / "empty")


def test_pip_env_drops_machine_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIP_FIND_LINKS", "/opt/wheels")
    monkeypatch.setenv("UV_INDEX_URL", "http://example.invalid/simple")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    env = pip_env(tmp_path)
    assert "PIP_FIND_LINKS" not in env and "UV_INDEX_URL" not in env
    assert env["PIP_CONFIG_FILE"] == "/dev/null"
    assert env["HTTPS_PROXY"] == env["https_proxy"] == TRAP_PROXY
    assert env["HOME"].startswith(str(tmp_path))
    uenv = uv_env(tmp_path, "http://127.0.0.1:1/simple/")
    assert uenv["UV_NO_CONFIG"] == "1" and uenv["UV_DEFAULT_INDEX"].endswith("/simple/")


# --- real pip and uv against the fake --------------------------------------------------


@pytest.mark.parametrize(("metadata", "other_host"), [(True, False), (False, False), (True, True)])
def test_pip_download_six(tmp_path: Path, dists: Path, metadata: bool, other_host: bool) -> None:
    (wheel,) = real_dists_or_skip(dists, ["six==1.16.0"])
    with FakePyPI(dists, metadata=metadata, files_on_other_host=other_host) as index:
        out = tmp_path / "out"
        pip("download", "six==1.16.0", "-d", str(out), index_url=index.index_url, tmp=tmp_path)
        assert (out / SIX).read_bytes() == wheel.read_bytes()
        expected = ["GET /simple/six/"]
        if metadata:
            expected.append(f"GET /files/{SIX}.metadata")  # PEP 658: before the wheel
        expected.append(f"GET /files/{SIX}")
        assert index.paths() == expected
        assert index.requests[0].headers["Accept"] == PIP_ACCEPT
        files_listener = "files" if other_host else "index"
        assert {r.listener for r in index.requests[1:]} == {files_listener}


def test_pip_download_requests_with_dependencies(tmp_path: Path, dists: Path) -> None:
    wheels = real_dists_or_skip(dists, ["requests"])
    with FakePyPI(dists) as index:
        out = tmp_path / "out"
        pip("download", "requests", "-d", str(out), index_url=index.index_url, tmp=tmp_path)
        assert sorted(p.name for p in out.iterdir()) == sorted(w.name for w in wheels)
        for project in ("requests", "urllib3", "idna", "certifi", "charset-normalizer"):
            assert index.count(f"/simple/{project}/") == 1
        assert all(r.status == 200 for r in index.requests)


def test_pip_builds_sdist_with_build_deps_from_index(tmp_path: Path, dists: Path) -> None:
    real_dists_or_skip(dists, ["setuptools", "wheel"])
    sdist = build_sdist(dists, "cachesrv-sdist-demo", "1.0")
    with FakePyPI(dists) as index:
        target = tmp_path / "target"
        pip(
            "install", "--target", str(target), "cachesrv-sdist-demo",
            index_url=index.index_url, tmp=tmp_path,
        )  # fmt: skip
        assert (target / "cachesrv_sdist_demo" / "__init__.py").is_file()
        # Build isolation fetched the backend from this index, and nothing failed.
        assert index.count(f"/files/{sdist.name}") == 1
        assert index.count("/simple/setuptools/") == 1
        assert index.count("/simple/wheel/") == 1
        assert index.count("/files/setuptools-") >= 1
        assert all(r.status == 200 for r in index.requests)


def test_pip_installs_built_wheels_honouring_requires_python(tmp_path: Path, dists: Path) -> None:
    build_wheel(dists, "alpha", "1.0", requires=["beta>=2"])
    build_wheel(dists, "beta", "1.0")
    build_wheel(dists, "beta", "2.0")
    build_wheel(dists, "beta", "3.0", requires_python=">=99")
    with FakePyPI(dists) as index:
        target = tmp_path / "target"
        pip("install", "--target", str(target), "alpha", index_url=index.index_url, tmp=tmp_path)
        installed = sorted(p.name for p in target.glob("*.dist-info"))
        assert installed == ["alpha-1.0.dist-info", "beta-2.0.dist-info"]
        assert index.count("/files/beta-3.0") == 0


@pytest.mark.parametrize("metadata", [True, False])
def test_uv_installs_from_fake_index(tmp_path: Path, dists: Path, metadata: bool) -> None:
    build_wheel(dists, "alpha", "1.0", requires=["beta"])
    beta = build_wheel(dists, "beta", "1.0")
    with FakePyPI(dists, metadata=metadata) as index:
        target = tmp_path / "target"
        uv(
            "pip", "install", "--target", str(target), "alpha",
            index_url=index.index_url, tmp=tmp_path,
        )  # fmt: skip
        assert (target / "alpha" / "__init__.py").is_file()
        assert (target / "beta" / "__init__.py").is_file()
        assert index.count("/simple/alpha/") == index.count("/simple/beta/") == 1
        assert all(r.status in (200, 206) for r in index.requests)
        file_requests = [r for r in index.requests if r.path == f"/files/{beta.name}"]
        # Without PEP 658 metadata uv first probes with HEAD and Range (see PITFALLS.md);
        # whatever it probes with, it ends with a full download.
        assert any(r.method == "GET" and r.range is None for r in file_requests)


def test_uv_installs_real_six(tmp_path: Path, dists: Path) -> None:
    real_dists_or_skip(dists, ["six==1.16.0"])
    with FakePyPI(dists) as index:
        target = tmp_path / "target"
        uv(
            "pip", "install", "--target", str(target), "six==1.16.0",
            index_url=index.index_url, tmp=tmp_path,
        )  # fmt: skip
        assert (target / "six.py").is_file()
        assert index.paths() == [
            "GET /simple/six/",
            f"GET /files/{SIX}.metadata",
            f"GET /files/{SIX}",
        ]
        assert index.requests[0].headers["Accept"] == UV_ACCEPT


def test_lying_file_fails_hash_check(tmp_path: Path, dists: Path) -> None:
    wheel = build_wheel(dists, "liar", "1.0")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    with FakePyPI(dists) as index:
        index.lie_about(wheel.name)
        served = fetch(index.url, "GET", f"/files/{wheel.name}").body
        assert len(served) == wheel.stat().st_size and served != wheel.read_bytes()

        out = tmp_path / "out"
        proc = pip(
            "download", "liar", "-d", str(out),
            index_url=index.index_url, tmp=tmp_path / "pip", check=False,
        )  # fmt: skip
        assert proc.returncode != 0
        assert "DO NOT MATCH THE HASHES" in proc.stderr and digest in proc.stderr
        assert not (out / wheel.name).exists()

        proc = uv(
            "pip", "install", "--target", str(tmp_path / "target"), "liar",
            index_url=index.index_url, tmp=tmp_path / "uv", check=False,
        )  # fmt: skip
        assert proc.returncode != 0
        assert "Hash mismatch" in proc.stderr and digest in proc.stderr
