"""Range requests on a recorded body, against a model of RFC 9110 (sections 13.1.5, 14).

cachesrv parses no Range header itself: a hit with `Range` (or any conditional) is
served by `BlobResponse` (cachesrv/web/sendfile.py), aiohttp's FileResponse with another
transfer. So the property is checked on the served answers, through the app and
aiohttp's test client, for one recorded body and an empty one.
"""

from __future__ import annotations

import dataclasses
import email.utils
import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cachesrv.config import Config
from cachesrv.web import make_app
from tests.fakes.upstream import FakeUpstream

Client = TestClient[Any, Any]
MakeClient = Callable[..., Awaitable[Client]]

SIZE = 1000
#: Each example is an HTTP request (about 2 ms, in process): twice the profile's budget.
EXAMPLES = settings().max_examples * 2


@dataclass(frozen=True)
class Served:
    """A recorded body, its URL on cachesrv and the validators cachesrv sends for it."""

    client: Client = field(repr=False)
    url: str
    body: bytes = field(repr=False)
    etag: str
    last_modified: str


@pytest.fixture
async def served(
    aiohttp_client: MakeClient, load: Callable[..., Config], upstream: FakeUpstream
) -> dict[int, Served]:
    """A 1000-byte and an empty body, recorded through the app (one request each)."""
    client = await aiohttp_client(make_app(load({"files": ("generic", upstream.url)})))
    found = {}
    for size in (SIZE, 0):
        body = os.urandom(size)
        (upstream.root / f"blob-{size}.tar.gz").write_bytes(body)
        url = f"/files/blob-{size}.tar.gz"
        first = await client.get(url)
        assert first.status == 200 and await first.read() == body
        # Validators as the file path sends them (with a conditional, as with Range).
        again = await client.get(url, headers={"If-None-Match": '"other"'})
        assert again.headers["X-Cachesrv-Status"] == "hit"
        found[size] = Served(
            client, url, body, again.headers["ETag"], again.headers["Last-Modified"]
        )
    return found


# -- the model ------------------------------------------------------------------------

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_SPEC = re.compile(r"(?:([0-9]+)-([0-9]*)|-([0-9]+))")
_CANONICAL = re.compile(r"bytes=(?:[0-9]+-[0-9]*|-[0-9]+)", re.IGNORECASE)


@dataclass(frozen=True)
class Allowed:
    """What RFC 9110 lets a server answer: the whole body (200), this part of it (206,
    `part` = (first, last)), or 416."""

    whole: bool = False
    part: tuple[int, int] | None = None
    unsatisfiable: bool = False


def _spec(text: str, size: int) -> tuple[int, int] | None | bool:
    """One range-spec: (first, last) clipped to the body if satisfiable, None if not,
    False if it is not a range-spec."""
    m = _SPEC.fullmatch(text)
    if m is None:
        return False
    first, last, suffix = m.groups()
    if suffix is not None:
        n = int(suffix)
        return (max(0, size - n), size - 1) if n > 0 and size > 0 else None
    if last and int(last) < int(first):
        return False
    if int(first) >= size:
        return None
    return int(first), min(int(last), size - 1) if last else size - 1


def _validator_matches(if_range: str, served: Served) -> bool | None:
    """If-Range: True for the current strong ETag, None for the exact Last-Modified date
    (a date is weak unless the server knows better: it may or may not count), False
    for anything else."""
    if if_range == served.etag and not if_range.startswith("W/"):
        return True
    if if_range == served.last_modified:
        return None
    return False


def allowed(range_: str | None, if_range: str | None, served: Served) -> Allowed:
    """The answers RFC 9110 allows to `Range: range_` (and `If-Range: if_range`)."""
    size = len(served.body)
    if range_ is None:
        return Allowed(whole=True)  # and If-Range without Range is ignored
    value = range_.strip(" \t")
    unit, eq, spec = value.partition("=")
    if not eq or not _TOKEN.fullmatch(unit):
        return Allowed(whole=True, unsatisfiable=True)  # not a Range: ignore or reject
    if unit.lower() != "bytes":
        return Allowed(whole=True)  # 14.2: a unit it does not understand MUST be ignored
    match = _validator_matches(if_range, served) if if_range is not None else True
    if match is False:
        return Allowed(whole=True)  # 13.1.5: the Range MUST be ignored
    ranges = [_spec(e.strip(" \t"), size) for e in spec.split(",") if e.strip(" \t")]
    if not ranges or any(r is False for r in ranges):
        return Allowed(whole=True, unsatisfiable=True)  # invalid: ignore or reject
    satisfiable = [r for r in ranges if isinstance(r, tuple)]
    weak = match is None  # a date validator: processing the Range is optional
    if len(ranges) == 1 and _CANONICAL.fullmatch(value):
        # The forms clients send (`bytes=a-b`, `a-`, `-n`): answered as asked.
        if satisfiable:
            return Allowed(whole=weak, part=satisfiable[0])
        zero_suffix = spec.startswith("-")  # `-0`, or any suffix of an empty body
        return Allowed(whole=weak or zero_suffix, unsatisfiable=True)
    # Several ranges, or spaces: a server may ignore them, or answer one it can read.
    return Allowed(
        whole=True,
        part=satisfiable[0] if len(ranges) == 1 and satisfiable else None,
        unsatisfiable=not satisfiable,
    )


# -- headers --------------------------------------------------------------------------

number = st.one_of(
    st.integers(0, SIZE + 2),
    st.sampled_from((0, 1, SIZE - 1, SIZE, SIZE + 1, 2**63, 10**30)),
)
spec = st.one_of(
    st.builds("{}-{}".format, number, number),
    st.builds("{}-".format, number),
    st.builds("-{}".format, number),
)
unit = st.sampled_from(("bytes", "Bytes", "BYTES", "items", "byte", "none", "bytes ", ""))
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20)
range_header = st.one_of(
    st.none(),
    st.builds("bytes={}".format, spec),
    st.builds("{}={}".format, unit, spec),
    st.builds(
        "bytes={}".format,
        st.lists(spec, min_size=2, max_size=3).flatmap(
            lambda specs: st.sampled_from((",", ", ", " ,")).map(lambda sep: sep.join(specs))
        ),
    ),
    st.builds("{}{}{}".format, st.sampled_from(("", " ", "\t")), st.just("bytes="), spec),
    st.builds("bytes= {}".format, spec),
    st.builds("bytes={} ,".format, spec),
    header_text,
    st.builds("bytes={}".format, header_text),
)
#: If-Range: which validator (resolved against the served body), or text.
if_range = st.one_of(
    st.none(),
    st.sampled_from(("etag", "weak etag", "other etag", "date", "earlier", "later")),
    header_text.filter(lambda t: t.strip() != ""),
)


def validator(which: str | None, served: Served) -> str | None:
    if which is None:
        return None
    lm = email.utils.parsedate_to_datetime(served.last_modified).timestamp()
    return {
        "etag": served.etag,
        "weak etag": f"W/{served.etag}",
        "other etag": '"0-0"',
        "date": served.last_modified,
        "earlier": email.utils.formatdate(lm - 3600, usegmt=True),
        "later": email.utils.formatdate(lm + 3600, usegmt=True),
    }.get(which, which)


@settings(max_examples=EXAMPLES, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    size=st.sampled_from((SIZE, 0)),
    method=st.sampled_from(("GET", "HEAD")),
    range_=range_header,
    which=if_range,
)
@example(size=SIZE, method="GET", range_="items=0-1", which=None)
@example(size=SIZE, method="GET", range_="bytes=0-1,5-6", which=None)
@example(size=SIZE, method="GET", range_="bytes=0-1", which="other etag")
@example(size=SIZE, method="GET", range_="bytes=0-1", which="later")
async def test_range_answers_follow_rfc_9110(
    served: dict[int, Served], size: int, method: str, range_: str | None, which: str | None
) -> None:
    """A hit with any Range (and If-Range) header is answered as RFC 9110 allows: a 206
    carries exactly the bytes its Content-Range names, which are the range asked; a
    416 says `bytes */<size>` and comes only for a range that cannot be served (or is
    not a range); a 200 carries the whole body, and is what a Range of another unit, or
    one whose If-Range validator is not the current one, gets. `bytes=a-b`, `a-` and
    `-n` are served (206, or 416 when beyond the end). Nothing else (no 5xx). (A HEAD
    may also ignore the Range: 14.2 defines it for GET only.)"""
    s = served[size]
    headers = {}
    if range_ is not None:
        headers["Range"] = range_
    if_range_value = validator(which, s)
    if if_range_value is not None:
        headers["If-Range"] = if_range_value
    ok = allowed(range_, if_range_value, s)
    if method == "HEAD":  # Range is defined for GET only (14.2): HEAD may ignore it
        ok = dataclasses.replace(ok, whole=True)
    r = await s.client.request(method, s.url, headers=headers)
    body = await r.read()
    what = f"{r.status} for Range {range_!r}, If-Range {if_range_value!r} ({size} bytes)"
    # A HEAD may leave Content-Length out (RFC 9110 8.6), not get it wrong.
    length = r.headers.get("Content-Length", "-1" if method == "HEAD" else None)
    if r.status == 200:
        assert ok.whole, what
        assert length in (str(size), "-1"), what
        assert method == "HEAD" or body == s.body, what
    elif r.status == 206:
        assert ok.part is not None, what
        first, last = ok.part
        assert r.headers["Content-Range"] == f"bytes {first}-{last}/{size}", what
        assert length in (str(last + 1 - first), "-1"), what
        assert method == "HEAD" or body == s.body[first : last + 1], what
    else:
        assert r.status == 416 and ok.unsatisfiable, what
        assert r.headers["Content-Range"] == f"bytes */{size}", what
