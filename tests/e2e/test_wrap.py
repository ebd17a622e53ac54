"""`cachesrv wrap` around a real build: apt-get update/download, pip download and
uv pip install in a shell script, recorded online into seed `build1`, replayed offline in
a network namespace of its own, and refused in strict mode for what is stored but not in
the seed.

The build's apt has private state (tests/fakes/aptclient.py): the test sets `APT_CONFIG`
to the private file, and the wrapper's generated configuration `#include`s it before
setting the proxy. pip and uv run without an index option: the wrapper's
`PIP_INDEX_URL` and `UV_DEFAULT_INDEX` are their only index. Every proxy variable the
test sets points at a closed port, so a client that went around the wrapper's settings
would fail.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cachesrv.store import Store
from cachesrv.upstreams.pypi import JSON_QUERY, JSON_V1
from tests.conftest import CACHESRV, config_text, run_cli
from tests.fakes.aptclient import AptClient
from tests.fakes.aptrepo import AptRepo, build_apt_repo
from tests.fakes.dists import build_wheel
from tests.fakes.pipclient import pip_env, uv_binary
from tests.fakes.pypi import FakePyPI
from tests.fakes.upstream import FakeUpstream

pytestmark = pytest.mark.skipif(
    shutil.which("apt-get") is None or shutil.which("apt-ftparchive") is None,
    reason="needs apt-get and apt-ftparchive (Debian apt, apt-utils; tests/run installs them)",
)

BUILD_SH = """\
set -eu
apt-get -q -o APT::Update::Error-Mode=any update
cd "$DL"
apt-get -q download hello world
"$PYTHON" -m pip download --no-cache-dir --retries 0 --timeout 30 -d "$PIPDL" demo
"$UV" pip install --no-cache --quiet --target "$UVDIR" demo
"""

#: A connection from inside the build straight to the upstream's port.
PROBE = """
import socket, sys
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10).close()
except OSError as exc:
    print(f"upstream unreachable: {type(exc).__name__}")
else:
    sys.exit("upstream reachable from inside the build")
"""


@dataclass
class Site:
    tmp: Path
    repo: AptRepo
    apt: FakeUpstream
    pypi: FakePyPI
    config: Path
    store: Path
    runs: int = 0

    def wrap(
        self, *args: str, script: str = BUILD_SH, apt_url: str = ""
    ) -> tuple[subprocess.CompletedProcess[str], Path]:
        """`cachesrv wrap ARGS -- sh build.sh` with fresh apt and download folders; apt's
        sources name the upstream (at `apt_url`, default its own URL)."""
        self.runs += 1
        work = self.tmp / f"run{self.runs}"
        (work / "debs").mkdir(parents=True)
        build = work / "build.sh"
        build.write_text(script)
        apt = AptClient(work / "apt", self.repo.sources_line(apt_url or self.apt.url))
        env = pip_env(work / "pip")  # proxies trapped, no PIP_*/UV_* from the machine
        env.update(
            APT_CONFIG=str(apt.config),
            LC_ALL="C",
            DEBIAN_FRONTEND="noninteractive",
            DL=str(work / "debs"),
            PIPDL=str(work / "wheels"),
            PYTHON=sys.executable,
            APT_PORT=str(self.apt.port),
            UV=str(uv_binary()),
            UVDIR=str(work / "uv-target"),
            UV_NO_CONFIG="1",
            UV_PYTHON=sys.executable,
            UV_PYTHON_DOWNLOADS="never",
        )
        cmd = [*CACHESRV, "wrap", "--config", str(self.config), "--store", str(self.store)]
        proc = subprocess.run(
            [*cmd, *args, "--", "sh", str(build)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            stdin=subprocess.DEVNULL,
        )
        return proc, work

    def seed_keys(self, name: str) -> set[str]:
        store = Store(self.store)
        try:
            return set(store.index.seed_keys(name))
        finally:
            store.close()

    def used_keys(self) -> set[str]:
        """The cache keys of everything the upstreams answered with a body."""
        keys = {
            f"{self.apt.url}{r.path}"
            for r in self.apt.requests
            if r.status == 200 and r.method == "GET"
        }
        for r in self.pypi.requests:
            if r.status != 200 or r.method != "GET":
                continue
            if r.listener == "files":
                keys.add(f"{self.pypi.files_url}{r.path}")
            elif r.headers.get("Accept") == JSON_V1:
                keys.add(f"{self.pypi.url}{r.path}{JSON_QUERY}")
            else:
                keys.add(f"{self.pypi.url}{r.path}")
        return keys


def _check(proc: subprocess.CompletedProcess[str], status: int = 0) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == status, out
    bad = [ln for ln in out.splitlines() if ln.startswith(("Err:", "W:", "E:"))]
    assert status != 0 or not bad, out
    return out


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("wrap")
    repo = build_apt_repo(tmp / "repo", [("hello", "1.0"), ("world", "1:2.0"), ("never", "0.1")])
    dists = tmp / "dists"
    build_wheel(dists, "demo", "1.0", requires=["dep"])
    build_wheel(dists, "dep", "2.0")
    with FakeUpstream(repo.root) as apt, FakePyPI(dists, files_on_other_host=True) as pypi:
        config = tmp / "cachesrv.toml"
        files_host = pypi.files_url.split("://", 1)[1]
        config.write_text(
            config_text(
                {
                    "debian": ("apt", apt.url),
                    "pypi": {
                        "kind": "pypi",
                        "url": pypi.index_url.rstrip("/"),
                        "file_hosts": [files_host],
                    },
                }
            )
        )
        yield Site(tmp, repo, apt, pypi, config, tmp / "store")


@pytest.fixture(scope="module")
def recorded(site: Site) -> tuple[subprocess.CompletedProcess[str], Path]:
    """The online build, once: everything it used is recorded in seed build1."""
    site.apt.reset_log()
    site.pypi.reset_log()
    proc, work = site.wrap("--seed", "build1")
    _check(proc)
    return proc, work


def test_online_build_records_exactly_what_it_used_in_the_seed(
    site: Site, recorded: tuple[subprocess.CompletedProcess[str], Path]
) -> None:
    proc, work = recorded
    for name in ("hello", "world"):
        assert _sha(work / "debs" / site.repo.download_name(name)) == _sha(site.repo.debs[name])
    assert sorted(p.name for p in (work / "wheels").iterdir()) == [
        "demo-1.0-py3-none-any.whl",
        "dep-2.0-py3-none-any.whl",
    ]
    assert sorted(p.name for p in (work / "uv-target").glob("*.dist-info")) == [
        "demo-1.0.dist-info",
        "dep-2.0.dist-info",
    ]
    used = site.used_keys()
    assert any(k.endswith(".deb") for k in used) and any(k.endswith(".whl") for k in used)
    assert not any("never" in k for k in used)
    assert site.seed_keys("build1") == used
    summary = proc.stderr.strip().splitlines()[-1]
    assert summary.startswith("cachesrv wrap: exit 0;"), proc.stderr
    assert f"{len(used)} newly recorded" in summary and "0 offline misses" in summary
    assert f"seed build1 ({len(used)} entries)" in summary


def test_offline_isolated_build_needs_nothing_but_the_cache(
    site: Site, recorded: tuple[subprocess.CompletedProcess[str], Path]
) -> None:
    site.apt.reset_log()
    site.pypi.reset_log()
    script = BUILD_SH + '"$PYTHON" -c \'' + PROBE + '\' "$APT_PORT"\n'
    proc, work = site.wrap("--offline", "--isolate", "--seed", "build1", script=script)
    out = _check(proc)
    assert "upstream unreachable: ConnectionRefusedError" in out
    assert site.apt.count() == 0 and site.pypi.count() == 0
    _, online = recorded
    for name in ("hello", "world"):
        got = work / "debs" / site.repo.download_name(name)
        assert _sha(got) == _sha(online / "debs" / got.name)
    assert {p.name for p in (work / "wheels").iterdir()} == {
        p.name for p in (online / "wheels").iterdir()
    }
    summary = proc.stderr.strip().splitlines()[-1]
    assert "0 newly recorded, 0 offline misses; seed build1" in summary, summary


def test_strict_refuses_what_is_stored_but_not_in_the_seed(
    site: Site, recorded: tuple[subprocess.CompletedProcess[str], Path]
) -> None:
    # `never` is recorded online, in another seed.
    get_never = 'set -eu\napt-get -q update\ncd "$DL"\napt-get -q download never\n'
    _check(site.wrap("--seed", "other", script=get_never)[0])
    never_key = f"{site.apt.url}{site.repo.url_path('never')}"
    assert never_key in site.seed_keys("other") and never_key not in site.seed_keys("build1")

    # Not in build1: apt prints the reason phrase; the body says which seed.
    fetch_body = (
        '"$PYTHON" -c \'import os, urllib.request, urllib.error\n'
        "try:\n"
        '    urllib.request.urlopen(os.environ["CACHESRV_URL"] + "/@build1/debian'
        + site.repo.url_path("never")
        + '")\n'
        "except urllib.error.HTTPError as e:\n"
        '    print("BODY", e.code, e.reason, e.read().decode())\n\'\n'
    )
    proc, _ = site.wrap("--offline", "--strict", "--seed", "build1", script=fetch_body + get_never)
    out = _check(proc, status=100)
    assert "404  Not in offline seed" in out
    assert "BODY 404 Not in offline seed" in out and "not in the requested seed" in out
    summary = proc.stderr.strip().splitlines()[-1]
    assert "2 offline misses (list them: cachesrv misses --since" in summary, summary

    misses = json.loads(run_cli("misses", "--store", site.store, "--format", "json").stdout)
    assert {(m["key"], m["reason"], m["seed"]) for m in misses} == {
        (never_key, "not_in_seed", "build1")
    }

    # A strict server serves what build1 holds: the whole build.
    _check(site.wrap("--offline", "--strict", "--seed", "build1")[0])


def test_https_sources_reach_the_cache_as_http_https(
    site: Site, recorded: tuple[subprocess.CompletedProcess[str], Path]
) -> None:
    """An `https://` source would make apt tunnel (CONNECT) through the proxy; the wrapper
    rewrites it to `http://HTTPS///host/path`, which the server maps to the same entries
    (the scheme is not part of the match), so the recorded build replays."""
    site.apt.reset_log()
    https_url = site.apt.url.replace("http://", "https://")
    script = 'set -eu\napt-get -q update\ncd "$DL"\napt-get -q download hello\n'
    proc, work = site.wrap("--offline", "--seed", "build1", script=script, apt_url=https_url)
    out = _check(proc)
    assert "http://HTTPS///127.0.0.1:" in out  # what apt now shows as the source
    name = site.repo.download_name("hello")
    assert _sha(work / "debs" / name) == _sha(site.repo.debs["hello"])
    assert site.apt.count() == 0
    # The build's own sources are untouched; apt read a rewritten copy.
    assert (work / "apt" / "etc" / "sources.list").read_text().count(https_url) == 1
