"""Go module proxy rules (cachesrv.upstreams.goproxy): immutability, documents, semver."""

from __future__ import annotations

import json

import pytest

from cachesrv.config import UpstreamConfig
from cachesrv.models import ArtifactKind
from cachesrv.upstreams import goproxy
from cachesrv.upstreams.kind import Doc, NothingStored, View

UP = UpstreamConfig(name="goproxy", kind="goproxy", url="https://proxy.golang.org/")
BASE = "https://proxy.golang.org"
GREET = f"{BASE}/example.test/greet"
WORDS = f"{BASE}/example.test/!upper/words"
PSEUDO = "v0.0.0-20240102030405-abcdefabcdef"
docs = goproxy.documents


def doc_for(url: str) -> Doc:
    (doc,) = docs.formats(UP, url, None)
    return doc


def offline(url: str, body: bytes | None, *stored: str) -> bytes:
    return docs.render(UP, doc_for(url), body, View(served=None, up="", stored=frozenset(stored)))


def zips(module: str, *versions: str) -> list[str]:
    return [f"{module}/@v/{v}.zip" for v in versions]


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("example.test/greet/@v/v1.1.0.zip", ArtifactKind.IMMUTABLE),
        ("example.test/greet/@v/v1.1.0.mod", ArtifactKind.IMMUTABLE),
        ("example.test/greet/@v/v1.1.0.info", ArtifactKind.IMMUTABLE),
        (f"example.test/!upper/words/@v/{PSEUDO}.info", ArtifactKind.IMMUTABLE),
        ("example.test/x/@v/v2.0.0+incompatible.zip", ArtifactKind.IMMUTABLE),
        ("example.test/x/@v/v1.0.0-!r!c1.mod", ArtifactKind.IMMUTABLE),
        # A query that is not a version resolves differently tomorrow.
        ("example.test/greet/@v/master.info", ArtifactKind.MUTABLE),
        ("example.test/greet/@v/v1.1.info", ArtifactKind.MUTABLE),
        ("example.test/greet/@v/list", ArtifactKind.MUTABLE),
        ("example.test/greet/@latest", ArtifactKind.MUTABLE),
        ("sumdb/sum.golang.org/supported", ArtifactKind.MUTABLE),
        ("sumdb/sum.golang.org/latest", ArtifactKind.MUTABLE),
        ("sumdb/sum.golang.org/lookup/example.test/greet@v1.1.0", ArtifactKind.MUTABLE),
        ("sumdb/sum.golang.org/tile/8/0/000", ArtifactKind.IMMUTABLE),
        ("sumdb/sum.golang.org/tile/8/1/000.p/3", ArtifactKind.IMMUTABLE),
        ("sumdb/sum.golang.org/tile/8/data/x001/234", ArtifactKind.IMMUTABLE),
    ],
)
def test_artifact_kind(path: str, kind: ArtifactKind) -> None:
    assert goproxy.artifact_kind(path) is kind


def test_formats() -> None:
    assert doc_for(f"{GREET}/@v/list") == Doc(
        url=f"{GREET}/@v/list",
        key=f"{GREET}/@v/list",
        format="list",
        content_type="text/plain; charset=utf-8",
        synthetic=True,
    )
    latest = doc_for(f"{WORDS}/@latest")
    assert (latest.format, latest.content_type, latest.synthetic) == (
        "latest",
        "application/json",
        True,
    )
    supported = doc_for(f"{BASE}/sumdb/sum.golang.org/supported")
    assert (supported.format, supported.synthetic) == ("supported", True)
    for url in (
        f"{GREET}/@v/v1.1.0.zip",
        f"{GREET}/@v/v1.1.0.info",
        f"{BASE}/sumdb/sum.golang.org/lookup/example.test/greet@v1.1.0",
        f"{BASE}/sumdb/sum.golang.org/tile/8/0/000",
        f"{BASE}/@v/list",  # no module
        "https://elsewhere.test/example.test/greet/@v/list",
    ):
        assert docs.formats(UP, url, None) == [], url
    assert docs.inventory(UP, doc_for(f"{WORDS}/@v/list")) == f"{WORDS}/@v/"
    assert docs.inventory(UP, doc_for(f"{GREET}/@latest")) == f"{GREET}/@v/"
    assert docs.inventory(UP, doc_for(f"{BASE}/sumdb/sum.golang.org/supported")) is None
    assert docs.companions(UP, doc_for(f"{GREET}/@latest")) == ()
    assert docs.files(UP, doc_for(f"{GREET}/@v/list"), b"v1.0.0\n", {}) == []


def test_online_documents_are_answered_as_recorded() -> None:
    online = View(served=None, up="")
    body = b"v1.0.0\nv1.1.0 2024-01-02T03:04:05Z\n"
    assert docs.render(UP, doc_for(f"{GREET}/@v/list"), body, online) == body
    info = b'{"Version":"v1.1.0","Time":"2024-01-02T03:04:05Z"}'
    assert docs.render(UP, doc_for(f"{GREET}/@latest"), info, online) == info
    assert docs.render(UP, doc_for(f"{BASE}/sumdb/x.test/supported"), b"", online) == b""


def test_offline_list_shows_only_stored_zips() -> None:
    recorded = b"v1.0.0\nv1.1.0\nv1.2.0\n"
    stored = [
        *zips(GREET, "v1.1.0"),
        f"{GREET}/@v/v1.0.0.mod",  # a go.mod alone is no version to build
        f"{GREET}/@v/v1.0.0.info",
        f"{GREET}/@v/v1.2.0.info",
        *zips(f"{GREET}/sub", "v1.0.0"),  # another module
    ]
    assert offline(f"{GREET}/@v/list", recorded, *stored) == b"v1.1.0\n"
    # A recorded line keeps what follows its version; stored versions missing from the
    # recorded list (fetched by version later) are listed too, in semver order.
    recorded = b"v1.0.0 2024-01-01T00:00:00Z\nv1.1.0 2024-02-01T00:00:00Z\n"
    stored = zips(GREET, "v1.1.0", "v1.3.0", "v1.0.0")
    assert offline(f"{GREET}/@v/list", recorded, *stored) == (
        b"v1.0.0 2024-01-01T00:00:00Z\nv1.1.0 2024-02-01T00:00:00Z\nv1.3.0\n"
    )
    # A recorded list with nothing stored is empty (go then asks @latest).
    assert offline(f"{GREET}/@v/list", recorded) == b""


def test_offline_list_made_from_the_store() -> None:
    stored = zips(GREET, "v1.10.0", "v1.2.0", "v1.2.0-rc.1", PSEUDO, "v2.0.0+incompatible")
    assert offline(f"{GREET}/@v/list", None, *stored) == (
        f"{PSEUDO}\nv1.2.0-rc.1\nv1.2.0\nv1.10.0\nv2.0.0+incompatible\n".encode()
    )
    # Versions are listed as go spells them: the case encoding of the key is undone.
    stored = [*zips(WORDS, "v0.2.0", "v0.3.0-!r!c1"), f"{WORDS}/@v/v0.3.0-!r!c1.info"]
    assert offline(f"{WORDS}/@v/list", None, *stored) == b"v0.2.0\nv0.3.0-RC1\n"
    # Keys that are no version are left out; nothing at all stored: a miss.
    with pytest.raises(NothingStored):
        offline(f"{GREET}/@v/list", None, f"{GREET}/@v/v1.0.0.mod", f"{GREET}/@v/master.zip")


def test_offline_latest() -> None:
    recorded = b'{"Version":"v1.2.0","Time":"2024-03-01T00:00:00Z"}'
    # The recorded one when its zip is stored, byte for byte.
    stored = zips(GREET, "v1.1.0", "v1.2.0")
    assert offline(f"{GREET}/@latest", recorded, *stored) == recorded
    # Else the newest stored version.
    stored = zips(GREET, "v1.0.0", "v1.1.0")
    assert json.loads(offline(f"{GREET}/@latest", recorded, *stored)) == {"Version": "v1.1.0"}
    # Never recorded: made from the store.
    assert json.loads(offline(f"{GREET}/@latest", None, *stored)) == {"Version": "v1.1.0"}
    # Nothing stored: the recorded one (go then misses on its zip, explained) ...
    assert offline(f"{GREET}/@latest", recorded, f"{GREET}/@v/v1.2.0.mod") == recorded
    # ... or, never recorded, a miss.
    with pytest.raises(NothingStored):
        offline(f"{GREET}/@latest", None, f"{GREET}/@v/v1.2.0.info")


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        # A release wins over any pre-release, even a higher one.
        (["v1.2.0", "v1.3.0-rc.1", "v1.3.0-beta.2"], "v1.2.0"),
        # Numerically, not as text.
        (["v1.9.0", "v1.10.0", "v1.2.0"], "v1.10.0"),
        # Pseudo-versions are pre-releases.
        ([PSEUDO, "v0.1.0"], "v0.1.0"),
        ([PSEUDO, "v0.0.0-20230101000000-aaaaaaaaaaaa"], PSEUDO),
        (["v0.0.0-20230101000000-aaaaaaaaaaaa", "v0.1.0-rc.1"], "v0.1.0-rc.1"),
        # Build metadata does not count; +incompatible majors are higher semver.
        (["v1.5.0", "v2.0.0+incompatible"], "v2.0.0+incompatible"),
        # Pre-release identifiers: numeric by value, before alphanumeric; longer wins.
        (["v1.0.0-rc.2", "v1.0.0-rc.10"], "v1.0.0-rc.10"),
        (["v1.0.0-1", "v1.0.0-alpha"], "v1.0.0-alpha"),
        (["v1.0.0-alpha", "v1.0.0-alpha.1"], "v1.0.0-alpha.1"),
    ],
)
def test_latest_picks_the_newest_by_semver(stored: list[str], expected: str) -> None:
    got = json.loads(offline(f"{GREET}/@latest", None, *zips(GREET, *stored)))
    assert got["Version"] == expected
    assert goproxy.newest(stored) == expected


def test_synthetic_latest_of_a_pseudo_version_carries_its_time() -> None:
    got = json.loads(offline(f"{GREET}/@latest", None, *zips(GREET, PSEUDO)))
    assert got == {"Version": PSEUDO, "Time": "2024-01-02T03:04:05Z"}
    assert goproxy.pseudo_time("v1.2.4-0.20191109021931-daa7c04131f5") == "2019-11-09T02:19:31Z"
    assert goproxy.pseudo_time("v1.2.3-pre.0.20191109021931-daa7c04131f5") == (
        "2019-11-09T02:19:31Z"
    )
    assert goproxy.pseudo_time("v1.2.3") is None


def test_semver_helpers() -> None:
    assert goproxy.semver_key("v1.2.3") == (1, 2, 3, 1, ())
    for bad in ("1.2.3", "v1.2", "v01.2.3", "v1.2.3-", "latest", "v1.2.3-01"):
        assert goproxy.semver_key(bad) is None, bad
    assert goproxy.is_pseudo(PSEUDO)
    assert not goproxy.is_pseudo("v1.0.0-rc.1")
    assert goproxy.unescape("v1.0.0-!r!c1") == "v1.0.0-RC1"
    assert goproxy.escape("v1.0.0-RC1") == "v1.0.0-!r!c1"
    for bad in ("!", "!1", "Upper"):
        assert goproxy.unescape(bad) is None, bad
    assert goproxy.newest(["master", "junk"]) is None


@pytest.mark.parametrize("body", [b"{", b"[]", b'{"Time": "x"}', b'{"Version": 1}', b"v1.0.0"])
def test_malformed_latest_is_a_value_error(body: bytes) -> None:
    with pytest.raises(ValueError):
        offline(f"{GREET}/@latest", body, *zips(GREET, "v1.0.0"))
    with pytest.raises(ValueError):
        docs.render(UP, doc_for(f"{GREET}/@latest"), body, View(served=None, up=""))


def test_offline_supported_is_always_answered() -> None:
    url = f"{BASE}/sumdb/sum.golang.org/supported"
    assert offline(url, None) == b""
    assert offline(url, b"") == b""
