"""Real pip and uv through cachesrv: record online, replay offline with 0 upstream requests.

The fake index serves real wheels (requests and its dependencies, six, setuptools,
wheel) from the test-dists cache filled by tests/fetch-test-dists.sh, and files on a
second port like files.pythonhosted.org. pip and uv are shielded from the machine's
configuration (tests/fakes/pipclient.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import CachesrvProcess, run_cli
from tests.fakes.dists import build_sdist, build_wheel, real_dists_or_skip
from tests.fakes.pipclient import ClientFailed, pip, uv
from tests.fakes.pypi import FakePyPI


def digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


class Site:
    """A fake PyPI, and a cachesrv in front of it that can be restarted offline."""

    def __init__(
        self, index: FakePyPI, start: Callable[..., CachesrvProcess], tmp: Path, config: Path
    ) -> None:
        self.index = index
        self.start_server = start
        self.tmp = tmp
        self.config = config
        self.store = tmp / "store"
        self.server: CachesrvProcess | None = None

    def serve(self, mode: str) -> str:
        if self.server is not None:
            self.server.stop()
        self.server = self.start_server(
            "--config", self.config, "--store", self.store, "--mode", mode
        )
        return f"{self.server.url}/pypi/simple/"


@pytest.fixture
def site_factory(
    tmp_path: Path,
    write_config: Callable[..., Path],
    cachesrv: Callable[..., CachesrvProcess],
) -> Iterator[Callable[..., Site]]:
    indexes: list[FakePyPI] = []

    def make(dists: Path, **kw: bool) -> Site:
        index = FakePyPI(dists, files_on_other_host=True, **kw).start()
        indexes.append(index)
        files_netloc = index.files_url.split("://", 1)[1]
        config = write_config(
            {
                "pypi": {
                    "kind": "pypi",
                    "url": index.index_url.rstrip("/"),
                    "file_hosts": [files_netloc],
                }
            }
        )
        return Site(index, cachesrv, tmp_path, config)

    yield make
    for index in indexes:
        index.stop()


@pytest.fixture
def dists(tmp_path: Path) -> Path:
    d = tmp_path / "dists"
    d.mkdir()
    return d


def test_pip_download_and_sdist_build_online_then_offline(
    site_factory: Callable[..., Site], dists: Path, tmp_path: Path
) -> None:
    real_dists_or_skip(dists, ["requests", "setuptools", "wheel"])
    build_sdist(dists, "needs-build", "1.0")
    site = site_factory(dists)
    url = site.serve("online")
    pip("download", "requests", "-d", str(tmp_path / "dl1"), index_url=url, tmp=tmp_path / "p1")
    pip("install", "--target", str(tmp_path / "t1"), "needs-build", index_url=url,
        tmp=tmp_path / "p2")  # fmt: skip
    online_requests = site.index.count()
    assert online_requests > 0
    assert site.index.count("/simple/setuptools/") >= 1  # the sdist build went through us

    site.index.reset_log()
    url = site.serve("offline")
    pip("download", "requests", "-d", str(tmp_path / "dl2"), index_url=url, tmp=tmp_path / "p3")
    pip("install", "--target", str(tmp_path / "t2"), "needs-build", index_url=url,
        tmp=tmp_path / "p4")  # fmt: skip
    assert site.index.count() == 0
    assert digests(tmp_path / "dl1") == digests(tmp_path / "dl2")
    assert any(name.startswith("requests-") for name in digests(tmp_path / "dl2"))
    installed = {k for k in digests(tmp_path / "t2") if k.startswith("needs_build")}
    assert installed == {k for k in digests(tmp_path / "t1") if k.startswith("needs_build")}


def test_offline_resolution_picks_the_stored_version(
    site_factory: Callable[..., Site], dists: Path, tmp_path: Path
) -> None:
    real_dists_or_skip(dists, ["six==1.16.0", "six==1.17.0"])
    site = site_factory(dists)
    url = site.serve("online")
    pip("download", "six==1.16.0", "-d", str(tmp_path / "a"), index_url=url, tmp=tmp_path / "p1")
    url = site.serve("offline")
    site.index.reset_log()
    pip("download", "six", "-d", str(tmp_path / "b"), index_url=url, tmp=tmp_path / "p2")
    assert list(digests(tmp_path / "b")) == ["six-1.16.0-py2.py3-none-any.whl"]
    assert site.index.count() == 0


@pytest.mark.parametrize("metadata", [True, False], ids=["pep658", "no-metadata"])
def test_uv_records_online_and_replays_offline(
    site_factory: Callable[..., Site], dists: Path, tmp_path: Path, metadata: bool
) -> None:
    real_dists_or_skip(dists, ["six==1.16.0"])
    build_wheel(dists, "alpha", "1.0", requires=["six"])
    site = site_factory(dists, metadata=metadata)
    url = site.serve("online")
    uv("pip", "install", "--target", str(tmp_path / "t1"), "alpha", index_url=url,
       tmp=tmp_path / "u1")  # fmt: skip
    site.index.reset_log()
    url = site.serve("offline")
    uv("pip", "install", "--target", str(tmp_path / "t2"), "alpha", index_url=url,
       tmp=tmp_path / "u2")  # fmt: skip
    assert site.index.count() == 0
    assert digests(tmp_path / "t1") == digests(tmp_path / "t2")
    assert any(k.startswith("six") for k in digests(tmp_path / "t2"))


def test_wheel_that_lies_about_its_sha256_is_not_recorded(
    site_factory: Callable[..., Site], dists: Path, tmp_path: Path
) -> None:
    wheel = build_wheel(dists, "liar", "1.0")
    site = site_factory(dists)
    site.index.lie_about(wheel.name)
    url = site.serve("online")
    with pytest.raises(ClientFailed) as failed:
        pip("download", "liar", "-d", str(tmp_path / "d"), index_url=url, tmp=tmp_path / "p")
    assert not (tmp_path / "d" / wheel.name).exists()
    out = failed.value.stdout + failed.value.stderr
    assert "liar" in out
    assert site.server is not None
    assert "sha256 is" in site.server.output()  # the server logged the mismatch
    entries = run_cli("stats", "--store", site.store).stdout
    assert '"blobs": ' in entries
    listing = run_cli("misses", "--store", site.store).stdout
    assert "liar" not in listing
    from cachesrv.store import Store

    store = Store(site.store)
    try:
        assert not [e for e in store.index.entries() if e.key.url.endswith(wheel.name)]
    finally:
        store.close()


def test_offline_miss_shows_in_pip_output_and_misses_list(
    site_factory: Callable[..., Site], dists: Path, tmp_path: Path
) -> None:
    real_dists_or_skip(dists, ["six==1.16.0", "six==1.17.0"])
    site = site_factory(dists)
    url = site.serve("online")
    pip("download", "six==1.16.0", "-d", str(tmp_path / "a"), index_url=url, tmp=tmp_path / "p1")
    url = site.serve("offline")
    files_netloc = site.index.files_url.split("://", 1)[1]
    wanted = f"http://{files_netloc}/files/six-1.17.0-py2.py3-none-any.whl"
    direct = url.replace("/pypi/simple/", f"/pypi/files/http/{files_netloc}/files/") + (
        "six-1.17.0-py2.py3-none-any.whl"
    )
    with pytest.raises(ClientFailed) as failed:
        pip("download", direct, "-d", str(tmp_path / "b"), index_url=url, tmp=tmp_path / "p2")
    assert "Not in offline seed" in failed.value.stdout + failed.value.stderr
    assert run_cli("misses", "--store", site.store, "--format", "urls").stdout.split() == [wanted]
