"""What upstreams (and clients) send is parsed without surprises: the index documents
of every kind (`Documents.files` and `render`, cachesrv/upstreams/kind.py), PyPI pages,
npm packuments, Go version lists, Cargo index files and `config.json`, and the snap
store's refresh requests and answers.

The contract (kind.py): a document that cannot be read raises ValueError (which
includes UnicodeError and json.JSONDecodeError), which the server answers as an
upstream error; a client's snap refresh request that cannot be read raises BadRequest.
Never TypeError, AttributeError, KeyError, IndexError or RecursionError: those are a
500 for whoever asked. Inputs: any bytes, any JSON (`recursive`), valid documents with
parts replaced by any JSON, and JSON nested deeper than Python's recursion limit.
"""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Callable
from typing import Any, TypeVar

from hypothesis import example, given, settings
from hypothesis import strategies as st

from cachesrv.config import UpstreamConfig
from cachesrv.errors import BadRequest
from cachesrv.upstreams import cargo, goproxy, npm, pypi, snap, snapasserts
from cachesrv.upstreams.kind import Doc, NothingStored, View

T = TypeVar("T")

PYPI = UpstreamConfig(
    "pypi", "pypi", "https://pypi.example/simple", file_hosts=("files.pythonhosted.example",)
)
NPM = UpstreamConfig(
    "npm", "npm", "https://registry.npm.example", file_hosts=("*.npm-cdn.example",)
)
GO = UpstreamConfig("go", "goproxy", "https://proxy.go.example")
CRATES = UpstreamConfig(
    "crates", "cargo", "https://index.crates.example", file_hosts=("static.crates.example",)
)
SNAP = UpstreamConfig(
    "snap", "snap", "https://api.snapcraft.example", file_hosts=("*.cdn.snapcraft.example",)
)
SHA256 = "ab" * 32
#: Parsing is cheap: twice the profile's budget.
EXAMPLES = settings().max_examples * 2


def value_error_or(call: Callable[[], T]) -> T | None:
    """The result of `call`, or None if it raised ValueError (the contract)."""
    try:
        return call()
    except ValueError:
        return None


# -- documents ---------------------------------------------------------------------

#: Keys the parsers look for, so that random objects often have the expected shape.
KEYS = (
    *("files", "url", "hashes", "sha256", "filename", "core-metadata", "versions"),
    *("dist-info-metadata", "data-dist-info-metadata", "name", "dist", "tarball"),
    *("integrity", "shasum", "dist-tags", "latest", "time", "unpublished", "Version"),
    *("Time", "dl", "api", "vers", "cksum", "snap", "channel-map", "download", "deltas"),
    *("sha3-384", "actions", "context", "instance-key", "snap-id", "action", "revision"),
    *("channel", "key", "results", "error-list", "assertion-stream-urls", "1.0.0"),
)
TEXTS = (
    *("https://files.pythonhosted.example/packages/x-1.0.tar.gz#sha256=" + SHA256, "../x"),
    *("https://registry.npm.example/x/-/x-1.0.0.tgz", "sha256=" + SHA256, "sha512-AAAA"),
    *("v1.2.3", "1.0.0", "v0.0.0-20240102030405-abcdefabcdef", "", "%", "http://[", "//x"),
    *("https://static.crates.example/{crate}/{version}", "{prefix}", "latest", "download"),
    *("refresh", "install", "fetch-assertions", "\ud800", "https://x.cdn.snapcraft.example/a"),
)
json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.sampled_from(TEXTS),
    st.text(max_size=10),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=12,
)


def _replace(draw: st.DrawFn, value: Any) -> Any:
    """`value` with one part (perhaps itself) replaced by any JSON."""
    if isinstance(value, dict) and value and draw(st.integers(0, 3)):
        key = draw(st.sampled_from(sorted(value)))
        value[key] = _replace(draw, value[key])
        return value
    if isinstance(value, list) and value and draw(st.integers(0, 3)):
        i = draw(st.integers(0, len(value) - 1))
        value[i] = _replace(draw, value[i])
        return value
    return draw(json_value)


def altered(valid: Any) -> st.SearchStrategy[Any]:
    """A valid document with one to three parts replaced by any JSON."""

    @st.composite
    def make(draw: st.DrawFn) -> Any:
        doc = copy.deepcopy(valid)
        for _ in range(draw(st.integers(1, 3))):
            doc = _replace(draw, doc)
        return doc

    return make()


def deep(n: int) -> bytes:
    """JSON nested `n` deep: json.loads raises RecursionError beyond Python's limit."""
    return b'{"a":' * n + b"[" * n + b"]" * n + b"}" * n


DEEP = deep(2000)


def documents(valid: Any) -> st.SearchStrategy[bytes]:
    """Bodies: any bytes, any JSON, the valid document as it is or altered, deep JSON."""
    return st.one_of(
        st.binary(max_size=300),
        json_value.map(lambda v: json.dumps(v).encode()),
        st.just(json.dumps(valid).encode()),
        altered(valid).map(lambda v: json.dumps(v).encode()),
        st.sampled_from((deep(5), DEEP)),
    )


def stored_keys(refs: list[str]) -> st.SearchStrategy[frozenset[str] | None]:
    """Online (None), or offline with some of the document's files stored."""
    return st.none() | st.sets(st.sampled_from(refs or ["-"])).map(frozenset)


# -- PyPI -------------------------------------------------------------------------------

PAGE = "https://pypi.example/simple/foo/"
PYPI_JSON = {
    "meta": {"api-version": "1.0"},
    "name": "foo",
    "files": [
        {
            "filename": "foo-1.0-py3-none-any.whl",
            "url": "https://files.pythonhosted.example/packages/foo-1.0-py3-none-any.whl",
            "hashes": {"sha256": SHA256},
            "core-metadata": {"sha256": SHA256},
        },
        {"filename": "foo-1.0.tar.gz", "url": "../../files/foo-1.0.tar.gz", "hashes": {}},
    ],
    "versions": ["1.0"],
}
#: Pieces of simple-index HTML: anchors in their spellings, and text around them.
HTML_PIECES = (
    f'<a href="https://files.pythonhosted.example/packages/foo-1.0.tar.gz#sha256={SHA256}">x</a>',
    f"<a href='../../files/foo-1.0-py3-none-any.whl#sha256={SHA256}' "
    f'data-core-metadata="sha256={SHA256}">foo</a><br/>\n',
    '<a data-dist-info-metadata="true" href="foo-2.0.zip">foo-2.0.zip</a>',
    '<A HREF="https://elsewhere.example/x.whl" data-requires-python="&gt;=3">y</A>',
    '<a href="#sha256=">',
    "<a>no href</a>",
    '<a href="x">',
    "</a>",
    "<br>",
    "\n",
    '<a href="http://[::1/x">bad</a>',
    "<html><body>",
    "&amp;",
    '<a href="&#x2F;x">z</a>',
)
html_page = st.lists(st.sampled_from(HTML_PIECES) | st.text(max_size=10), max_size=8).map(
    lambda parts: "".join(parts).encode()
)


@settings(max_examples=EXAMPLES)
@given(
    body=st.one_of(html_page, documents(PYPI_JSON)),
    is_json=st.booleans(),
    url=st.sampled_from((PAGE, "https://pypi.example/simple/", "https://pypi.example/x")),
    stored=stored_keys(
        [
            "https://files.pythonhosted.example/packages/foo-1.0-py3-none-any.whl",
            "https://files.pythonhosted.example/packages/foo-1.0-py3-none-any.whl.metadata",
        ]
    ),
)
@example(body=b'{"files": [], "versions": null}', is_json=True, url=PAGE, stored=frozenset())
@example(body=b'{"files": [], "versions": [1, "a"]}', is_json=True, url=PAGE, stored=frozenset())
@example(body=DEEP, is_json=True, url=PAGE, stored=None)
def test_pypi_pages_read_or_raise_value_error(
    body: bytes, is_json: bool, url: str, stored: frozenset[str] | None
) -> None:
    """A PyPI page (HTML or PEP 691 JSON), whatever its bytes, is parsed, listed
    (`files`) and rendered online and offline, or raises ValueError."""
    doc = _page_doc(url, is_json)
    value_error_or(lambda: pypi.parse_page(body, url, is_json))
    value_error_or(lambda: pypi.documents.files(PYPI, doc, body, {}))
    view = View(served="http://cache:3142/pypi/", up="../../", stored=stored)
    out = value_error_or(lambda: pypi.documents.render(PYPI, doc, body, view))
    assert out is None or isinstance(out, bytes)


@settings(max_examples=EXAMPLES)
@given(body=st.one_of(html_page, documents(PYPI_JSON)), is_json=st.booleans())
def test_pypi_pages_rendered_online_keep_every_link(body: bytes, is_json: bool) -> None:
    """A project page rendered online (`stored=None`: nothing dropped) lists as many
    file links as the page it was made from, each declaring the same file name, hash
    and metadata: rewriting a link never loses, invents or changes one."""
    doc = _page_doc(PAGE, is_json)
    before = value_error_or(lambda: pypi.parse_page(body, PAGE, is_json))
    if before is None:  # unreadable (not JSON, a link that is no URL): nothing to keep
        return
    view = View(served="http://cache:3142/pypi/", up="../../", stored=None)
    rendered = pypi.documents.render(PYPI, doc, body, view)
    after = pypi.parse_page(rendered, PAGE, is_json)
    assert [_declares(link) for link in after] == [_declares(link) for link in before]


def _page_doc(url: str, is_json: bool) -> Doc:
    """The HTML or JSON format of the page at `url`, as `formats` makes them."""
    key = url + (pypi.JSON_QUERY if is_json else "")
    return Doc(url=url, key=key, format="json" if is_json else "html")


def _declares(link: pypi.FileLink) -> tuple[object, ...]:
    return link.filename, link.sha256, link.metadata_sha256, link.has_metadata


@settings(max_examples=EXAMPLES)
@given(accept=st.text(max_size=40) | st.sampled_from((pypi.JSON_V1 + ";q=nan", "*/*;q=1e999")))
def test_accept_headers_never_fail(accept: str) -> None:
    """Content negotiation on any Accept header answers (PyPI's and npm's formats)."""
    pypi.wants_json(accept)
    npm.prefers_abbreviated(accept)
    assert pypi.documents.formats(PYPI, PAGE, accept)
    assert npm.documents.formats(NPM, "https://registry.npm.example/foo", accept)


# -- npm -----------------------------------------------------------------------------------

TARBALL = "https://registry.npm.example/foo/-/foo-1.0.0.tgz"
NPM_DOC = {
    "name": "foo",
    "dist-tags": {"latest": "1.0.0", "next": "2.0.0-rc.1"},
    "versions": {
        "1.0.0": {
            "name": "foo",
            "version": "1.0.0",
            "dist": {
                "tarball": TARBALL,
                "integrity": "sha512-" + base64.b64encode(bytes(64)).decode(),
                "shasum": "a" * 40,
            },
        },
        "2.0.0-rc.1": {
            "name": "foo",
            "version": "2.0.0-rc.1",
            "dist": {"tarball": "https://b.npm-cdn.example/foo-2.0.0-rc.1.tgz"},
        },
    },
    "time": {"1.0.0": "2020-01-01T00:00:00Z", "2.0.0-rc.1": "2021-01-01T00:00:00Z"},
}


@settings(max_examples=EXAMPLES)
@given(
    body=documents(NPM_DOC) | st.just(b'{"time": {"unpublished": {}}}'),
    abbreviated=st.booleans(),
    served=st.sampled_from((None, "http://cache:3142/npm/")),
    stored=stored_keys([TARBALL, "https://b.npm-cdn.example/foo-2.0.0-rc.1.tgz"]),
)
@example(body=DEEP, abbreviated=False, served=None, stored=None)
def test_npm_packuments_read_or_raise_value_error(
    body: bytes, abbreviated: bool, served: str | None, stored: frozenset[str] | None
) -> None:
    """A packument, whatever its bytes, is listed and rendered (online, offline, in
    proxy form) or raises ValueError."""
    full, corgi = npm.documents.formats(NPM, "https://registry.npm.example/foo", None)
    doc = corgi if abbreviated else full
    value_error_or(lambda: npm.documents.files(NPM, doc, body, {}))
    view = View(served=served, up="../", stored=stored)
    value_error_or(lambda: npm.documents.render(NPM, doc, body, view))


@settings(max_examples=EXAMPLES)
@given(version=st.text(max_size=20) | st.sampled_from(("1.0.0-rc.1", "v1.2.3+build", "01.0.0")))
def test_versions_sort_without_failing(version: str) -> None:
    """Any version string has a sort key in npm's and Go's orders (Go's: None if it is
    not a canonical version), and the newest of a list is one of it."""
    npm.semver_key(version)
    goproxy.semver_key(version)
    assert npm.newest([version, "1.0.0"]) in (version, "1.0.0")
    assert goproxy.newest([version, "v1.0.0"]) in (version, "v1.0.0")
    goproxy.unescape(version)
    goproxy.artifact_kind(f"example.com/m/@v/{version}.zip")


# -- Go -------------------------------------------------------------------------------------

GO_MODULE = "https://proxy.go.example/example.com/m"
GO_LIST = b"v1.0.0\nv1.2.3 2020-01-01T00:00:00Z\nv2.0.0-rc.1\n\n"
GO_LATEST = {"Version": "v1.2.3", "Time": "2020-01-01T00:00:00Z"}


@settings(max_examples=EXAMPLES)
@given(
    body=st.one_of(
        st.just(GO_LIST),
        st.lists(
            st.sampled_from(("v1.0.0", "v1.2.3 x", "", "v9", "\xff")) | st.text(max_size=8)
        ).map(lambda lines: "\n".join(lines).encode("utf-8", "surrogatepass")),
        documents(GO_LATEST),
        st.none(),
    ),
    what=st.sampled_from(("@v/list", "@latest", "sumdb/sum.golang.org/supported")),
    stored=stored_keys([f"{GO_MODULE}/@v/v1.0.0.zip", f"{GO_MODULE}/@v/v2.0.0-rc.1.zip"]),
)
@example(body=DEEP, what="@latest", stored=None)
def test_go_documents_read_or_raise_value_error(
    body: bytes | None, what: str, stored: frozenset[str] | None
) -> None:
    """A version list, an `@latest` or `supported`, whatever its bytes (or unrecorded),
    is rendered online and offline, or raises ValueError; or, with nothing recorded
    and nothing stored to make it from, NothingStored (a miss)."""
    url = f"https://proxy.go.example/{what}" if what.startswith("sumdb") else f"{GO_MODULE}/{what}"
    [doc] = goproxy.documents.formats(GO, url, None)
    assert goproxy.documents.files(GO, doc, body or b"", {}) == []
    try:
        value_error_or(lambda: goproxy.documents.render(GO, doc, body, View(None, "", stored)))
    except NothingStored:
        assert body is None


# -- Cargo ---------------------------------------------------------------------------------

CONFIG = {"dl": "https://static.crates.example/crates", "api": "https://crates.example"}
INDEX_LINE = {"name": "foo", "vers": "1.0.0", "deps": [], "cksum": SHA256, "yanked": False}


@settings(max_examples=EXAMPLES)
@given(
    config=documents(CONFIG)
    | st.sampled_from(CONFIG_SPELLINGS := ("{crate}/{version}", "https://x/{prefix}/{crate}")).map(
        lambda dl: json.dumps({"dl": "https://static.crates.example/" + dl}).encode()
    ),
    index=st.one_of(
        documents(INDEX_LINE),
        st.lists(
            altered(INDEX_LINE).map(json.dumps) | st.just(json.dumps(INDEX_LINE)), max_size=3
        ).map(lambda lines: "\n".join(lines).encode()),
    ),
    served=st.sampled_from((None, "http://cache:3142/crates/")),
    stored=stored_keys(["https://static.crates.example/crates/foo/1.0.0/download"]),
)
@example(config=DEEP, index=DEEP, served=None, stored=None)
def test_cargo_documents_read_or_raise_value_error(
    config: bytes, index: bytes, served: str | None, stored: frozenset[str] | None
) -> None:
    """`config.json` and an index file, whatever their bytes, are listed and rendered
    (the index file with that config as its companion), or raise ValueError."""
    [config_doc] = cargo.documents.formats(CRATES, "https://index.crates.example/config.json", None)
    [index_doc] = cargo.documents.formats(CRATES, "https://index.crates.example/3/f/foo", None)
    companions = {"https://index.crates.example/config.json": config}
    view = View(served=served, up="../../", stored=stored, companions=companions)
    value_error_or(lambda: cargo.documents.render(CRATES, config_doc, config, view))
    value_error_or(lambda: cargo.documents.files(CRATES, index_doc, index, companions))
    value_error_or(lambda: cargo.documents.render(CRATES, index_doc, index, view))


# -- the snap store ------------------------------------------------------------------------

DOWNLOAD = {
    "url": "https://x.cdn.snapcraft.example/download/hello_1.snap",
    "sha3-384": "ab" * 48,
    "size": 10,
    "deltas": [{"url": "https://x.cdn.snapcraft.example/d/1_2.delta", "sha3-384": "cd" * 48}],
}
REFRESH = {
    "context": [{"instance-key": "k", "snap-id": "id", "revision": 1}],
    "actions": [
        {"action": "download", "instance-key": "download-1", "name": "hello", "channel": "stable"},
        {"action": "refresh", "instance-key": "k", "snap-id": "id"},
        {"action": "fetch-assertions", "key": "g"},
    ],
    "fields": ["download"],
}
INFO = {
    "name": "hello",
    "snap": {"download": DOWNLOAD},
    "channel-map": [{"channel": {"name": "stable"}, "download": DOWNLOAD}],
}
RESULT = {"result": "download", "instance-key": "download-1", "name": "hello", "snap": INFO["snap"]}
BASE = "http://cache:3142/snap"


@settings(max_examples=EXAMPLES)
@given(body=documents(REFRESH) | st.none())
@example(body=b'{"context": 1, "actions": []}')
@example(body=DEEP)
def test_snap_refresh_requests_parse_or_raise_bad_request(body: bytes | None) -> None:
    """A refresh request body from a client, whatever its bytes, is parsed into actions
    that each name a snap, or refused with BadRequest (a 400, not a 500)."""
    try:
        parsed = snap.parse_refresh(body)
    except BadRequest:
        return
    for action in parsed.actions:
        assert action.name or action.snap_id
        assert action.action in ("download", "install", "refresh")
        snap.action_key(SNAP, action, "amd64", "16")


@settings(max_examples=EXAMPLES)
@given(
    info=documents(INFO),
    result=documents(RESULT),
    answer=altered(RESULT) | json_value,
)
@example(info=b'{"channel-map": true}', result=b"null", answer={"channel-map": True})
@example(info=DEEP, result=DEEP, answer={"snap": {"download": {"deltas": 1}}})
def test_snap_store_answers_read_or_raise_value_error(
    info: bytes, result: bytes, answer: Any
) -> None:
    """The store's answers, whatever their bytes (an info answer, a recorded action
    result) or shape (a result in a refresh answer), are rewritten and their declared
    hashes read, or raise ValueError."""
    value_error_or(lambda: snap.render_info(info, SNAP, BASE))
    value_error_or(lambda: snap.render_result(result, "download-1", SNAP, BASE))
    if isinstance(answer, dict):
        snap.declared_hashes(answer, SNAP)
        snap.rewrite_downloads(answer, SNAP, BASE)
        snap.rewrite_stream_urls(answer, SNAP, BASE)


@settings(max_examples=EXAMPLES)
@given(
    url=st.text(max_size=30).map("https://assertions.example/v2/assertions/x?".__add__),
    text=st.binary(max_size=100) | st.text(max_size=40).map(str.encode),
)
@example(
    url="https://assertions.example/v2/assertions/x?max-format=\u00b2", text=b"format: \xc2\xb2\n"
)
def test_snap_assertion_formats_are_numbers(url: str, text: bytes) -> None:
    """The `max-format` a client asks (its URL) and the `format` an assertion declares
    (its headers) are read as numbers, 0 when there is none: never an exception."""
    assert snapasserts.max_format(url) >= 0
    assert snapasserts.assertion_format(text) >= 0
