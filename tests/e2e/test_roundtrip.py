"""The sneakernet round trip with real clients: store A records apt-get, pip and a
tarball online; `seed export`; `seed import` into an empty store B; B served offline
answers the same apt-get and pip commands, byte for byte, with 0 upstream requests."""

from __future__ import annotations

import hashlib
import shutil
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import CachesrvProcess, run_cli
from tests.fakes.aptclient import AptClient
from tests.fakes.aptrepo import build_apt_repo
from tests.fakes.dists import real_dists_or_skip
from tests.fakes.pipclient import pip
from tests.fakes.pypi import FakePyPI
from tests.fakes.upstream import FakeUpstream

pytestmark = pytest.mark.skipif(
    shutil.which("apt-ftparchive") is None, reason="needs apt-ftparchive (Debian apt-utils)"
)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_export_import_then_real_clients_offline(
    tmp_path: Path,
    write_config: Callable[..., Path],
    cachesrv: Callable[..., CachesrvProcess],
) -> None:
    dists = tmp_path / "dists"
    dists.mkdir()
    real_dists_or_skip(dists, ["six==1.16.0"])
    repo = build_apt_repo(tmp_path / "repo", [("hello", "1.0"), ("world", "2.0", 500_000)])
    (tmp_path / "www").mkdir()
    tarball = tmp_path / "www" / "tool-1.0.tar.gz"
    tarball.write_bytes(hashlib.sha512(b"tool").digest() * 4096)

    with (
        FakeUpstream(repo.root) as apt_up,
        FakePyPI(dists, files_on_other_host=True) as index,
        FakeUpstream(tmp_path / "www") as www,
    ):
        files = index.files_url.split("://", 1)[1]
        config = write_config(
            {
                "debian": ("apt", apt_up.url),
                "pypi": {"kind": "pypi", "url": index.index_url.rstrip("/"), "file_hosts": [files]},
                "tarballs": ("generic", www.url),
            }
        )
        a = cachesrv("--config", config, "--store", tmp_path / "A")
        apt_a = AptClient(tmp_path / "apt-a", repo.sources_line(f"{a.url}/debian"))
        apt_a.update()
        apt_a.download("hello", "world")
        pypi_a = f"{a.url}/pypi/simple/"
        pip("download", "six", "-d", str(tmp_path / "pip-a"), index_url=pypi_a, tmp=tmp_path / "p1")
        with urllib.request.urlopen(f"{a.url}/tarballs/tool-1.0.tar.gz", timeout=30) as r:
            assert r.read() == tarball.read_bytes()
        a.stop()

        bundle = tmp_path / "usb" / "seed"
        run_cli("seed", "export", bundle, "--store", tmp_path / "A")
        run_cli("seed", "verify", bundle)
        run_cli("seed", "import", bundle, "--store", tmp_path / "B")

        for up in (apt_up, index, www):
            up.reset_log()
        b = cachesrv("--config", config, "--store", tmp_path / "B", "--mode", "offline")
        apt_b = AptClient(tmp_path / "apt-b", repo.sources_line(f"{b.url}/debian"))
        apt_b.update()
        apt_b.download("hello", "world")
        pypi_b = f"{b.url}/pypi/simple/"
        pip("download", "six", "-d", str(tmp_path / "pip-b"), index_url=pypi_b, tmp=tmp_path / "p2")
        with urllib.request.urlopen(f"{b.url}/tarballs/tool-1.0.tar.gz", timeout=30) as r:
            assert r.read() == tarball.read_bytes()
        assert apt_up.count() == 0 and index.count() == 0 and www.count() == 0

    for name in ("hello", "world"):
        got = apt_b.downloads / repo.download_name(name)
        assert sha(got) == sha(repo.debs[name])
    wheels_a = {p.name: sha(p) for p in (tmp_path / "pip-a").iterdir()}
    wheels_b = {p.name: sha(p) for p in (tmp_path / "pip-b").iterdir()}
    assert wheels_a == wheels_b and "six-1.16.0-py2.py3-none-any.whl" in wheels_b
