"""The SBOM of a seed recorded with the real apt-get and pip: `cachesrv seed sbom` output
is valid CycloneDX 1.5 (and SPDX 2.3) and lists exactly the seed's artifacts, with the
package URLs and hashes of the files the clients downloaded; `seed export` puts it in the
bundle, which `seed verify` and `seed import` still accept."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import blake3
import pytest

from cachesrv.store import Store
from tests.conftest import CachesrvProcess, run_cli
from tests.fakes.aptclient import AptClient
from tests.fakes.aptrepo import build_apt_repo
from tests.fakes.dists import real_dists_or_skip
from tests.fakes.pipclient import pip
from tests.fakes.pypi import FakePyPI
from tests.fakes.upstream import FakeUpstream
from tests.test_sbom import cdx_purls, check_cyclonedx, check_spdx, spdx_purls

pytestmark = pytest.mark.skipif(
    shutil.which("apt-get") is None or shutil.which("apt-ftparchive") is None,
    reason="needs apt-get and apt-ftparchive (Debian apt, apt-utils; tests/run installs them)",
)


def _pypi_purl(filename: str) -> str:
    """What PyPI calls a wheel: PEP 503 name, version, and the file."""
    name, version = filename.split("-")[:2]
    return f"pkg:pypi/{re.sub(r'[-_.]+', '-', name).lower()}@{version}?file_name={filename}"


def test_sbom_of_a_seed_recorded_by_apt_get_and_pip(
    tmp_path: Path,
    write_config: Callable[..., Path],
    cachesrv: Callable[..., CachesrvProcess],
) -> None:
    dists = tmp_path / "dists"
    real_dists_or_skip(dists, ["requests", "six==1.16.0"])
    # `world` has an epoch, which its pool file name drops: only the index knows it.
    repo = build_apt_repo(tmp_path / "repo", [("hello", "1.0"), ("world", "1:2.0-3"),
                                              ("never", "0.1")])  # fmt: skip
    (tmp_path / "www").mkdir()
    tarball = tmp_path / "www" / "tool-1.0.tar.gz"
    tarball.write_bytes(b"a plain download" * 1000)
    store = tmp_path / "A"

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
        a = cachesrv("--config", config, "--store", store)
        apt = AptClient(tmp_path / "apt", repo.sources_line(f"{a.url}/@build/debian"))
        apt.update()
        apt.download("hello", "world")
        wheels = tmp_path / "wheels"
        pip("download", "requests", "six==1.16.0", "-d", str(wheels),
            index_url=f"{a.url}/@build/pypi/simple/", tmp=tmp_path / "pip")  # fmt: skip
        with urllib.request.urlopen(f"{a.url}/@build/tarballs/tool-1.0.tar.gz", timeout=30) as r:
            assert r.read() == tarball.read_bytes()
        # Recorded too, but outside the seed.
        other = AptClient(tmp_path / "apt-other", repo.sources_line(f"{a.url}/debian"))
        other.update()
        other.download("never")
        a.stop()

    # What the clients got: file name -> (purl, sha256, blake3).
    expected: dict[str, tuple[str, str, str]] = {}
    versions = {"hello": "1.0", "world": "1:2.0-3"}
    for name, version in versions.items():
        body = (apt.downloads / repo.download_name(name)).read_bytes()
        pool_name = repo.debs[name].name
        purl = f"pkg:deb/debian/{name}@{version}?arch=all"
        expected[pool_name] = (purl, _sha256(body), blake3.blake3(body).hexdigest())
    got_wheels = sorted(wheels.iterdir())
    assert {p.name.split("-")[0] for p in got_wheels} >= {"requests", "charset_normalizer", "six"}
    for p in got_wheels:
        body = p.read_bytes()
        expected[p.name] = (_pypi_purl(p.name), _sha256(body), blake3.blake3(body).hexdigest())
    body = tarball.read_bytes()
    tool_url = f"{www.url}/tool-1.0.tar.gz"
    expected["tool-1.0.tar.gz"] = (
        f"pkg:generic/tool-1.0.tar.gz?download_url={tool_url}",
        _sha256(body),
        blake3.blake3(body).hexdigest(),
    )

    st = Store(store)
    try:
        seed_keys = set(st.index.seed_keys("build"))
        recorded = {e.key.url: e.recorded for e in st.index.entries()}
    finally:
        st.close()
    # The seed holds metadata too (InRelease, by-hash indices, pages, .metadata files):
    # none of it is a component.
    assert any("/by-hash/" in k for k in seed_keys) and any("/simple/" in k for k in seed_keys)

    common = ("--config", config, "--store", store)
    out = run_cli("seed", "sbom", "--seed", "build", *common)
    doc = check_cyclonedx(out.stdout)
    got: dict[str, tuple[str, str, str]] = {}
    for c in doc["components"]:
        url = c["bom-ref"]
        assert url in seed_keys
        assert c["externalReferences"] == [{"type": "distribution", "url": url}]
        props = {p["name"]: p["value"] for p in c["properties"]}
        assert props["cachesrv:recorded"] == _iso(recorded[url])
        hashes = {h["alg"]: h["content"] for h in c["hashes"]}
        got[url.rsplit("/", 1)[-1]] = (c["purl"], hashes["SHA-256"], hashes["BLAKE3"])
    assert got == expected

    spdx_file = tmp_path / "build.spdx.json"
    run_cli("seed", "sbom", "--seed", "build", "--format", "spdx", "-o", spdx_file, *common)
    spdx = check_spdx(spdx_file.read_text())
    assert spdx_purls(spdx) == cdx_purls(doc)
    # The fakes are at 127.0.0.1, a download location SPDX does not take.
    assert {p["downloadLocation"] for p in spdx["packages"]} == {"NOASSERTION"}

    bundle = tmp_path / "usb" / "build"
    run_cli("seed", "export", bundle, "--seed", "build", *common)
    in_bundle = check_cyclonedx((bundle / "sbom.cdx.json").read_text())
    assert cdx_purls(in_bundle) == cdx_purls(doc)
    assert "OK" in run_cli("seed", "verify", bundle).stdout
    run_cli("seed", "import", bundle, "--store", tmp_path / "B")
    imported = run_cli("seed", "sbom", "--seed", "build", *common[:2], "--store", tmp_path / "B")
    assert cdx_purls(json.loads(imported.stdout)) == cdx_purls(doc)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
