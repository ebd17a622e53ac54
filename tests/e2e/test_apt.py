"""Real apt-get through cachesrv: a signed by-hash repository recorded online, replayed
offline byte for byte, with the upstream's request counter at 0 in the offline phase.

apt runs with private Dir::State/Cache/Etc named by APT_CONFIG (tests/fakes/aptclient.py),
so the machine's apt is untouched.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import CachesrvProcess, run_cli
from tests.fakes.aptclient import AptClient
from tests.fakes.aptrepo import AptRepo, build_apt_repo
from tests.fakes.upstream import FakeUpstream

pytestmark = pytest.mark.skipif(
    shutil.which("apt-get") is None or shutil.which("apt-ftparchive") is None,
    reason="needs apt-get and apt-ftparchive (Debian apt, apt-utils; tests/run installs them)",
)

WANTED = ("hello", "world", "big")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def repo(tmp_path: Path) -> AptRepo:
    return build_apt_repo(
        tmp_path / "repo",
        [("hello", "1.0"), ("world", "1:2.0"), ("big", "3.0", 3_000_000), ("never", "0.1")],
    )


def clients(tmp: Path, repo: AptRepo, server: str, upstream: str) -> list[AptClient]:
    """The same archive as `deb http://<cachesrv>/debian` and through Acquire::http::Proxy."""
    return [
        AptClient(tmp / "path-form", repo.sources_line(f"{server}/debian")),
        AptClient(tmp / "proxy-form", repo.sources_line(upstream), proxy=server),
    ]


def test_apt_records_online_and_replays_offline(
    tmp_path: Path,
    repo: AptRepo,
    write_config: Callable[..., Path],
    cachesrv: Callable[..., CachesrvProcess],
) -> None:
    up = FakeUpstream(repo.root).start()
    try:
        config = write_config({"debian": ("apt", up.url)})
        store = tmp_path / "store"
        server = cachesrv("--config", config, "--store", store)
        online = clients(tmp_path / "online", repo, server.url, up.url)
        for apt in online:
            apt.update()
            apt.download(*WANTED)
        assert up.count("/dists/stable/main/binary-") > 0
        assert any("/by-hash/SHA256/" in p for p in up.paths())
        # Both spellings share one cache key: each .deb was fetched from upstream once.
        for name in WANTED:
            assert up.count(repo.url_path(name)) == 1
        server.stop()

        up.reset_log()
        server = cachesrv("--config", config, "--store", store, "--mode", "offline")
        offline = clients(tmp_path / "offline", repo, server.url, up.url)
        for apt in offline:
            apt.update()
            apt.download(*WANTED)
        assert up.count() == 0, up.paths()

        # The upstream stopped altogether: still served.
        up.stop()
        again = AptClient(tmp_path / "again", repo.sources_line(f"{server.url}/debian"))
        again.update()
        again.download(*WANTED)

        for apt in (*offline, again):
            for name in WANTED:
                got = apt.downloads / repo.download_name(name)
                assert sha(got) == sha(repo.debs[name]), name

        missing = again.download("never", check=False)
        assert missing.returncode != 0
        assert "Not in offline seed" in missing.stdout + missing.stderr
        listed = run_cli("misses", "--store", store, "--format", "urls").stdout.split()
        assert f"{up.url}{repo.url_path('never')}" in listed
    finally:
        up.stop()
