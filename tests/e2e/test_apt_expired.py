"""Real apt-get against a recorded archive whose InRelease is past its Valid-Until:
offline, `apt-get update` fails until the machine installs the drop-in that
`cachesrv client-config apt --offline` prints; the status page and /metrics warn.

apt runs with private Dir::State/Cache/Etc named by APT_CONFIG (tests/fakes/aptclient.py);
the drop-in goes where it would on a machine: the private Dir::Etc::Parts.
"""

from __future__ import annotations

import shutil
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import CachesrvProcess, run_cli
from tests.fakes.aptclient import AptClient
from tests.fakes.aptrepo import build_apt_repo
from tests.fakes.upstream import FakeUpstream

pytestmark = pytest.mark.skipif(
    shutil.which("apt-get") is None or shutil.which("apt-ftparchive") is None,
    reason="needs apt-get and apt-ftparchive (Debian apt, apt-utils; tests/run installs them)",
)

#: What apt-get update prints for a Release file past its Valid-Until.
EXPIRED = "is expired (invalid since"


def get(url: str) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no *_proxy
    with opener.open(url, timeout=30) as r:
        return str(r.read().decode())


def test_expired_release_offline_needs_the_client_config(
    tmp_path: Path,
    write_config: Callable[..., Path],
    cachesrv: Callable[..., CachesrvProcess],
) -> None:
    # Valid-Until a day before Date: expired from the start.
    repo = build_apt_repo(tmp_path / "repo", [("hello", "1.0")], valid_days=-1)
    up = FakeUpstream(repo.root).start()
    try:
        sources = repo.sources_line(up.url)
        config = write_config({"debian": ("apt", up.url)})
        store = tmp_path / "store"
        server = cachesrv("--config", config, "--store", store)

        # Online apt refuses it as well; the cache records the InRelease all the same.
        refused = AptClient(tmp_path / "online-strict", sources, proxy=server.url)
        proc = refused.update(check=False)
        assert proc.returncode != 0 and EXPIRED in proc.stdout + proc.stderr
        # Recording the rest needs the setting online too.
        recorder = AptClient(
            tmp_path / "online",
            sources,
            proxy=server.url,
            extra_conf='Acquire::Check-Valid-Until "false";',
        )
        recorder.update()
        recorder.download("hello")
        server.stop()

        up.reset_log()
        server = cachesrv("--config", config, "--store", store, "--mode", "offline")
        plain = AptClient(tmp_path / "offline-plain", sources, proxy=server.url)
        proc = plain.update(check=False)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0 and EXPIRED in out, out
        assert f"{up.url} stable InRelease" in out

        dropin = run_cli(
            "client-config", "apt", "--offline", "--server", server.url, "--config", config
        ).stdout
        configured = AptClient(tmp_path / "offline-configured", sources)  # no proxy of its own
        (configured.workdir / "etc" / "apt.conf.d" / "99cachesrv").write_text(dropin)
        configured.update()  # fails on any Err:/W:/E: line
        configured.download("hello")
        assert (configured.downloads / "hello_1.0_all.deb").read_bytes() == (
            repo.debs["hello"].read_bytes()
        )
        assert up.count() == 0, up.paths()

        page = get(f"{server.url}/_cachesrv/status")
        section = page[page.index('<section class="expired">') :]
        section = section[: section.index("</section>")]
        assert f"{up.url}/dists/stable/InRelease" in section
        assert "Acquire::Check-Valid-Until &quot;false&quot;;" in section
        assert "cachesrv client-config apt --offline" in section
        metrics = get(f"{server.url}/metrics").splitlines()
        assert "cachesrv_expired_release_files 1.0" in metrics
    finally:
        up.stop()
