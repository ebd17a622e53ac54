"""npm registry rules (cachesrv.upstreams.npm): keys, formats, declared hashes, rendering."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest

from cachesrv.config import UpstreamConfig
from cachesrv.errors import BadRequest, Forbidden
from cachesrv.models import ArtifactKind
from cachesrv.upstreams import npm, upstream_request
from cachesrv.upstreams.kind import Declared, Doc, View
from cachesrv.upstreams.router import Router

REG = "https://registry.example"
UP = UpstreamConfig(name="npm", kind="npm", url=REG, file_hosts=("cdn.example",))
SERVED = "http://cache:3142/@build/npm/"
CORGI = npm.ABBREVIATED_TYPE
NPM_CORGI_ACCEPT = f"{CORGI}; q=1.0, application/json; q=0.8, */*"
DATA = b"tarball bytes"


def sri(data: bytes, algorithm: str = "sha512") -> str:
    return f"{algorithm}-" + base64.b64encode(hashlib.new(algorithm, data).digest()).decode()


def version(name: str, v: str, tarball: str | None = None, **dist: str) -> dict[str, Any]:
    base = name.rpartition("/")[2]
    return {
        "name": name,
        "version": v,
        "dist": {
            "tarball": tarball or f"{REG}/{name}/-/{base}-{v}.tgz",
            "shasum": hashlib.sha1(DATA).hexdigest(),
            "integrity": sri(DATA),
            **dist,
        },
    }


def packument(name: str, versions: list[str], tags: dict[str, str] | None = None) -> bytes:
    doc = {
        "_id": name,
        "name": name,
        "dist-tags": tags or {"latest": versions[-1]},
        "versions": {v: version(name, v) for v in versions},
        "time": {"created": "2020", "modified": "2021", **{v: "2020" for v in versions}},
    }
    return json.dumps(doc).encode()


def full(name: str) -> Doc:
    formats = npm.documents.formats(UP, npm.key_url(UP, name), "application/json")
    return formats[0]


def render(body: bytes, doc: Doc, served: str | None, stored: set[str] | None = None) -> Any:
    view = View(served=served, up="", stored=None if stored is None else frozenset(stored))
    return json.loads(npm.documents.render(UP, doc, body, view))


# -- keys -------------------------------------------------------------------------------


def test_scoped_packument_spellings_share_one_key() -> None:
    router = Router({"npm": UP})
    keys = {
        router.resolve(target).key.url
        for target in (
            "/npm/@scope%2futil",  # what npm sends
            "/npm/@scope%2Futil",
            "/npm/%40scope%2Futil",
            "/npm/@scope/util",
            "/@seed/npm/@scope%2futil",
        )
    }
    assert keys == {f"{REG}/@scope%2Futil"}
    # Absolute form (npm through a proxy): the real URL, canonical escapes.
    assert router.resolve(f"{REG}/@scope%2futil").key.url == f"{REG}/@scope%2Futil"
    # A packument asked as `@scope/name` in absolute form is the same document.
    formats = npm.documents.formats(UP, router.resolve(f"{REG}/@scope/util").url, None)
    assert [d.key for d in formats] == [
        f"{REG}/@scope%2Futil",
        f"{REG}/@scope%2Futil{npm.ABBREVIATED_QUERY}",
    ]


def test_tarball_and_other_keys() -> None:
    router = Router({"npm": UP})
    tgz = f"{REG}/@scope/util/-/util-1.0.0.tgz"
    for target in ("/npm/@scope/util/-/util-1.0.0.tgz", "/npm/@scope%2futil/-/util-1.0.0.tgz"):
        assert router.resolve(target).key.url == tgz
    assert router.resolve(tgz).key.url == tgz
    assert (
        npm.key_url(UP, "left-pad/-/left-pad-1.3.0.tgz") == f"{REG}/left-pad/-/left-pad-1.3.0.tgz"
    )
    assert npm.key_url(UP, "left-pad") == f"{REG}/left-pad"
    assert npm.key_url(UP, "@s%2Fn/1.0.0") == f"{REG}/@s/n/1.0.0"
    assert npm.key_url(UP, "-/v1/search?text=x") == f"{REG}/-/v1/search?text=x"
    assert (
        npm.key_url(UP, "files/https/cdn.example/t/x-1.0.0.tgz")
        == "https://cdn.example/t/x-1.0.0.tgz"
    )
    with pytest.raises(Forbidden):
        npm.key_url(UP, "files/https/elsewhere.example/x.tgz")
    with pytest.raises(BadRequest):
        router.resolve("/npm/@scope/util/-/..%2F..%2Fsecret")
    # Other kinds still refuse an encoded slash.
    pypi = UpstreamConfig(name="pypi", kind="pypi", url="https://pypi.example/simple")
    with pytest.raises(BadRequest):
        Router({"pypi": pypi}).resolve("/pypi/simple/a%2Fb/")


def test_artifact_kind() -> None:
    assert npm.artifact_kind("left-pad/-/left-pad-1.3.0.tgz") is ArtifactKind.IMMUTABLE
    assert npm.artifact_kind("@s/n/-/n-1.0.0.tgz") is ArtifactKind.IMMUTABLE
    assert npm.artifact_kind("files/https/cdn.example/x-1.0.0.tgz") is ArtifactKind.IMMUTABLE
    for path in ("left-pad", "@s%2Fn", "@s/n", "x.tgz", "left-pad/1.3.0", "-/v1/search?q=a"):
        assert npm.artifact_kind(path) is ArtifactKind.MUTABLE, path


def test_upstream_request_asks_formats_by_accept() -> None:
    assert upstream_request(UP, f"{REG}/@s%2Fn{npm.ABBREVIATED_QUERY}") == (
        f"{REG}/@s%2Fn",
        {"Accept": NPM_CORGI_ACCEPT},
    )
    assert upstream_request(UP, f"{REG}/@s%2Fn") == (
        f"{REG}/@s%2Fn",
        {"Accept": "application/json"},
    )
    assert upstream_request(UP, f"{REG}/@s/n/-/n-1.0.0.tgz") == (f"{REG}/@s/n/-/n-1.0.0.tgz", {})


# -- formats ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "first"),
    [
        ("application/json", "full"),  # npm install
        (NPM_CORGI_ACCEPT, "abbreviated"),  # npm ci / install from a lockfile
        (CORGI, "abbreviated"),
        (None, "full"),
        ("*/*", "full"),
        (f"{CORGI}; q=0.5, application/json", "full"),
        (f"{CORGI}; q=0", "full"),
    ],
)
def test_format_preference_follows_accept(accept: str | None, first: str) -> None:
    formats = npm.documents.formats(UP, f"{REG}/left-pad", accept)
    assert [d.format for d in formats][0] == first
    assert {d.format: d.key for d in formats} == {
        "full": f"{REG}/left-pad",
        "abbreviated": f"{REG}/left-pad{npm.ABBREVIATED_QUERY}",
    }
    assert all(d.url == f"{REG}/left-pad" and d.content_type is None for d in formats)


def test_formats_only_for_packuments() -> None:
    for url in (
        f"{REG}/left-pad/-/left-pad-1.3.0.tgz",
        f"{REG}/left-pad/1.3.0",
        f"{REG}/left-pad?write=true",
        f"{REG}/-/v1/search?text=x",
        f"{REG}/",
        "https://cdn.example/x-1.0.0.tgz",
    ):
        assert npm.documents.formats(UP, url, "application/json") == [], url
    # The abbreviated key itself names the abbreviated document.
    marked = npm.documents.formats(UP, f"{REG}/left-pad{npm.ABBREVIATED_QUERY}", None)
    assert [d.format for d in marked] == ["abbreviated", "full"]


# -- files and declared hashes ----------------------------------------------------------


def test_files_declare_integrity_as_hex() -> None:
    body = packument("@scope/util", ["1.0.0", "1.2.0"])
    refs = npm.documents.files(UP, full("@scope/util"), body, {})
    assert [r.key for r in refs] == [
        f"{REG}/@scope/util/-/util-1.0.0.tgz",
        f"{REG}/@scope/util/-/util-1.2.0.tgz",
    ]
    assert {r.declared for r in refs} == {Declared("sha512", hashlib.sha512(DATA).hexdigest())}


def test_declared_hash_choices() -> None:
    sha1 = hashlib.sha1(DATA).hexdigest()
    sha512 = Declared("sha512", hashlib.sha512(DATA).hexdigest())
    assert npm.declared({"integrity": sri(DATA), "shasum": sha1}) == sha512
    # Several hashes: the strongest, whatever the order; options after "?" ignored.
    several = f"{sri(DATA, 'sha1')} {sri(DATA)}?foo {sri(DATA, 'sha256')}"
    assert npm.declared({"integrity": several}) == sha512
    assert npm.declared({"integrity": sri(DATA, "sha256")}) == Declared(
        "sha256", hashlib.sha256(DATA).hexdigest()
    )
    # No (usable) integrity: shasum, as npm checks it then.
    assert npm.declared({"shasum": sha1.upper()}) == Declared("sha1", sha1)
    assert npm.declared({"integrity": "sha512-not*base64", "shasum": sha1}) == Declared(
        "sha1", sha1
    )
    assert npm.declared({"integrity": "sha512-" + base64.b64encode(b"short").decode()}) is None
    assert npm.declared({"shasum": "abc"}) is None
    assert npm.declared({}) is None


def test_files_keys_match_router_keys_for_every_host() -> None:
    router = Router({"npm": UP})
    doc_body = json.dumps(
        {
            "name": "a",
            "versions": {
                "1.0.0": version(
                    "a", "1.0.0", tarball="HTTPS://Registry.Example:443/a/-/a-1.0.0.tgz"
                ),
                "1.1.0": version("a", "1.1.0", tarball="http://registry.example/a/-/a-1.1.0.tgz"),
                "2.0.0": version("a", "2.0.0", tarball="https://cdn.example/a/a-2.0.0.tgz"),
                "3.0.0": version("a", "3.0.0", tarball="https://evil.example/a-3.0.0.tgz"),
                "4.0.0": {"name": "a", "version": "4.0.0"},  # no dist
            },
        }
    ).encode()
    refs = npm.documents.files(UP, full("a"), doc_body, {})
    assert [r.key for r in refs] == [
        f"{REG}/a/-/a-1.0.0.tgz",
        f"{REG}/a/-/a-1.1.0.tgz",
        "https://cdn.example/a/a-2.0.0.tgz",
    ]
    # What npm asks for each (through cachesrv, or as a proxy) has that key.
    rendered = render(doc_body, full("a"), "http://cache:3142/npm/")
    for ref, v in zip(refs, ("1.0.0", "1.1.0", "2.0.0"), strict=True):
        local = rendered["versions"][v]["dist"]["tarball"]
        assert router.resolve(local.removeprefix("http://cache:3142")).key.url == ref.key
    assert router.resolve("https://cdn.example/a/a-2.0.0.tgz").key.url == refs[2].key


# -- rendering --------------------------------------------------------------------------


def test_render_online_rewrites_tarballs_to_the_served_root() -> None:
    body = packument("@scope/util", ["1.0.0", "1.2.0"])
    doc = render(body, full("@scope/util"), SERVED)
    assert doc["versions"]["1.2.0"]["dist"] == {
        "tarball": f"{SERVED}@scope/util/-/util-1.2.0.tgz",
        "shasum": hashlib.sha1(DATA).hexdigest(),
        "integrity": sri(DATA),
    }
    assert doc["dist-tags"] == {"latest": "1.2.0"}
    assert set(doc["time"]) == {"created", "modified", "1.0.0", "1.2.0"}
    cdn = json.dumps(
        {"name": "a", "versions": {"1.0.0": version("a", "1.0.0", "https://cdn.example/a.tgz")}}
    ).encode()
    tarball = render(cdn, full("a"), SERVED)["versions"]["1.0.0"]["dist"]["tarball"]
    assert tarball == f"{SERVED}files/https/cdn.example/a.tgz"


def test_render_for_a_proxy_client_keeps_the_recorded_bytes() -> None:
    body = packument("left-pad", ["1.0.0"])
    assert npm.documents.render(UP, full("left-pad"), body, View(served=None, up="")) == body


def test_render_offline_lists_stored_versions_and_moves_latest() -> None:
    body = packument(
        "a",
        ["1.0.0", "1.1.0", "2.0.0-beta.1", "2.0.0"],
        tags={"latest": "2.0.0", "next": "2.0.0-beta.1", "old": "1.0.0", "gone": "9.9.9"},
    )
    stored = {f"{REG}/a/-/a-1.0.0.tgz", f"{REG}/a/-/a-1.1.0.tgz"}
    doc = render(body, full("a"), SERVED, stored)
    assert sorted(doc["versions"]) == ["1.0.0", "1.1.0"]
    # latest moves to the newest stored release; a tag whose version is gone is dropped.
    assert doc["dist-tags"] == {"latest": "1.1.0", "old": "1.0.0"}
    assert set(doc["time"]) == {"created", "modified", "1.0.0", "1.1.0"}
    assert doc["versions"]["1.1.0"]["dist"]["tarball"] == f"{SERVED}a/-/a-1.1.0.tgz"

    # Only a prerelease stored: latest still exists.
    doc = render(body, full("a"), None, {f"{REG}/a/-/a-2.0.0-beta.1.tgz"})
    assert doc["dist-tags"] == {"latest": "2.0.0-beta.1", "next": "2.0.0-beta.1"}
    assert doc["versions"]["2.0.0-beta.1"]["dist"]["tarball"] == f"{REG}/a/-/a-2.0.0-beta.1.tgz"

    # latest no higher than it was: a newer major that latest never named is not picked.
    body = packument("b", ["1.0.0", "1.5.0", "3.0.0"], tags={"latest": "1.5.0"})
    doc = render(body, full("b"), SERVED, {f"{REG}/b/-/b-1.0.0.tgz", f"{REG}/b/-/b-3.0.0.tgz"})
    assert doc["dist-tags"] == {"latest": "1.0.0"}

    # Nothing stored: no versions, no tags (npm: "No versions available").
    doc = render(body, full("b"), SERVED, set())
    assert doc["versions"] == {} and doc["dist-tags"] == {}


def test_render_offline_with_everything_stored_changes_nothing_for_a_proxy_client() -> None:
    body = packument("a", ["1.0.0"])
    view = View(served=None, up="", stored=frozenset({f"{REG}/a/-/a-1.0.0.tgz"}))
    assert npm.documents.render(UP, full("a"), body, view) == body


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b'{"name": "a"}',
        b'{"name": "a", "versions": []}',
        b'{"name": "a", "versions": {"1.0.0": "x"}}',
        b"\xff\xfe",
    ],
)
def test_malformed_packuments_raise_value_error(body: bytes) -> None:
    with pytest.raises(ValueError):
        npm.documents.render(UP, full("a"), body, View(served=SERVED, up=""))
    with pytest.raises(ValueError):
        npm.documents.files(UP, full("a"), body, {})


def test_unpublished_packument_is_passed_on() -> None:
    body = json.dumps({"name": "a", "time": {"unpublished": {"time": "2020"}}}).encode()
    assert npm.documents.render(UP, full("a"), body, View(served=SERVED, up="")) == body
    assert npm.documents.files(UP, full("a"), body, {}) == []


# -- semver -----------------------------------------------------------------------------


def test_semver_precedence() -> None:
    ordered = [
        "not-a-version",
        "0.9.0",
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-alpha.beta",
        "1.0.0-beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0",
        "1.0.1",
        "1.2.0",
        "1.10.0",
        "2.0.0-0",
        "2.0.0",
        "10.0.0",
    ]
    assert sorted(reversed(ordered), key=npm.semver_key) == ordered
    assert npm.semver_key("1.0.0+build.5") == npm.semver_key("1.0.0")
    assert npm.semver_key("v1.2.3") == npm.semver_key("1.2.3")
    assert npm.is_prerelease("1.0.0-rc.1") and not npm.is_prerelease("1.0.0")
    assert not npm.is_prerelease("garbage")


def test_newest() -> None:
    assert npm.newest(["1.0.0", "2.0.0-rc.1", "1.2.0"]) == "1.2.0"
    assert npm.newest(["2.0.0-rc.1", "2.0.0-rc.2"]) == "2.0.0-rc.2"
    assert npm.newest(["1.0.0", "3.0.0"], not_above="2.0.0") == "1.0.0"
    assert npm.newest(["3.0.0"], not_above="2.0.0") == "3.0.0"
    assert npm.newest(["1.0.0", "3.0.0"], not_above="garbage") == "3.0.0"
