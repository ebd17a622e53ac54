"""`cachesrv wrap` around real HTTPS clients: curl, wget, pip and git, recorded online
through the wrapper's CONNECT interception into seed `b1`, then replayed offline, strict,
in a network namespace of the build's own.

The upstream is a real TLS server on 127.0.0.1 (tests/fakes/tls.py) whose certificate
only its own test CA vouches for. The clients never see that CA: they trust what the
wrapper gives them (the system's CAs plus the cache's local CA); the cache trusts the
test CA through `[tls] upstream_ca`. So a client that went around the cache would fail
its TLS handshake online, and offline the upstream is in another network namespace.

pip prepares the sdist's metadata with `--no-build-isolation`, so no build requirement
comes from an index. The sdist's build backend is in-tree (PEP 517 `backend-path`),
standard library only: setuptools' backend would need the `wheel` package too (for
`dist_info`), which the test interpreter need not have.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import CACHESRV, run_cli
from tests.fakes.pipclient import pip_env
from tests.fakes.tls import FakeTlsUpstream, TestCA, client_env, make_git_repo

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        any(shutil.which(tool) is None for tool in ("curl", "wget", "git")),
        reason="needs curl, wget and git (Debian: curl wget git)",
    ),
]

#: The build: each client fetches through the wrapper's proxy; `$OUT` is per run.
BUILD_SH = """\
set -eu
mkdir -p "$OUT/curl" "$OUT/wget" "$OUT/pip"
curl -q -fsS --max-time 60 -o "$OUT/curl/foo-1.0.tar.gz" "$UP/foo-1.0.tar.gz"
wget -q --tries=1 --timeout=60 -O "$OUT/wget/foo-1.0.tar.gz" "$UP/foo-1.0.tar.gz"
"$PYTHON" -m pip download --no-deps --no-build-isolation --no-cache-dir --retries 0 \\
    --timeout 60 -d "$OUT/pip" "$UP/pkg-1.0.tar.gz"
git clone -q "$UP/git/demo.git" "$OUT/demo"
"""

#: Offline, what was never recorded: each failure is reported, none stops the script.
MISSES_SH = """\
if curl -q -fsS --max-time 60 -o /dev/null "$UP/never-1.0.tar.gz"; then
    echo "CURL-F: succeeded"
else
    echo "CURL-F: exit $?"
fi
echo "CURL-BODY:"
curl -q -sS --max-time 60 "$UP/never-1.0.tar.gz"
if git clone -q "$UP/git/other.git" "$OUT/other"; then
    echo "GIT: succeeded"
else
    echo "GIT: exit $?"
fi
"""

#: From inside the build, a direct connection to the upstream's port.
PROBE = """
import socket, sys
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10).close()
except OSError as exc:
    print(f"upstream unreachable: {type(exc).__name__}")
else:
    sys.exit("upstream reachable from inside the build")
"""

NAMESPACE_REFUSED = "--isolate: cannot create a network namespace"


@dataclass
class Site:
    tmp: Path
    up: FakeTlsUpstream
    head: str
    www: Path
    config: Path
    store: Path
    runs: int = 0

    def wrap(
        self, *args: str, script: str = BUILD_SH
    ) -> tuple[subprocess.CompletedProcess[str], Path]:
        """`cachesrv wrap --config C --store S ARGS -- sh -c SCRIPT` with a fresh `$OUT`."""
        self.runs += 1
        out = self.tmp / f"run{self.runs}"
        out.mkdir()
        cmd = [*CACHESRV, "wrap", "--config", str(self.config), "--store", str(self.store)]
        proc = subprocess.run(
            [*cmd, *args, "--", "sh", "-c", script],
            env=build_env(out / "home", OUT=str(out), UP=self.up.url),
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
        return proc, out


def build_env(home: Path, **extra: str) -> dict[str, str]:
    """The build's environment before the wrapper adds its own: nothing from the machine
    that would send a client elsewhere or make it trust other CAs (client_env), no
    `PIP_*`/`UV_*` and no pip config file (pip_env), a private `HOME` (no ~/.curlrc,
    ~/.wgetrc, ~/.gitconfig), git config from nowhere."""
    shielded = client_env()
    env = pip_env(home, trap_proxy=False)
    env = {k: v for k, v in env.items() if k in shielded or k.startswith(("PIP_", "XDG_"))}
    env.update(
        HOME=str(home),
        PIP_CONFIG_FILE=os.devnull,
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_CONFIG_NOSYSTEM="1",
        GIT_TERMINAL_PROMPT="0",
        LC_ALL="C",
        PYTHON=sys.executable,
    )
    env.update(extra)
    return env


def _check(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"


def _isolated(
    site: Site, *args: str, script: str = BUILD_SH
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """`site.wrap("--offline", "--isolate", ...)`, skipped where namespaces are refused."""
    proc, out = site.wrap("--offline", "--isolate", *args, script=script)
    if proc.returncode != 0 and NAMESPACE_REFUSED in proc.stderr:
        pytest.skip(f"this kernel refuses network namespaces: {proc.stderr.strip()}")
    return proc, out


def _summary(proc: subprocess.CompletedProcess[str]) -> str:
    return proc.stderr.strip().splitlines()[-1]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "-C", str(repo), *args],
        env=client_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def _tar_gz(path: Path, members: dict[str, bytes]) -> Path:
    """A reproducible `.tar.gz` (fixed mtimes, no gzip name or time)."""
    with (
        path.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 1580601600, 0o644
            tar.addfile(info, io.BytesIO(data))
    return path


def _tarball(path: Path) -> Path:
    """A plain download, not a Python distribution."""
    return _tar_gz(path, {"foo-1.0/data.bin": bytes(i % 253 for i in range(50_000))})


_METADATA = "Metadata-Version: 2.1\nName: pkg\nVersion: 1.0\n\n"
_PYPROJECT = """\
[build-system]
requires = []
build-backend = "pkg_backend"
backend-path = ["."]

[project]
name = "pkg"
version = "1.0"
"""
#: Enough of PEP 517 for `pip download`, which only prepares the metadata.
_BACKEND = """\
import os
import shutil


def get_requires_for_build_wheel(config_settings=None):
    return []


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    dist_info = os.path.join(metadata_directory, "pkg-1.0.dist-info")
    os.mkdir(dist_info)
    shutil.copyfile("PKG-INFO", os.path.join(dist_info, "METADATA"))  # cwd: the tree
    return "pkg-1.0.dist-info"


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    raise NotImplementedError("metadata only")
"""


def _sdist(dest: Path) -> Path:
    """`pkg-1.0.tar.gz`: a tiny sdist whose PEP 517 backend is in the tree itself."""
    return _tar_gz(
        dest / "pkg-1.0.tar.gz",
        {
            "pkg-1.0/PKG-INFO": _METADATA.encode(),
            "pkg-1.0/pyproject.toml": _PYPROJECT.encode(),
            "pkg-1.0/pkg_backend.py": _BACKEND.encode(),
            "pkg-1.0/pkg/__init__.py": b'__version__ = "1.0"\n',
        },
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("https-wrap")
    ca = TestCA.create(tmp / "upstream-ca")
    www = tmp / "www"
    www.mkdir()
    _tarball(www / "foo-1.0.tar.gz")
    _tarball(www / "never-1.0.tar.gz")  # upstream has it; no build ever asks online
    _sdist(www)
    head = make_git_repo(tmp / "git")
    make_git_repo(tmp / "git", "other.git")  # upstream has it; never cloned online
    config = tmp / "cachesrv.toml"
    config.write_text(f'[tls]\nupstream_ca = "{ca.pem_path}"\n')
    with FakeTlsUpstream(www, ca, git_root=tmp / "git") as up:
        yield Site(tmp, up, head, www, config, tmp / "store")


@pytest.fixture(scope="module")
def recorded(site: Site) -> tuple[subprocess.CompletedProcess[str], Path]:
    """The online build, once, recorded in seed b1."""
    site.up.reset_log()
    proc, out = site.wrap("--seed", "b1")
    _check(proc)
    return proc, out


def _expected_keys(site: Site) -> set[str]:
    u = site.up.url
    return {
        f"{u}/foo-1.0.tar.gz",
        f"{u}/pkg-1.0.tar.gz",
        f"{u}/git/demo.git/info/refs?service=git-upload-pack",
        f"{u}/git/demo.git/git-upload-pack",
    }


def test_online_wrap_records_https_downloads_and_git_clone(
    site: Site, recorded: tuple[subprocess.CompletedProcess[str], Path]
) -> None:
    proc, out = recorded
    foo = _sha(site.www / "foo-1.0.tar.gz")
    assert _sha(out / "curl" / "foo-1.0.tar.gz") == foo
    assert _sha(out / "wget" / "foo-1.0.tar.gz") == foo
    assert _sha(out / "pip" / "pkg-1.0.tar.gz") == _sha(site.www / "pkg-1.0.tar.gz")
    assert _git(out / "demo", "rev-parse", "HEAD").stdout.strip() == site.head

    # The upstream saw each download (once: wget's copy came from the cache) and the clone.
    paths = site.up.paths()
    assert paths.count("/foo-1.0.tar.gz") == 1 and paths.count("/pkg-1.0.tar.gz") == 1
    assert "/git/demo.git/info/refs" in paths and "/git/demo.git/git-upload-pack" in paths
    assert not any("never" in p or "other.git" in p for p in paths)

    # Exactly what the build fetched is in the seed (git keys carry the protocol version
    # and the request body's hash after a "#"), and the wrapper's summary agrees.
    shown = run_cli("seed", "show", "b1", "--store", site.store).stdout
    keys = [w for line in shown.splitlines() for w in line.split() if w.startswith("https://")]
    assert {k.split("#", 1)[0] for k in keys} == _expected_keys(site), shown
    summary = _summary(proc)
    # wget's copy of foo was the one hit: it too went through the cache (it trusts only
    # the system's CAs and the cache's, not the upstream's test CA).
    assert summary == (
        f"cachesrv wrap: exit 0; 1 hit, {len(keys)} newly recorded, 0 offline misses; "
        f"seed b1 ({len(keys)} entries)"
    ), summary


def test_offline_isolated_strict_replays_the_same_bytes_without_the_upstream(
    site: Site, recorded: tuple[subprocess.CompletedProcess[str], Path]
) -> None:
    _, online = recorded
    site.up.reset_log()
    probe = f"\n\"$PYTHON\" -c '{PROBE}' {site.up.port}\n"
    proc, out = _isolated(site, "--strict", "--seed", "b1", script=BUILD_SH + probe)
    _check(proc)
    assert "upstream unreachable: ConnectionRefusedError" in proc.stdout, proc.stdout
    assert site.up.count() == 0, site.up.paths()
    for rel in ("curl/foo-1.0.tar.gz", "wget/foo-1.0.tar.gz", "pip/pkg-1.0.tar.gz"):
        assert (out / rel).read_bytes() == (online / rel).read_bytes(), rel
    assert _git(out / "demo", "rev-parse", "HEAD").stdout.strip() == site.head
    fsck = _git(out / "demo", "fsck", "--full", "--strict")
    assert fsck.returncode == 0, fsck.stderr
    summary = _summary(proc)
    assert "0 newly recorded, 0 offline misses; seed b1" in summary, summary


def test_offline_misses_say_not_in_offline_seed(
    site: Site, recorded: tuple[subprocess.CompletedProcess[str], Path]
) -> None:
    site.up.reset_log()
    proc, out = _isolated(site, "--strict", "--seed", "b1", script=MISSES_SH)
    _check(proc)
    text = proc.stdout + proc.stderr
    assert "CURL-F: exit 22" in proc.stdout, text  # curl -f: HTTP error >= 400
    body = proc.stdout.split("CURL-BODY:", 1)[1].split("GIT:", 1)[0]
    assert "Not in offline seed" in body, text
    assert "GIT: exit 128" in proc.stdout, text
    git_says = [ln for ln in proc.stderr.splitlines() if "Not in offline seed" in ln]
    assert any("git repository" in ln and "/git/other.git" in ln for ln in git_says), text
    assert not (out / "other" / ".git").exists()
    assert site.up.count() == 0

    lines = run_cli("misses", "--store", site.store, "--format", "urls").stdout.splitlines()
    assert f"{site.up.url}/never-1.0.tar.gz" in lines, lines
    # A clone cannot be prefetched: it is listed as the command that records it.
    clone = f"# git: cachesrv wrap --seed b1 -- git clone {site.up.url}/git/other.git"
    assert clone in lines, lines
    assert not any("/git/other.git/" in ln for ln in lines if not ln.startswith("#")), lines


def test_seed_export_carries_no_ca_key_material(
    site: Site, recorded: tuple[subprocess.CompletedProcess[str], Path]
) -> None:
    key_file = site.store / "tls" / "ca.key"
    key_pem = key_file.read_bytes()
    assert b"PRIVATE KEY" in key_pem  # the CA the wrapper used exists, with its key
    body = b"".join(line for line in key_pem.splitlines() if line and not line.startswith(b"-----"))
    key_der = base64.b64decode(body)

    dest = site.tmp / "export"
    run_cli("seed", "export", dest, "--seed", "b1", "--store", site.store)
    files = [p for p in dest.rglob("*") if p.is_file()]
    assert any(p.name == "manifest.jsonl" for p in files) and len(files) > 2
    for path in files:
        assert path.name != "ca.key", path
        data = path.read_bytes()
        for needle in (b"PRIVATE KEY", key_pem.strip(), body, key_der):
            assert needle not in data, f"{path} holds CA key material ({needle[:20]!r}...)"
