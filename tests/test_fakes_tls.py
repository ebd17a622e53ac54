"""Self-tests of the HTTPS fakes: TestCA, FakeTlsUpstream and make_git_repo.

The real curl (OpenSSL 3), the real git (GnuTLS on Debian) and Python's ssl in strict mode
check the certificates; git clones through the real ``git http-backend``. Everything talks
to 127.0.0.1 only.
"""

from __future__ import annotations

import http.client
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.tls import FakeTlsUpstream, TestCA, client_env, make_git_repo
from tests.fakes.upstream import Fault

DATA = bytes(i % 251 for i in range(70_000))
# curl's "peer certificate cannot be authenticated with known CA certificates".
CURL_UNTRUSTED = 60
IDENTITY = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@t.invalid",
    "GIT_AUTHOR_DATE": "2024-01-03T00:00:00Z",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@t.invalid",
    "GIT_COMMITTER_DATE": "2024-01-03T00:00:00Z",
}


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA.create(tmp_path / "ca")


@pytest.fixture
def www(tmp_path: Path) -> Path:
    root = tmp_path / "www"
    (root / "some").mkdir(parents=True)
    (root / "some" / "file").write_bytes(DATA)
    return root


@pytest.fixture
def git_root(tmp_path: Path) -> Path:
    return tmp_path / "git"


@pytest.fixture
def head(git_root: Path) -> str:
    return make_git_repo(git_root)


@pytest.fixture
def up(www: Path, ca: TestCA, git_root: Path, head: str) -> Iterator[FakeTlsUpstream]:
    with FakeTlsUpstream(www, ca, git_root=git_root) as server:
        yield server


def run(*cmd: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [str(c) for c in cmd], env=env or client_env(), capture_output=True, timeout=120
    )


def curl(*args: str | Path) -> subprocess.CompletedProcess[bytes]:
    # -q first: no ~/.curlrc.
    return run("curl", "-q", "-fsS", "--max-time", "30", *args)


def git(*args: str | Path, cwd: Path | None = None, ca: TestCA | None = None, **env: str) -> str:
    """Run git isolated from the machine's config (trusting ``ca``); return its stdout."""
    if ca is not None:
        env["GIT_SSL_CAINFO"] = str(ca.pem_path)
    cmd = ["git", *(["-C", str(cwd)] if cwd is not None else []), *map(str, args)]
    done = run(*cmd, env=client_env(**env))
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode().strip()


# -- TLS -----------------------------------------------------------------------------------


def test_curl_fetches_a_file_trusting_the_test_ca(up: FakeTlsUpstream, ca: TestCA) -> None:
    assert up.url == f"https://127.0.0.1:{up.port}"
    done = curl("--cacert", ca.pem_path, f"{up.url}/some/file")
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == DATA
    assert [(r.method, r.path, r.status) for r in up.requests] == [("GET", "/some/file", 200)]


def test_curl_rejects_the_upstream_without_the_test_ca(up: FakeTlsUpstream) -> None:
    done = curl(f"{up.url}/some/file")
    assert done.returncode == CURL_UNTRUSTED, done.stderr.decode()
    assert up.count() == 0  # the handshake failed: no request reached the handler


def test_curl_rejects_a_certificate_from_another_test_ca(
    tmp_path: Path, www: Path, ca: TestCA
) -> None:
    other = TestCA.create(tmp_path / "other-ca")
    with FakeTlsUpstream(www, other) as stranger:
        done = curl("--cacert", ca.pem_path, f"{stranger.url}/some/file")
        assert done.returncode == CURL_UNTRUSTED, done.stderr.decode()
        assert stranger.count() == 0
        trusted = curl("--cacert", other.pem_path, f"{stranger.url}/some/file")
        assert trusted.stdout == DATA


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_python_strict_verification_accepts_the_chain(
    up: FakeTlsUpstream, ca: TestCA, host: str
) -> None:
    context = ssl.create_default_context(cafile=ca.pem_path)
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    conn = http.client.HTTPSConnection(host, up.port, context=context, timeout=10)
    try:
        conn.request("GET", "/some/file")
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (200, DATA)
    finally:
        conn.close()


def test_faults_and_errors_work_over_tls(up: FakeTlsUpstream, ca: TestCA) -> None:
    up.faults["/some/file"] = Fault.status(503, times=1)
    assert curl("--cacert", ca.pem_path, f"{up.url}/some/file").returncode == 22
    assert curl("--cacert", ca.pem_path, f"{up.url}/some/file").stdout == DATA
    assert curl("--cacert", ca.pem_path, f"{up.url}/missing").returncode == 22
    assert [r.status for r in up.requests] == [503, 200, 404]


# -- git -----------------------------------------------------------------------------------


def test_make_git_repo_is_deterministic(tmp_path: Path, git_root: Path, head: str) -> None:
    assert make_git_repo(tmp_path / "again") == head
    assert git("rev-parse", "--abbrev-ref", "HEAD", cwd=git_root / "demo.git") == "main"
    assert git("cat-file", "-t", "v1.0", cwd=git_root / "demo.git") == "tag"
    assert git("rev-list", "--count", "HEAD", cwd=git_root / "demo.git") == "2"


@pytest.mark.parametrize("version", ["2", "0"])
def test_git_clone_through_http_backend(
    tmp_path: Path, up: FakeTlsUpstream, ca: TestCA, head: str, version: str
) -> None:
    clone = tmp_path / "clone"
    config = [] if version == "2" else ["-c", "protocol.version=0"]
    git(*config, "clone", "--quiet", f"{up.url}/git/demo.git", clone, ca=ca)

    assert git("rev-parse", "HEAD", cwd=clone) == head
    assert git("rev-parse", "--abbrev-ref", "HEAD", cwd=clone) == "main"
    assert git("cat-file", "-t", "v1.0", cwd=clone) == "tag"
    git("fsck", "--strict", cwd=clone)
    assert (clone / "data.bin").read_bytes() == bytes(range(256)) * 64

    seen = [(r.method, r.path, r.status) for r in up.requests]
    assert seen[0] == ("GET", "/git/demo.git/info/refs", 200)
    assert up.requests[0].query == "service=git-upload-pack"
    posts = [r for r in up.requests if r.method == "POST"]
    assert {(r.path, r.status) for r in posts} == {("/git/demo.git/git-upload-pack", 200)}
    if version == "2":
        # v2 only when http-backend got GIT_PROTOCOL: ls-refs, then fetch (v0: one POST).
        assert up.requests[0].headers["Git-Protocol"] == "version=2"
        assert len(posts) == 2
    else:
        assert "Git-Protocol" not in up.requests[0].headers
        assert len(posts) == 1
    assert up.count() == up.count("/git/")
    assert up.git_stderr == []


@pytest.mark.parametrize("version", ["2", "0"])
def test_git_clone_with_a_gzipped_request_body(
    tmp_path: Path, up: FakeTlsUpstream, ca: TestCA, git_root: Path, version: str
) -> None:
    # git gzips an upload-pack request over 1 KiB: 40 branches on distinct commits give
    # 40 "want" lines, about 2 KiB.
    bare = git_root / "demo.git"
    tree = git("rev-parse", "HEAD^{tree}", cwd=bare)
    for i in range(40):
        commit = git("commit-tree", tree, "-p", "HEAD", "-m", f"branch {i}", cwd=bare, **IDENTITY)
        git("update-ref", f"refs/heads/b{i:02}", commit, cwd=bare)

    clone = tmp_path / "clone"
    git(
        "-c",
        f"protocol.version={version}",
        "clone",
        "--quiet",
        "--mirror",
        f"{up.url}/git/demo.git",
        clone,
        ca=ca,
    )
    assert len(git("for-each-ref", "refs/heads/", cwd=clone).splitlines()) == 41  # + main
    git("fsck", "--strict", cwd=clone)
    gzipped = [r for r in up.requests if r.headers.get("Content-Encoding") == "gzip"]
    assert gzipped and all(r.path == "/git/demo.git/git-upload-pack" for r in gzipped)


def test_git_unknown_repository_is_a_404(up: FakeTlsUpstream, ca: TestCA) -> None:
    url = f"{up.url}/git/nope.git/info/refs?service=git-upload-pack"
    assert curl("--cacert", ca.pem_path, url).returncode == 22
    assert [(r.method, r.path, r.status) for r in up.requests] == [
        ("GET", "/git/nope.git/info/refs", 404)
    ]
