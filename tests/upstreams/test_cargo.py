"""Cargo sparse-registry rules (cachesrv.upstreams.cargo): keys, index paths, the `dl`
template, index files' declared hashes, and what cargo is answered online and offline."""

from __future__ import annotations

import hashlib
import json

import pytest

from cachesrv.config import UpstreamConfig
from cachesrv.errors import BadRequest, Forbidden
from cachesrv.models import ArtifactKind
from cachesrv.upstreams import artifact_kind, cargo, kind_of
from cachesrv.upstreams.kind import Declared, Doc, FileRef, View
from cachesrv.upstreams.router import Router

INDEX = "https://index.crates.io"
DL = "https://static.crates.io/crates"
CRATES = UpstreamConfig(
    name="crates", kind="cargo", url=INDEX, file_hosts=("static.crates.io", "dl.test:8080")
)
CONFIG_KEY = f"{INDEX}/config.json"
SERVED = "http://cache:3142/crates/"
MARKER_DL = (
    "https://dl.test:8080/m/{prefix}/{lowerprefix}/{crate}-{version}.crate?sum={sha256-checksum}"
)
DOCS = cargo.documents


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def config_body(dl: str = DL, **extra: object) -> bytes:
    return json.dumps({"dl": dl, **extra}).encode()


def line(name: str, vers: str, cksum: str | None = None, **extra: object) -> bytes:
    entry = {"name": name, "vers": vers, "deps": [], "cksum": cksum or sha(name + vers)}
    return json.dumps({**entry, "features": {}, "yanked": False, **extra}).encode()


def index_doc(path: str) -> Doc:
    [doc] = DOCS.formats(CRATES, f"{INDEX}/{path}", "text/plain")
    return doc


def companions(dl: str = DL) -> dict[str, bytes]:
    return {CONFIG_KEY: config_body(dl)}


# -- registration, index paths, keys ------------------------------------------------


def test_registered_as_the_cargo_kind() -> None:
    assert kind_of(CRATES) is cargo
    assert cargo.documents is not None
    assert cargo.encoded_slash is False
    assert cargo.declared_hash("se/rd/serde") is None
    assert cargo.upstream_request(f"{INDEX}/se/rd/serde") == (f"{INDEX}/se/rd/serde", {})


@pytest.mark.parametrize(
    ("name", "prefix", "path"),
    [
        ("a", "1", "1/a"),
        ("ab", "2", "2/ab"),
        ("abc", "3/a", "3/a/abc"),
        ("Abc", "3/A", "3/a/abc"),
        ("serde", "se/rd", "se/rd/serde"),
        ("MixedCase", "Mi/xe", "mi/xe/mixedcase"),
        ("aBcDe", "aB/cD", "ab/cd/abcde"),
        ("wasm-bindgen", "wa/sm", "wa/sm/wasm-bindgen"),
        ("rand_core", "ra/nd", "ra/nd/rand_core"),
    ],
)
def test_prefix_and_index_path(name: str, prefix: str, path: str) -> None:
    assert cargo.prefix(name) == prefix  # case kept, as in `{prefix}`
    assert cargo.index_path(name) == path  # always lowercase
    assert cargo.crate_of(path) == name.lower()


def test_prefix_of_empty_name() -> None:
    with pytest.raises(ValueError):
        cargo.prefix("")


@pytest.mark.parametrize(
    "path",
    [
        "Mi/xe/MixedCase",  # index paths are lowercase
        "mi/xe/MixedCase",
        "3/x/abc",  # abc lives at 3/a/abc
        "1/ab",
        "2/a",
        "3/abc",
        "se/rd/other",
        "se/serde",
        "se/rd/se/rd",
        "api/v1/crates",
        "config.json.bak",
        "",
        "se/rd/serde?x=1",
        "se/rd/ser.de",
    ],
)
def test_not_an_index_path(path: str) -> None:
    assert cargo.crate_of(path) is None
    with pytest.raises(Forbidden, match="a cargo upstream serves"):
        cargo.key_url(CRATES, path)


@pytest.mark.parametrize(
    ("path", "key"),
    [
        ("config.json", f"{INDEX}/config.json"),
        ("1/a", f"{INDEX}/1/a"),
        ("2/ab", f"{INDEX}/2/ab"),
        ("3/a/abc", f"{INDEX}/3/a/abc"),
        ("se/rd/serde", f"{INDEX}/se/rd/serde"),
        (
            "files/https/static.crates.io/crates/serde/1.0.0/download",
            "https://static.crates.io/crates/serde/1.0.0/download",
        ),
        (
            "files/https/dl.test:8080/m/Mi/xe/mi/xe/MixedCase-0.1.0.crate?sum=ab",
            "https://dl.test:8080/m/Mi/xe/mi/xe/MixedCase-0.1.0.crate?sum=ab",
        ),
        # The index host itself may serve downloads.
        ("files/https/index.crates.io/dl/a/1.0.0", f"{INDEX}/dl/a/1.0.0"),
    ],
)
def test_key_url(path: str, key: str) -> None:
    assert cargo.key_url(CRATES, path) == key


def test_downloads_only_from_the_upstreams_hosts() -> None:
    with pytest.raises(Forbidden, match="file_hosts"):
        cargo.key_url(CRATES, "files/https/evil.test/crates/serde/1.0.0/download")
    with pytest.raises(Forbidden, match="file_hosts"):
        cargo.key_url(CRATES, "files/https/dl.test:9999/x.crate")  # the pattern names a port
    with pytest.raises(BadRequest):
        cargo.key_url(CRATES, "files/ftp/static.crates.io/x")


def test_router_resolves_cargo_paths() -> None:
    router = Router({"crates": CRATES})
    assert router.resolve("/crates/mi/xe/mixedcase").key.url == f"{INDEX}/mi/xe/mixedcase"
    route = router.resolve("/@build/crates/files/https/static.crates.io/crates/a/1.0.0/download")
    assert route.key.url == "https://static.crates.io/crates/a/1.0.0/download"
    assert route.seed == "build"
    with pytest.raises(Forbidden):
        router.resolve("/crates/Mi/xe/MixedCase")


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("config.json", ArtifactKind.MUTABLE),
        ("1/a", ArtifactKind.MUTABLE),
        ("3/a/abc", ArtifactKind.MUTABLE),
        ("se/rd/serde", ArtifactKind.MUTABLE),
        ("files/https/static.crates.io/crates/serde/1.0.0/download", ArtifactKind.IMMUTABLE),
        ("files/https/dl.test:8080/m/se/rd/se/rd/serde-1.0.0.crate?sum=ab", ArtifactKind.IMMUTABLE),
        # A file host reached as a proxy: its own path, whatever the dl's shape.
        ("crates/serde/1.0.0/download", ArtifactKind.IMMUTABLE),
        ("m/Mi/xe/mi/xe/MixedCase-0.1.0.crate", ArtifactKind.IMMUTABLE),
    ],
)
def test_artifact_kind(path: str, kind: ArtifactKind) -> None:
    assert artifact_kind(CRATES, path) is kind


# -- the dl template ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dl", "name", "vers", "url"),
    [
        # No marker: cargo appends /{crate}/{version}/download; the name keeps its case.
        (DL, "serde", "1.0.0", f"{DL}/serde/1.0.0/download"),
        (DL, "MixedCase", "0.1.0", f"{DL}/MixedCase/0.1.0/download"),
        (DL + "/", "a", "1.0.0", f"{DL}/a/1.0.0/download"),  # no empty path segment
        (DL, "b", "1.0.0+build.5", f"{DL}/b/1.0.0+build.5/download"),
        # Markers: {prefix} keeps the case, {lowerprefix} does not.
        (
            MARKER_DL,
            "MixedCase",
            "0.1.0",
            "https://dl.test:8080/m/Mi/xe/mi/xe/MixedCase-0.1.0.crate?sum=C",
        ),
        (MARKER_DL, "Abc", "2.0.0", "https://dl.test:8080/m/3/A/3/a/Abc-2.0.0.crate?sum=C"),
        (MARKER_DL, "ab", "1.0.0", "https://dl.test:8080/m/2/2/ab-1.0.0.crate?sum=C"),
        (MARKER_DL, "x", "1.0.0", "https://dl.test:8080/m/1/1/x-1.0.0.crate?sum=C"),
        # Any one marker makes dl a template (nothing is appended).
        ("https://dl.test/{crate}.crate", "serde", "1.0.0", "https://dl.test/serde.crate"),
        ("https://dl.test/v/{version}", "serde", "1.0.0", "https://dl.test/v/1.0.0"),
        ("https://dl.test/{sha256-checksum}", "serde", "1.0.0", "https://dl.test/C"),
    ],
)
def test_download_url(dl: str, name: str, vers: str, url: str) -> None:
    assert cargo.expand(cargo.download_template(dl), name, vers, "C") == url


def test_download_key_matches_the_router() -> None:
    """The key files() computes for a line is the key of the URL cargo asks for with the
    rewritten dl: both sides agree on case, escapes and the query."""
    router = Router({"crates": CRATES})
    config_doc = Doc(CONFIG_KEY, CONFIG_KEY, "config")
    for dl in (DL, MARKER_DL, "HTTPS://Static.Crates.IO/crates"):
        rendered = json.loads(DOCS.render(CRATES, config_doc, config_body(dl), View(SERVED, "")))
        for name, vers in (("MixedCase", "0.1.0"), ("a", "1.0.0+b"), ("serde", "1.0.0")):
            cksum = sha(name)
            asked = cargo.expand(rendered["dl"], name, vers, cksum)
            assert asked.startswith(SERVED)
            route = router.resolve(asked[len("http://cache:3142") :])
            doc = index_doc(cargo.index_path(name))
            [ref] = DOCS.files(CRATES, doc, line(name, vers, cksum), companions(dl))
            assert ref.key == route.key.url
            direct = cargo.expand(cargo.download_template(dl), name, vers, cksum)
            assert ref.key == cargo.download_key(direct)


# -- documents ------------------------------------------------------------------------


def test_formats() -> None:
    assert DOCS.formats(CRATES, CONFIG_KEY, None) == [Doc(CONFIG_KEY, CONFIG_KEY, "config")]
    url = f"{INDEX}/se/rd/serde"
    assert DOCS.formats(CRATES, url, "text/plain") == [Doc(url, url, "index")]
    for other in (
        "https://static.crates.io/crates/serde/1.0.0/download",  # a download
        f"{INDEX}/dl/serde/1.0.0",
        f"{INDEX}/",
    ):
        assert DOCS.formats(CRATES, other, None) == []


def test_companions() -> None:
    assert DOCS.companions(CRATES, index_doc("se/rd/serde")) == (CONFIG_KEY,)
    assert DOCS.companions(CRATES, Doc(CONFIG_KEY, CONFIG_KEY, "config")) == ()
    assert DOCS.inventory(CRATES, index_doc("se/rd/serde")) is None


def test_files_declare_each_cksum() -> None:
    upper = sha("0.2.0").upper()
    body = line("leaf", "0.1.0") + b"\n" + line("leaf", "0.2.0", upper) + b"\n\n"
    refs = DOCS.files(CRATES, index_doc("le/af/leaf"), body, companions())
    assert refs == [
        FileRef(f"{DL}/leaf/0.1.0/download", Declared("sha256", sha("leaf0.1.0"))),
        FileRef(f"{DL}/leaf/0.2.0/download", Declared("sha256", upper.lower())),
    ]


def test_files_with_markers_keep_the_published_name() -> None:
    body = line("MixedCase", "0.1.0", "ab" * 32)
    [ref] = DOCS.files(CRATES, index_doc("mi/xe/mixedcase"), body, companions(MARKER_DL))
    assert ref.key == "https://dl.test:8080/m/Mi/xe/mi/xe/MixedCase-0.1.0.crate?sum=" + "ab" * 32
    assert ref.declared == Declared("sha256", "ab" * 32)


def test_config_json_has_no_files() -> None:
    doc = Doc(CONFIG_KEY, CONFIG_KEY, "config")
    assert DOCS.files(CRATES, doc, config_body(), {}) == []


def render_config(
    dl: str, served: str | None = SERVED, extra: dict[str, object] | None = None
) -> dict[str, object]:
    doc = Doc(CONFIG_KEY, CONFIG_KEY, "config")
    out = DOCS.render(CRATES, doc, config_body(dl, **(extra or {})), View(served, ""))
    parsed: dict[str, object] = json.loads(out)
    return parsed


def test_render_config_json_sends_downloads_through_cachesrv() -> None:
    rendered = render_config(DL, extra={"api": "https://crates.io", "auth-required": False})
    assert rendered == {
        "dl": SERVED + "files/https/static.crates.io/crates/{crate}/{version}/download",
        "auth-required": False,  # other keys kept; api dropped: no publishing through us
    }
    assert render_config(MARKER_DL)["dl"] == (
        SERVED + "files/https/dl.test:8080/m/{prefix}/{lowerprefix}/{crate}-{version}.crate"
        "?sum={sha256-checksum}"
    )
    seeded = "http://cache:3142/@build/crates/"
    assert str(render_config(DL, seeded)["dl"]).startswith(seeded + "files/https/")


def test_render_config_json_proxy_form_is_unchanged() -> None:
    body = config_body(DL, api="https://crates.io")
    doc = Doc(CONFIG_KEY, CONFIG_KEY, "config")
    assert DOCS.render(CRATES, doc, body, View(None, "")) == body


def test_render_index_online_is_unchanged() -> None:
    body = line("leaf", "0.1.0") + b"\n" + line("leaf", "0.2.0") + b"\n"
    view = View(SERVED, "../../", stored=None, companions=companions())
    assert DOCS.render(CRATES, index_doc("le/af/leaf"), body, view) == body


def test_render_index_offline_keeps_only_stored_versions() -> None:
    lines = [line("leaf", v) for v in ("0.1.0", "0.2.0", "0.2.1")]
    # Lines are kept byte for byte (key order, spacing) as the upstream sent them.
    lines[1] = b'{"vers": "0.2.0",  "name":"leaf", "cksum": "%s", "deps": []}' % (
        sha("leaf0.2.0").encode()
    )
    body = b"\n".join(lines) + b"\n"
    doc = index_doc("le/af/leaf")
    stored = frozenset({f"{DL}/leaf/0.2.0/download", f"{DL}/other/1.0.0/download"})
    view = View(SERVED, "../../", stored=stored, companions=companions())
    assert DOCS.render(CRATES, doc, body, view) == lines[1] + b"\n"
    nothing = View(SERVED, "../../", stored=frozenset(), companions=companions())
    assert DOCS.render(CRATES, doc, body, nothing) == b""


def test_render_index_offline_with_markers() -> None:
    body = line("MixedCase", "0.1.0", "cd" * 32) + b"\n"
    key = "https://dl.test:8080/m/Mi/xe/mi/xe/MixedCase-0.1.0.crate?sum=" + "cd" * 32
    view = View(SERVED, "", stored=frozenset({key}), companions=companions(MARKER_DL))
    assert DOCS.render(CRATES, index_doc("mi/xe/mixedcase"), body, view) == body


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"not json\n", "line 2 is not JSON"),
        (b'["leaf"]\n', "not a JSON object"),
        (b'{"vers": "1.0.0", "cksum": "' + b"a" * 64 + b'"}', "lacks a string 'name'"),
        (b'{"name": "leaf", "vers": 1, "cksum": "' + b"a" * 64 + b'"}', "lacks a string"),
        (b'{"name": "leaf", "vers": "1.0.0"}', "'cksum' is not a sha256"),
        (b'{"name": "leaf", "vers": "1.0.0", "cksum": "abc"}', "'cksum' is not a sha256"),
    ],
)
def test_malformed_index_lines(body: bytes, match: str) -> None:
    doc = index_doc("le/af/leaf")
    good = line("leaf", "0.1.0") + b"\n"
    with pytest.raises(ValueError, match=match):
        DOCS.files(CRATES, doc, good + body, companions())
    view = View(SERVED, "", stored=frozenset(), companions=companions())
    with pytest.raises(ValueError, match=match):
        DOCS.render(CRATES, doc, good + body, view)


@pytest.mark.parametrize(
    "config",
    [
        b"not json",
        b"[]",
        b"{}",
        b'{"dl": 5}',
        b'{"dl": "file:///srv/crates"}',
        b'{"dl": "/crates"}',
        b'{"dl": "https:///crates"}',
    ],
)
def test_malformed_config_json(config: bytes) -> None:
    with pytest.raises(ValueError):
        DOCS.render(CRATES, Doc(CONFIG_KEY, CONFIG_KEY, "config"), config, View(SERVED, ""))
    with pytest.raises(ValueError):
        DOCS.files(CRATES, index_doc("le/af/leaf"), line("leaf", "0.1.0"), {CONFIG_KEY: config})


def test_index_file_without_a_recorded_config_json() -> None:
    """Offline, an index file whose registry config.json was never recorded cannot be
    filtered: a clear error (the decorator answers 502) rather than a guess."""
    doc = index_doc("le/af/leaf")
    with pytest.raises(ValueError, match="config.json is not recorded"):
        DOCS.files(CRATES, doc, line("leaf", "0.1.0"), {})
