"""Properties of `Router.resolve` (cachesrv/upstreams/router.py): whatever the request
target, a route stays inside what the config allows, and one key names one resource.

The targets are built from pieces that matter to a router (traversal in every
spelling, encoded slashes, backslashes and NULs, escapes of delimiters, hosts that
look like an allowed one, unicode, controls, very long paths) in every form a client
uses: `/NAME/path`, `/@seed/NAME/path`, `/NAME/files/<scheme>/<host>/<path>`, absolute
`http(s)://host/path`, and apt-cacher-ng's `/HTTPS///host/path`.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, unquote_to_bytes

from hypothesis import example, given, settings
from hypothesis import strategies as st
from yarl import URL

from cachesrv.config import TlsConfig, UpstreamConfig
from cachesrv.errors import BadRequest, Forbidden
from cachesrv.upstreams.router import INTERCEPT, Route, Router

# One upstream of every kind (two nested generic ones, one with a port, one whose path
# has capitals), file hosts as names and as shell patterns.
UPSTREAMS = {
    u.name: u
    for u in (
        UpstreamConfig("debian", "apt", "http://deb.example/debian"),
        UpstreamConfig(
            "pypi",
            "pypi",
            "https://pypi.example/simple",
            file_hosts=("files.pythonhosted.example", "*.pypi-mirror.example"),
        ),
        UpstreamConfig(
            "snap",
            "snap",
            "https://api.snapcraft.example",
            file_hosts=("*.cdn.snapcraft.example",),
            assertions_url="https://assertions.snapcraft.example",
        ),
        UpstreamConfig("files", "generic", "https://files.example/pub"),
        UpstreamConfig("deep", "generic", "https://files.example/pub/deep"),
        UpstreamConfig("mixed", "generic", "https://mixed.example/Linux/Repo"),
        UpstreamConfig("local", "generic", "http://127.0.0.1:8080/mirror"),
        UpstreamConfig(
            "npm", "npm", "https://registry.npm.example", file_hosts=("*.npm-cdn.example",)
        ),
        UpstreamConfig("go", "goproxy", "https://proxy.go.example"),
        UpstreamConfig(
            "crates",
            "cargo",
            "https://index.crates.example",
            file_hosts=("static.crates.example", "*.crates-cdn.example"),
        ),
    )
}
INTERCEPTED = ("*.intercept.example", "mirror.example:8443")
ROUTER = Router(UPSTREAMS, tls=TlsConfig(intercept=INTERCEPTED))
#: A private server of `cachesrv wrap`: any host is recorded.
ANY_HOST = Router(UPSTREAMS, tls=TlsConfig(any_host=True))
#: Resolving is cheap, and the space of targets large: five times the profile's budget
#: (three for `test_one_key_names_one_resource`, whose examples hold up to 18 targets).
EXAMPLES = settings().max_examples * 5

# -- targets --------------------------------------------------------------------------

SEGMENTS = (
    *("..", ".", "%2e", "%2E", "%2e%2E", ".%2e", "%2e.", "...", "%252e%252e", "%252e"),
    *("%2f", "%2F", "a%2fb", "%252f", "%00", "a%00b", "%5c", "%5C", "\\", "%"),
    *("%25", "%zz", "%2", "%41", "A", "%3F", "%3f", "%23", "#", "?", "%26", "&"),
    *("%3D", "=", "%2B", "+", "%3B", ";", "%3A", ":", "%40", "@", "%7E", "~"),
    *("Foo_Bar", "foo-bar", "foo.bar", "FOO", "foo", "é", "%C3%A9", "%c3%a9", "\u212a"),
    *("\x00", "\t", " ", "\n", "\x7f", "\x85", "\u2028", "a" * 300),
    *("a", "ab", "abc", "serde", "se", "rd", "3", "1", "2", "-", "x.tgz", "x-1.0.tgz"),
    *("pool", "simple", "files", "http", "https", "HTTPS", "config.json", "deep"),
    *("v2", "assertions", "snaps", "info", "refresh", "@scope", "@scope%2Fname"),
    *("@v", "list", "@latest", "sumdb", "Linux", "Repo", "repo", "pub", "debian"),
)
#: Hosts of the config, as written and in other spellings of the same host.
HOSTS = (
    *("deb.example", "DEB.example", "deb.example:80", "pypi.example", "pypi.example:443"),
    *("api.snapcraft.example", "assertions.snapcraft.example", "files.example"),
    *("mixed.example", "127.0.0.1:8080", "registry.npm.example", "proxy.go.example"),
    *("index.crates.example", "files.pythonhosted.example", "a.pypi-mirror.example"),
    *("x.cdn.snapcraft.example", "X.CDN.snapcraft.example", "b.npm-cdn.example"),
    *("static.crates.example", "c.crates-cdn.example", "www.intercept.example"),
    *("mirror.example:8443", "mirror.example", "evil.example", "127.0.0.1", "[::1]"),
    *("localhost", "HTTPS", "x.cdn.snapcraft.example:99999", "%65vil.example", ""),
)
#: Where the upstreams' paths start (absolute form).
BASE_PATHS = ("debian", "simple", "pub", "pub/deep", "Linux/Repo", "linux/repo", "mirror", "")
#: First segments that take a kind's special routes.
HINTS = (
    *("", "simple/", "simple", "files/https/", "files/http/", "v2/assertions/"),
    *("v2/snaps/info/", "@scope/", "@scope%2F", "@scope%2f", "3/a/", "se/rd/", "-/"),
    *("pool/main/", "deep/", "sumdb/sum.golang.org/", "config.json"),
)

segment = st.one_of(
    st.sampled_from(SEGMENTS),
    st.text(max_size=6),
    st.text(alphabet="abcAF.-_%2eE5f/@:", max_size=8),
)
path = st.one_of(
    st.sampled_from(("x.tgz", "a/b-1.0.snap", "pool/main/x.deb", "foo/", "")),
    st.lists(segment, max_size=5).map("/".join),
)
query_field = st.sampled_from(("a=1", "b", "x=%26y", "&", "=", "%3D", "+", "%2B", ";", "%3B"))
query = st.one_of(
    st.just(""),
    st.lists(query_field | segment, max_size=3).map("&".join).map("?".__add__),
)
scheme = st.sampled_from(("http", "https", "HTTP", "Https"))
seed = st.sampled_from(("", "", "", "@build-1/", "@x/", "@/", "@../", "@a b/"))
name = st.sampled_from((*UPSTREAMS, "DEBIAN", "nope", INTERCEPT, "", "@x", "HTTPS", "http:"))
upstream = st.sampled_from(list(UPSTREAMS.values()))
#: Upstreams whose kind serves `/NAME/files/<scheme>/<host>/<path>`.
with_files = st.sampled_from([u for u in UPSTREAMS.values() if u.file_hosts])
#: What may stand for the `*` of a pattern: a label, or a host and something that ends
#: it (`#`, `?`, `@`, `/`, `:`, `]`, escaped or not) so the name only looks matched.
wildcard = st.one_of(
    st.sampled_from(("x", "a.b", "", "X-1")),
    st.builds(
        "".join,
        st.tuples(
            st.sampled_from(("evil.example", "127.0.0.1", "x", "")),
            st.sampled_from(("#", "?", "%23", "%3F", "%3f", "@", "%40", "%2F", "/", ":", "]")),
            st.sampled_from(("x", "", ":1")),
        ),
    ),
)


@st.composite
def matching_host(draw: st.DrawFn, patterns: tuple[str, ...]) -> str:
    """A name that a pattern of `patterns` matches (fnmatch), perhaps not as a host."""
    pattern = draw(st.sampled_from(patterns))
    return pattern.replace("*", draw(wildcard))


@st.composite
def own_host(draw: st.DrawFn, up: UpstreamConfig) -> str:
    """An upstream's host in one of its spellings: case, explicit default port."""
    netloc = up.base.partition("://")[2].partition("/")[0]
    netloc = "".join(c.upper() if draw(st.booleans()) else c for c in netloc)
    if ":" not in netloc and draw(st.booleans()):
        netloc += draw(st.sampled_from((":443", ":80")))
    return netloc


@st.composite
def any_host(draw: st.DrawFn) -> str:
    """A host of the config in any spelling, one that only looks like one, or text."""
    which = draw(st.integers(0, 4))
    if which == 0:
        return draw(own_host(draw(upstream)))
    if which == 1:
        return draw(
            matching_host((*INTERCEPTED, *(h for u in UPSTREAMS.values() for h in u.file_hosts)))
        )
    if which == 2:
        return draw(st.sampled_from(HOSTS))
    if which == 3:
        return draw(st.text(max_size=12))
    return draw(own_host(draw(upstream))) + draw(st.sampled_from((":99999", ":0", ":x", ":", "]")))


@st.composite
def targets(draw: st.DrawFn) -> str:
    """A request target in one of the forms clients send (or a hostile one)."""
    form = draw(st.sampled_from(("origin", "files", "absolute", "acng", "seeded", "text", "long")))
    rest = draw(st.sampled_from(HINTS)) + draw(path) + draw(query)
    if form == "origin":
        return f"/{draw(seed)}{draw(name)}/{rest}"
    if form == "files":
        up = draw(with_files)
        where = draw(st.one_of(matching_host(up.file_hosts), any_host()))
        return f"/{draw(seed)}{up.name}/files/{draw(scheme)}/{where}/{draw(path)}{draw(query)}"
    if form == "long":
        return f"/{draw(name)}/" + "a/" * draw(st.integers(1000, 3000))
    if form == "text":
        return draw(st.text())
    if draw(st.booleans()):  # under an upstream's URL, spelled another way
        up = draw(upstream)
        base_path = up.base.partition("://")[2].partition("/")[2]
        if draw(st.booleans()):
            base_path = base_path.lower()
        where = f"{draw(own_host(up))}/{base_path}/{rest}"
    else:
        where = f"{draw(any_host())}/{draw(st.sampled_from(BASE_PATHS))}/{rest}"
    if form == "absolute":
        return f"{draw(scheme)}://{where}"
    if form == "acng":
        return (
            draw(st.sampled_from(("/HTTPS///", "http://HTTPS///", "/HTTPS/", "/https///"))) + where
        )
    return f"/{draw(seed)}{draw(scheme)}://{where}"


@st.composite
def respelled(draw: st.DrawFn, text: str) -> str:
    """`text` with some ASCII characters percent-escaped (either case of hex digit) or
    their case changed: the same URL by some equivalences, another one by others."""
    out = []
    for ch in text:
        change = draw(st.integers(0, 7)) if ch.isascii() else 0
        if change == 1:
            escape = f"%{ord(ch):02x}"
            out.append(escape.upper() if draw(st.booleans()) else escape)
        elif change == 2:
            out.append(ch.swapcase())
        else:
            out.append(ch)
    return "".join(out)


@st.composite
def spellings(draw: st.DrawFn) -> list[str]:
    """One path under one upstream, in the forms clients send it."""
    up = draw(upstream)
    rest = draw(st.sampled_from(HINTS)) + draw(path) + draw(query)
    base_path = up.base.partition("://")[2].partition("/")[2]
    if draw(st.booleans()):
        base_path = base_path.lower()
    where = f"{draw(own_host(up))}/{base_path}/{rest}".replace("//", "/")
    return [
        f"/{draw(seed)}{up.name}/{rest}",
        f"{draw(scheme)}://{where}",
        f"/HTTPS///{where}",
        f"/{draw(seed)}{draw(scheme)}://{where}",
    ]


@st.composite
def related_targets(draw: st.DrawFn) -> list[str]:
    """A few targets, and respellings of them: often the same resource spelled
    another way, or another resource spelled alike."""
    many = draw(st.lists(targets(), max_size=2)) + draw(spellings())
    for target in list(many):
        many += draw(st.lists(respelled(target), max_size=2))
    return many


# -- what a key must be -----------------------------------------------------------------


def netloc_of(url: URL) -> str:
    """`host[:port]` as aiohttp connects to it (an IPv6 address in brackets)."""
    host = url.host_subcomponent or ""
    return f"{host}:{url.explicit_port}" if url.explicit_port is not None else host


def check_route(router: Router, route: Route) -> None:
    key = route.key.url
    up = route.upstream
    scheme, sep, rest = key.partition("://")
    assert sep and scheme in ("http", "https"), key
    # What aiohttp fetches for this key: it must parse, to the authority the key spells.
    fetched = URL(key)
    written = re.split(r"[/?#]", rest, maxsplit=1)[0].lower()
    assert netloc_of(fetched) == written, f"{key} reaches {netloc_of(fetched)}"
    if up.name == INTERCEPT:
        assert key.startswith(up.url + "/") and router.tls.intercepts(written), key
    else:
        under = [up.base + "/"]
        if up.assertions_url:
            under.append(up.assertions_url.rstrip("/") + "/")
        assert key.startswith(tuple(under)) or up.allows_host(written), key
    # No traversal in any spelling, in the key as fetched: "." or ".." segments.
    plain = rest.partition("/")[2].partition("?")[0]
    segments = unquote_to_bytes(plain).split(b"/")
    assert b".." not in segments and b"." not in segments, key


@settings(max_examples=EXAMPLES)
@given(router=st.sampled_from((ROUTER, ANY_HOST)), target=targets())
@example(ROUTER, "/snap/files/https/evil.example%23.cdn.snapcraft.example/x")
@example(ROUTER, "/snap/files/https/evil.example?.cdn.snapcraft.example/x")
@example(ROUTER, "/npm/files/https/evil.example%2F.npm-cdn.example/x.tgz")
@example(ROUTER, "https://evil.example:1.intercept.example/x")
@example(ROUTER, "/pypi/simple/%252e%252e%252f/")
def test_a_route_stays_inside_the_config(router: Router, target: str) -> None:
    """Any request target is refused with BadRequest or Forbidden, or routed to a key
    that aiohttp fetches from the host the key spells, a host the upstream allows
    (under its URL or assertions URL, a file host, or for an intercepted host that host
    itself), and whose decoded path has no `.` or `..` segment. No other exception."""
    try:
        route = router.resolve(target)
    except (BadRequest, Forbidden):
        return
    check_route(router, route)


# -- one key, one resource ------------------------------------------------------------------

_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
#: What RFC 3986 lets a path segment hold unescaped (but `%`).
_PCHAR = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@"
)
#: Characters that delimit a query's fields: an escape of one is another query.
_QUERY_DELIMITERS = "&=+;"


def _decode(text: str, keep: str = "") -> str:
    """Every escape decoded, except those of `keep`, which stay marked (distinct from
    the character itself)."""

    def one(m: re.Match[str]) -> str:
        ch = chr(int(m.group(1), 16))
        return "\ue000" + ch if ch in keep else ch

    return _ESCAPE.sub(one, text)


def _pchar(escape: str) -> str:
    """`%3A` -> `:`, a character a path may hold as it is; `%2F` stays `%2F`."""
    ch = chr(int(escape[1:], 16))
    return ch if ch in _PCHAR else escape


def _normalize(project: str) -> str:
    return re.sub(r"[-_.]+", "-", project).lower()


def _split_host(host: str, scheme: str) -> str:
    host = host.lower()
    default = {"http": ":80", "https": ":443"}[scheme]
    return host.removesuffix(default)


def named(target: str) -> tuple[str, str, str, str | None]:
    """The URL a target names, as (scheme, host, path, query), read as each spelling is
    documented (router.py, and the kind modules' docs for `/NAME/...`)."""
    lower = target[:8].lower()
    if lower.startswith(("http://", "https://")):
        scheme, rest = target.split("://", 1)
        host, _, tail = rest.partition("/")
        if host.upper() == "HTTPS":
            return _absolute("https", tail.lstrip("/"))
        return _absolute(scheme.lower(), rest)
    path = target[1:]
    if path.startswith("@"):
        path = path.partition("/")[2]
    head, _, rest = path.partition("/")
    if head.upper() == "HTTPS":
        return _absolute("https", rest.lstrip("/"))
    if head.lower() in ("http:", "https:"):
        return _absolute(head[:-1].lower(), rest.lstrip("/"))
    up = UPSTREAMS[head]
    plain, sep, q = rest.partition("?")
    query = q if sep else None
    # An escape of a character a path may hold is that character (`file%73/` is
    # `files/`); the others (`%2F`, `%3F`...) are read as data below.
    plain = _ESCAPE.sub(lambda m: _pchar(m.group(0)), plain)
    base_scheme, _, base = up.base.partition("://")
    base_host, _, base_path = base.partition("/")
    if up.kind in ("pypi", "snap", "npm", "cargo") and plain.startswith("files/"):
        file_scheme, file_host, file_path = plain[len("files/") :].split("/", 2)
        return file_scheme, unquote(file_host), "/" + file_path, query
    if up.kind == "pypi" and (plain == "simple" or plain.startswith("simple/")):
        project = plain[len("simple") :].strip("/")
        page = f"/{base_path}/{project}/" if project else f"/{base_path}/"
        return base_scheme, base_host, page, query
    if up.kind == "snap" and plain.startswith("v2/assertions/") and up.assertions_url:
        a_scheme, _, a_host = up.assertions_url.rstrip("/").partition("://")
        return a_scheme, a_host, "/" + plain, query
    return base_scheme, base_host, f"/{base_path}/{plain}".replace("//", "/", 1), query


def _absolute(scheme: str, rest: str) -> tuple[str, str, str, str | None]:
    m = re.match(r"[^/?#]*", rest)
    assert m is not None
    host, tail = m.group(0), rest[m.end() :]
    plain, sep, q = tail.partition("?")
    return scheme, host, plain or "/", q if sep else None


def resource(target: str) -> tuple[object, ...]:
    """The resource a target names, canonical by exactly the equivalences cachesrv
    documents: host case and default port; every percent-escape in a path (an
    escape of a path character is that character: `%3A` is `:`); in a query, every
    escape but those of its delimiters `& = + ;`; `http` and `https` of an upstream's
    own URL (not of a file host); the upstream's root with or without its slash, and
    extra slashes after it (which servers merge); a PyPI project name by PEP 503, with
    or without its slash; npm's `@scope%2Fname`."""
    scheme, host, path, query = named(target)
    host = _split_host(_decode(host), scheme)
    segments = [_decode(s) for s in path.split("/")[1:]]
    canonical_query = None if query is None else _decode(query, keep=_QUERY_DELIMITERS)
    best = None
    for up in UPSTREAMS.values():
        up_scheme, _, up_rest = up.base.partition("://")
        up_host, _, up_path = up_rest.partition("/")
        prefix = up_path.split("/") if up_path else []
        if _split_host(up_host, up_scheme) != host or segments[: len(prefix)] != prefix:
            continue
        if best is None or len(prefix) > len(best[1]):
            best = (up, prefix)
    if best is None:  # a file host or an intercepted one: its scheme counts
        return scheme, host, tuple(segments), canonical_query
    up, prefix = best
    rel = segments[len(prefix) :]
    while len(rel) > 1 and rel[0] == "":
        rel = rel[1:]  # `https://host/debian//x` is `/debian/x`: the router merges them
    rel = rel or [""]
    if up.kind == "pypi" and len(rel) == 2 and rel[1] == "":
        rel = [_normalize(rel[0]), ""]
    if up.kind == "npm" and rel[0].startswith("@") and "/" in rel[0]:
        rel = [*rel[0].split("/", 1), *rel[1:]]
    return None, host, tuple(prefix + rel), canonical_query


@settings(max_examples=EXAMPLES * 3 // 5)
@given(router=st.sampled_from((ROUTER, ANY_HOST)), many=related_targets())
@example(ROUTER, ["/pypi/simple/foo?x=1", "/pypi/simple/foo%3Fx=1"])
@example(ROUTER, ["/files/x?a=1%262=3", "/files/x?a=1&2=3"])
@example(ROUTER, ["/mixed/x", "https://mixed.example/linux/repo/x"])
def test_one_key_names_one_resource(router: Router, many: list[str]) -> None:
    """Two targets that get the same cache key name the same upstream resource: the
    same canonical URL (`resource`), where only the documented equivalences count
    (origin, absolute and apt-cacher-ng forms, seeds, http/https of an upstream, `%3A`
    and `:`, a PyPI name by PEP 503, npm's `@scope%2Fname`). So no request can read or
    record the body of another URL."""
    by_key: dict[str, tuple[str, tuple[object, ...]]] = {}
    for target in many:
        try:
            key = router.resolve(target).key.url
        except (BadRequest, Forbidden):
            continue
        mine = resource(target)
        first = by_key.setdefault(key, (target, mine))
        assert first[1] == mine, f"{first[0]!r} and {target!r} share the key {key}"
