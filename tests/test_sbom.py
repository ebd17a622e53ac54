"""`cachesrv seed sbom` and the SBOM in every bundle: package URLs, names from recorded
indices, CycloneDX 1.5 and SPDX 2.3 output checked by the formats' own validators.

Stores are filled with the store API; tests/e2e/test_sbom.py records a seed with the
real apt-get and pip.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import blake3
import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from spdx_tools.spdx.parser.jsonlikedict.json_like_dict_parser import JsonLikeDictParser
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

from cachesrv.errors import SeedError
from cachesrv.models import ArtifactKind, CacheKey, Digest, Entry
from cachesrv.seed import ExportOptions, export_bundle, import_bundle, verify_bundle
from cachesrv.seed.bundle import METADATA
from cachesrv.seed.sbom import (
    BUNDLE_SBOM,
    Identity,
    artifacts_of,
    collect,
    identities,
    purl_of,
    sbom_cyclonedx,
    sbom_spdx,
    select_entries,
)
from cachesrv.store import Store
from tests.conftest import config_text, run_cli

# -- format checks, shared with tests/e2e/test_sbom.py -----------------------------------


def check_cyclonedx(text: str) -> dict[str, Any]:
    """Valid against the CycloneDX 1.5 JSON schema (strict: no unknown fields), offline."""
    error = JsonStrictValidator(SchemaVersion.V1_5).validate_str(text)
    assert error is None, error
    doc: dict[str, Any] = json.loads(text)
    assert doc["bomFormat"] == "CycloneDX" and doc["specVersion"] == "1.5"
    return doc


def check_spdx(text: str) -> dict[str, Any]:
    """Parsed and validated as SPDX 2.3 by the SPDX project's own library."""
    doc: dict[str, Any] = json.loads(text)
    messages = [
        m.validation_message
        for m in validate_full_spdx_document(JsonLikeDictParser().parse(doc), "SPDX-2.3")
        # spdx-tools reads SPDX's "BLAKE3: at least 256 bits" as 256 hex digits; blake3-256
        # is 64 (the SPDX Java library, the reference validator, accepts them).
        if not m.validation_message.startswith("value of ChecksumAlgorithm.BLAKE3 must consist")
    ]
    assert messages == []
    return doc


def cdx_purls(doc: dict[str, Any]) -> dict[str, str]:
    """URL -> purl of each component."""
    return {c["bom-ref"]: c["purl"] for c in doc.get("components", [])}


def spdx_purls(doc: dict[str, Any]) -> dict[str, str]:
    """URL (as `sourceInfo` tells it) -> purl of each package."""
    return {
        p["sourceInfo"].removeprefix("recorded by cachesrv from "): next(
            r["referenceLocator"] for r in p["externalRefs"] if r["referenceType"] == "purl"
        )
        for p in doc["packages"]
    }


# -- package URLs ----------------------------------------------------------------------

DEB = "http://deb.debian.org/debian/pool/main/h/hello/"
FILES = "https://files.pythonhosted.org/packages/ab/cd/"


def entry(
    url: str,
    upstream: str = "debian",
    kind: ArtifactKind = ArtifactKind.IMMUTABLE,
) -> Entry:
    return Entry(CacheKey(upstream, url), Digest("b" * 64), 1, "a" * 64, kind, recorded=1.7e9)


PURLS = [
    # apt: name, version and architecture; epochs as apt-get names files, or %-encoded
    ("apt", DEB + "hello_2.10-3_amd64.deb", "pkg:deb/debian/hello@2.10-3?arch=amd64"),
    ("apt", DEB + "hello_1%3a2.0-1_amd64.deb", "pkg:deb/debian/hello@1:2.0-1?arch=amd64"),
    ("apt", DEB + "hello_1:2.0-1_amd64.deb", "pkg:deb/debian/hello@1:2.0-1?arch=amd64"),
    ("apt", DEB + "hello-doc_2.10-3_all.deb", "pkg:deb/debian/hello-doc@2.10-3?arch=all"),
    ("apt", DEB + "libc++1_16.0_arm64.udeb", "pkg:deb/debian/libc%2B%2B1@16.0?arch=arm64"),
    (
        "apt",
        DEB + "hello_2.10-3.dsc",
        "pkg:deb/debian/hello@2.10-3?arch=source&file_name=hello_2.10-3.dsc",
    ),
    (
        "apt",
        DEB + "hello_2.10.orig.tar.gz",
        "pkg:deb/debian/hello@2.10?arch=source&file_name=hello_2.10.orig.tar.gz",
    ),
    (
        "apt",
        DEB + "hello_2.10-3.debian.tar.xz",
        "pkg:deb/debian/hello@2.10-3?arch=source&file_name=hello_2.10-3.debian.tar.xz",
    ),
    (
        "apt",
        "http://archive.ubuntu.com/ubuntu/pool/main/h/hello/hello_2.10-3_amd64.deb",
        "pkg:deb/ubuntu/hello@2.10-3?arch=amd64",
    ),
    # pypi: the PEP 503 name; file_name tells a release's files apart
    (
        "pypi",
        FILES + "six-1.16.0-py2.py3-none-any.whl",
        "pkg:pypi/six@1.16.0?file_name=six-1.16.0-py2.py3-none-any.whl",
    ),
    (
        "pypi",
        FILES + "charset_normalizer-3.5.3-cp311-cp311-manylinux_2_28_x86_64.whl",
        "pkg:pypi/charset-normalizer@3.5.3"
        "?file_name=charset_normalizer-3.5.3-cp311-cp311-manylinux_2_28_x86_64.whl",
    ),
    (
        "pypi",
        FILES + "Zope.Interface-5.0-1-py3-none-any.whl",  # with a build tag
        "pkg:pypi/zope-interface@5.0?file_name=Zope.Interface-5.0-1-py3-none-any.whl",
    ),
    ("pypi", FILES + "six-1.16.0.tar.gz", "pkg:pypi/six@1.16.0?file_name=six-1.16.0.tar.gz"),
    (
        "pypi",
        FILES + "python-dateutil-2.8.2.zip",
        "pkg:pypi/python-dateutil@2.8.2?file_name=python-dateutil-2.8.2.zip",
    ),
    # npm, cargo and Go module archives on a generic host
    (
        "generic",
        "https://registry.npmjs.org/@babel/core/-/core-7.24.0.tgz",
        "pkg:npm/%40babel/core@7.24.0",
    ),
    (
        "generic",
        "https://registry.npmjs.org/left-pad/-/left-pad-1.3.0.tgz",
        "pkg:npm/left-pad@1.3.0",
    ),
    (
        "generic",
        "https://static.crates.io/crates/serde/serde-1.0.200.crate",
        "pkg:cargo/serde@1.0.200",
    ),
    (
        "generic",
        "https://proxy.golang.org/github.com/!burnt!sushi/toml/@v/v1.3.2.zip",
        "pkg:golang/github.com/BurntSushi/toml@v1.3.2",
    ),
    # anything else: the file, and where it came from
    (
        "generic",
        "https://example.org/dl/tool-1.0.tar.gz",
        "pkg:generic/tool-1.0.tar.gz?download_url=https://example.org/dl/tool-1.0.tar.gz",
    ),
    (
        "snap",
        "https://api.snapcraft.io/api/v1/snaps/download/abcd_42.snap",
        "pkg:generic/abcd_42.snap?download_url=https://api.snapcraft.io/api/v1/snaps/download/abcd_42.snap",
    ),
    # an upstream this config does not name (another site's, `_intercept`): by the URL
    (None, DEB + "hello_2.10-3_amd64.deb", "pkg:deb/debian/hello@2.10-3?arch=amd64"),
    (
        None,
        FILES + "six-1.16.0.tar.gz",
        "pkg:pypi/six@1.16.0?file_name=six-1.16.0.tar.gz",
    ),
]


@pytest.mark.parametrize(("kind", "url", "purl"), PURLS, ids=[p[2][:60] for p in PURLS])
def test_purl_of(kind: str | None, url: str, purl: str) -> None:
    got = purl_of(entry(url, "_intercept" if kind is None else "up"), kind)
    assert got is not None and got.to_string() == purl


def test_ubuntu_by_upstream_name() -> None:
    e = entry("http://mirror.example/pool/main/h/hello/hello_2.10-3_amd64.deb", "ubuntu-ports")
    assert str(purl_of(e, "apt")) == "pkg:deb/ubuntu/hello@2.10-3?arch=amd64"


def test_what_an_index_says_wins_over_the_file_name() -> None:
    e = entry(DEB + "world_2.0_all.deb")  # pool names drop the epoch
    assert str(purl_of(e, "apt")) == "pkg:deb/debian/world@2.0?arch=all"
    got = purl_of(e, "apt", Identity("world", "1:2.0", "all"))
    assert str(got) == "pkg:deb/debian/world@1:2.0?arch=all"
    snap = entry("https://api.snapcraft.io/api/v1/snaps/download/abcd_42.snap", "snapstore")
    got = purl_of(snap, "snap", Identity("hello", "42"))
    assert str(got) == (
        "pkg:generic/hello@42?download_url=https://api.snapcraft.io/api/v1/snaps/download/abcd_42.snap"
    )


NOT_ARTIFACTS = [
    ("apt", "http://deb.debian.org/debian/dists/bookworm/InRelease", ArtifactKind.MUTABLE),
    ("apt", "http://deb.debian.org/debian/dists/bookworm/main/binary-amd64/by-hash/SHA256/"
     + "0" * 64, ArtifactKind.IMMUTABLE),
    ("pypi", "https://pypi.org/simple/six/", ArtifactKind.MUTABLE),
    ("pypi", FILES + "six-1.16.0-py2.py3-none-any.whl.metadata", ArtifactKind.IMMUTABLE),
    ("snap", "https://api.snapcraft.io/v2/snaps/refresh?action=download&name=hello",
     ArtifactKind.MUTABLE),
    ("generic", "https://git.example/repo.git/info/refs?service=git-upload-pack"
     "#git-protocol=version=2", ArtifactKind.MUTABLE),
    ("generic", "https://git.example/repo.git/git-upload-pack#git-protocol=version=2"
     "&body-sha256=" + "0" * 64, ArtifactKind.IMMUTABLE),
]  # fmt: skip


@pytest.mark.parametrize(("kind", "url", "what"), NOT_ARTIFACTS)
def test_metadata_is_not_an_artifact(kind: str, url: str, what: ArtifactKind) -> None:
    assert purl_of(entry(url, "up", what), kind) is None


# -- a store ---------------------------------------------------------------------------

ARCHIVE = "http://archive.test/debian"


def put(
    store: Store,
    upstream: str,
    url: str,
    body: bytes,
    *,
    kind: ArtifactKind = ArtifactKind.IMMUTABLE,
    seeds: tuple[str, ...] = (),
) -> Entry:
    info = store.blobs.put_bytes(body)
    now = time.time()
    key = CacheKey(upstream, url)
    e = Entry(key, info.digest, info.size, info.sha256, kind, recorded=now, validated=now)
    store.index.put(e, seeds)
    return e


def packages(*stanzas: tuple[str, str, str, bytes]) -> bytes:
    """A Packages index listing (name, version, pool file, body)."""
    return "".join(
        f"Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: T <t@t>\n"
        f"Filename: {pool}\nSize: {len(body)}\nSHA256: {hashlib.sha256(body).hexdigest()}\n"
        "Description: test\n long text\n\n"
        for name, version, pool, body in stanzas
    ).encode()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    st = Store(tmp_path / "store")
    yield st
    st.close()


def fill(store: Store) -> str:
    """Seed `build` (a deb with an epoch, a deb that its index lists with another sha256,
    a source package, a wheel and its .metadata, a snap, a tarball, indices); seed
    `other` (a deb and its index); a tarball in no seed. Returns the snap's sha3-384."""
    world, hello, never = b"world deb", b"hello deb", b"never deb"
    dsc, orig = b"dsc", b"orig tarball"
    put(store, "debian", f"{ARCHIVE}/pool/main/w/world/world_2.0_all.deb", world, seeds=("build",))
    put(store, "debian", f"{ARCHIVE}/pool/main/h/hello/hello_1.0_all.deb", hello, seeds=("build",))
    put(store, "debian", f"{ARCHIVE}/pool/main/n/never/never_0.1_all.deb", never, seeds=("other",))
    index = packages(
        ("world", "1:2.0", "pool/main/w/world/world_2.0_all.deb", world),
        ("hello", "9:1.0", "pool/main/h/hello/hello_1.0_all.deb", b"another hello"),
    )
    by_hash = f"{ARCHIVE}/dists/stable/main/binary-all/by-hash/SHA256/" + "1" * 64
    put(store, "debian", by_hash, lzma.compress(index), seeds=("build",))
    put(store, "debian", f"{ARCHIVE}/dists/stable/InRelease", b"signed", kind=ArtifactKind.MUTABLE)
    other_index = packages(("never", "1:0.1", "pool/main/n/never/never_0.1_all.deb", never))
    put(store, "debian", f"{ARCHIVE}/dists/old/main/binary-all/Packages", other_index,
        kind=ArtifactKind.MUTABLE, seeds=("other",))  # fmt: skip
    sources = (
        "Package: hello\nBinary: hello\nVersion: 2:1.0-1\nDirectory: pool/main/h/hello\n"
        "Checksums-Sha256:\n"
        f" {hashlib.sha256(dsc).hexdigest()} {len(dsc)} hello_1.0-1.dsc\n"
        f" {hashlib.sha256(orig).hexdigest()} {len(orig)} hello_1.0.orig.tar.gz\n\n"
    ).encode()
    put(store, "debian", f"{ARCHIVE}/dists/stable/main/source/Sources.gz",
        gzip.compress(sources), kind=ArtifactKind.MUTABLE)  # fmt: skip
    put(store, "debian", f"{ARCHIVE}/pool/main/h/hello/hello_1.0-1.dsc", dsc, seeds=("build",))
    put(store, "debian", f"{ARCHIVE}/pool/main/h/hello/hello_1.0.orig.tar.gz", orig,
        seeds=("build",))  # fmt: skip
    wheel = f"{FILES}Demo_Pkg-1.0-py3-none-any.whl"
    put(store, "pypi", wheel, b"wheel", seeds=("build",))
    put(store, "pypi", wheel + ".metadata", b"Metadata-Version: 2.1\n", seeds=("build",))
    put(store, "pypi", "https://pypi.org/simple/demo-pkg/", b"<html/>",
        kind=ArtifactKind.MUTABLE, seeds=("build",))  # fmt: skip
    snap_url = "https://api.snapcraft.io/api/v1/snaps/download/SNAPID_42.snap"
    snap = b"hsqs snap"
    put(store, "snapstore", snap_url, snap, seeds=("build",))
    sha3 = hashlib.sha3_384(snap).hexdigest()
    answer = {"snap": {"name": "hello", "revision": 42, "download": {"url": snap_url,
              "sha3-384": sha3}}}  # fmt: skip
    put(store, "snapstore", "https://api.snapcraft.io/v2/snaps/refresh?action=download&name=hello",
        json.dumps(answer).encode(), kind=ArtifactKind.MUTABLE, seeds=("build",))  # fmt: skip
    put(store, "tarballs", "http://www.test/dl/tool-1.0.tar.gz", b"tool", seeds=("build",))
    put(store, "tarballs", "http://www.test/dl/extra-2.0.tar.gz", b"extra")
    return sha3


KINDS = {"debian": "apt", "pypi": "pypi", "snapstore": "snap", "tarballs": "generic"}
BUILD_PURLS = {
    f"{ARCHIVE}/pool/main/w/world/world_2.0_all.deb": "pkg:deb/debian/world@1:2.0?arch=all",
    # its index lists another body under that name: the file name tells the version
    f"{ARCHIVE}/pool/main/h/hello/hello_1.0_all.deb": "pkg:deb/debian/hello@1.0?arch=all",
    f"{ARCHIVE}/pool/main/h/hello/hello_1.0-1.dsc": (
        "pkg:deb/debian/hello@2:1.0-1?arch=source&file_name=hello_1.0-1.dsc"
    ),
    f"{ARCHIVE}/pool/main/h/hello/hello_1.0.orig.tar.gz": (
        "pkg:deb/debian/hello@2:1.0-1?arch=source&file_name=hello_1.0.orig.tar.gz"
    ),
    f"{FILES}Demo_Pkg-1.0-py3-none-any.whl": (
        "pkg:pypi/demo-pkg@1.0?file_name=Demo_Pkg-1.0-py3-none-any.whl"
    ),
    "https://api.snapcraft.io/api/v1/snaps/download/SNAPID_42.snap": (
        "pkg:generic/hello@42?download_url=https://api.snapcraft.io/api/v1/snaps/download/"
        "SNAPID_42.snap"
    ),
    "http://www.test/dl/tool-1.0.tar.gz": (
        "pkg:generic/tool-1.0.tar.gz?download_url=http://www.test/dl/tool-1.0.tar.gz"
    ),
}


def test_a_seed_lists_exactly_its_artifacts_named_by_the_recorded_indices(store: Store) -> None:
    snap_sha3 = fill(store)
    arts = collect(store, select_entries(store, ["build"]), KINDS)
    assert {a.url: a.purl.to_string() for a in arts} == BUILD_PURLS
    snap = next(a for a in arts if a.url.endswith(".snap"))
    assert snap.sha3_384 == snap_sha3 and snap.role == "application"

    doc = check_cyclonedx(sbom_cyclonedx(arts, "seed build"))
    assert cdx_purls(doc) == BUILD_PURLS
    for c in doc["components"]:
        e = store.index.get(c["bom-ref"])
        assert e is not None
        body = store.blobs.path(e.digest).read_bytes()
        hashes = {h["alg"]: h["content"] for h in c["hashes"]}
        assert hashes["SHA-256"] == hashlib.sha256(body).hexdigest()
        assert hashes["BLAKE3"] == blake3.blake3(body).hexdigest()
        assert c["externalReferences"] == [{"type": "distribution", "url": c["bom-ref"]}]
        props = {p["name"]: p["value"] for p in c["properties"]}
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(e.recorded))
        assert props == {"cachesrv:recorded": when, "cachesrv:upstream": e.key.upstream}

    spdx = check_spdx(sbom_spdx(arts, "seed build"))
    assert spdx_purls(spdx) == BUILD_PURLS
    world = next(p for p in spdx["packages"] if p["packageFileName"] == "world_2.0_all.deb")
    assert world["versionInfo"] == "1:2.0"
    assert world["downloadLocation"] == f"{ARCHIVE}/pool/main/w/world/world_2.0_all.deb"
    assert {c["algorithm"] for c in world["checksums"]} == {"SHA256", "BLAKE3"}


def test_the_whole_store_and_an_unknown_seed(store: Store) -> None:
    fill(store)
    urls = {a.url for a in collect(store, select_entries(store, []), KINDS)}
    assert urls == set(BUILD_PURLS) | {
        f"{ARCHIVE}/pool/main/n/never/never_0.1_all.deb",
        "http://www.test/dl/extra-2.0.tar.gz",
    }
    with pytest.raises(SeedError, match="no seed named 'nope'"):
        select_entries(store, ["build", "nope"])


def test_unreadable_indices_are_skipped(store: Store) -> None:
    deb = put(store, "debian", f"{ARCHIVE}/pool/main/a/ab/ab_1.0_all.deb", b"ab", seeds=("s",))
    put(store, "debian", f"{ARCHIVE}/dists/s/main/binary-all/Packages.xz", b"\xfd7zXZ\x00junk",
        kind=ArtifactKind.MUTABLE)  # fmt: skip
    put(store, "debian", f"{ARCHIVE}/dists/s/main/binary-all/Packages", b"Origin: not an index\n",
        kind=ArtifactKind.MUTABLE)  # fmt: skip
    assert identities(store, [deb]) == {}
    [a] = artifacts_of([deb], KINDS)
    assert a.purl.to_string() == "pkg:deb/debian/ab@1.0?arch=all"


def test_an_empty_sbom_is_valid() -> None:
    check_cyclonedx(sbom_cyclonedx([], "seed empty"))
    assert json.loads(sbom_spdx([], "seed empty"))["packages"] == []


# -- the command line and bundles ----------------------------------------------------------


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "cachesrv.toml"
    path.write_text(
        config_text(
            {
                "debian": ("apt", ARCHIVE),
                "pypi": {
                    "kind": "pypi",
                    "url": "https://pypi.org/simple",
                    "file_hosts": ["files.pythonhosted.org"],
                },
                "snapstore": ("snap", "https://api.snapcraft.io"),
                "tarballs": ("generic", "http://www.test/dl"),
            }
        )  # fmt: skip
    )
    return path


def test_cli_writes_both_formats_and_refuses_an_unknown_seed(tmp_path: Path, store: Store) -> None:
    fill(store)
    store.close()
    cfg = _config(tmp_path)
    common = ("--config", cfg, "--store", tmp_path / "store")
    out = run_cli("seed", "sbom", "--seed", "build", *common)
    assert cdx_purls(check_cyclonedx(out.stdout)) == BUILD_PURLS
    assert "seed sbom: 7 artifacts of seed build (cyclonedx)" in out.stderr

    target = tmp_path / "build.spdx.json"
    out = run_cli("seed", "sbom", "--seed", "build", "--format", "spdx", "-o", target, *common)
    assert spdx_purls(check_spdx(target.read_text())) == BUILD_PURLS
    assert str(target) in out.stdout

    bad = run_cli("seed", "sbom", "--seed", "nope", *common, check=False)
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.startswith("cachesrv: error: no seed named 'nope'")
    assert len(bad.stderr.splitlines()) == 1
    bad = run_cli("seed", "sbom", "--format", "xml", *common, check=False)
    assert bad.returncode == 1 and "--format: 'xml' is not one of cyclonedx, spdx" in bad.stderr


def test_every_bundle_carries_its_sbom_and_imports_with_or_without_it(
    tmp_path: Path, store: Store
) -> None:
    fill(store)
    bundle = tmp_path / "usb"
    opts = ExportOptions(seeds=("build",), upstream_kinds=KINDS)
    export_bundle(store, bundle, opts)
    assert cdx_purls(check_cyclonedx((bundle / BUNDLE_SBOM).read_text())) == BUILD_PURLS
    # A resumed export into the same bundle keeps working; verify and import accept it.
    export_bundle(store, bundle, opts)
    verify_bundle(bundle)
    with closing(Store(tmp_path / "b")) as b:
        assert import_bundle(b, bundle).changed
        assert set(b.index.seed_keys("build")) == set(store.index.seed_keys("build"))
    # The metadata pins the SBOM (and so does a signature over it): a changed one is
    # a bad bundle.
    sbom = (bundle / BUNDLE_SBOM).read_bytes()
    (bundle / BUNDLE_SBOM).write_bytes(sbom.replace(b"pkg:", b"pkg:evil/", 1))
    with pytest.raises(SeedError) as refused:
        verify_bundle(bundle)
    assert any(p.startswith("sbom.cdx.json: blake3") for p in refused.value.problems)
    # A bundle from before SBOMs (no sbom.cdx.json, no sbom_blake3) verifies and imports.
    (bundle / BUNDLE_SBOM).unlink()
    meta = json.loads((bundle / METADATA).read_text())
    del meta["sbom_blake3"]
    (bundle / METADATA).write_text(json.dumps(meta))
    verify_bundle(bundle)
    with closing(Store(tmp_path / "c")) as c:
        assert import_bundle(c, bundle).changed
