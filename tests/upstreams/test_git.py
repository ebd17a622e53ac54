"""git smart HTTP rules (cachesrv.upstreams.git): endpoints, keys, pkt-line bodies."""

from __future__ import annotations

import hashlib

import pytest

from cachesrv.config import UpstreamConfig
from cachesrv.errors import BadRequest
from cachesrv.upstreams import git, upstream_request

REPO = "https://git.example.test/demo.git"
REFS_URL = f"{REPO}/info/refs?service=git-upload-pack"
PACK_URL = f"{REPO}/git-upload-pack"
OID = "0123456789abcdef0123456789abcdef01234567"
OTHER_OID = "89abcdef0123456789abcdef0123456789abcdef"


def pkt(payload: bytes | str) -> bytes:
    """One pkt-line: four hex digits of total length, then the payload."""
    data = payload.encode() if isinstance(payload, str) else payload
    return b"%04x" % (len(data) + 4) + data


FLUSH, DELIM = b"0000", b"0001"


def v2_fetch(agent: str = "git/2.39.5", session: str = "abc", want: str = OID) -> bytes:
    """A protocol v2 `fetch` as git sends it (capabilities, delim, arguments, flush)."""
    return (
        pkt("command=fetch\n")
        + pkt(f"agent={agent}\n")
        + pkt(f"session-id={session}\n")
        + pkt("object-format=sha1\n")
        + DELIM
        + pkt("thin-pack\n")
        + pkt("ofs-delta\n")
        + pkt(f"want {want}\n")
        + pkt("done\n")
        + FLUSH
    )


def v0_wants(caps: str, want: str = OID) -> bytes:
    """A v0 upload-pack request: capabilities ride on the first want line."""
    return pkt(f"want {want} {caps}\n") + pkt(f"want {OTHER_OID}\n") + FLUSH + pkt("done\n")


# -- endpoint ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("demo.git/info/refs?service=git-upload-pack", "refs"),
        ("info/refs?service=git-upload-pack", "refs"),
        ("a/b/demo.git/info/refs?service=git-receive-pack", "receive-pack"),
        ("demo.git/git-upload-pack", "upload-pack"),
        ("demo.git/git-receive-pack", "receive-pack"),
        # Dumb HTTP and anything else are plain files.
        ("demo.git/info/refs", None),
        ("demo.git/info/refs?service=git-upload-archive", None),
        ("demo.git/git-upload-pack?x=1", None),
        ("demo.git/objects/info/packs", None),
        ("releases/demo-1.0.tar.gz", None),
        ("demo.git/xinfo/refs?service=git-upload-pack", None),
    ],
)
def test_endpoint(path: str, expected: str | None) -> None:
    assert git.endpoint(path) == expected


@pytest.mark.parametrize("path", ["tools/my-git-upload-pack", "tools/notgit-receive-pack"])
def test_endpoint_needs_a_whole_last_segment(path: str) -> None:
    assert git.endpoint(path) is None


# -- pkt-lines --------------------------------------------------------------------------


def test_packets_split_data_and_special_packets() -> None:
    body = pkt("command=ls-refs\n") + DELIM + pkt("peel\n") + pkt(b"") + FLUSH + b"0002"
    assert git.packets(body) == [
        ("data", b"command=ls-refs\n"),
        ("delim", b""),
        ("data", b"peel\n"),
        ("data", b""),
        ("flush", b""),
        ("end", b""),
    ]
    assert pkt("want x\n") == b"000bwant x\n"  # the helper frames as git does
    assert git.packets(b"") == []


@pytest.mark.parametrize(
    "body",
    [
        b"zzzzwant x\n",  # not hex
        b"0003",  # 3 is no packet length
        b"00",  # a length cut short
        b"0010want x\n",  # longer than the body
        pkt("want x\n") + b"00ff",  # a valid packet, then a cut one
        b"GET / HTTP/1.1\r\n\r\n",
    ],
)
def test_malformed_bodies_are_bad_requests(body: bytes) -> None:
    with pytest.raises(BadRequest, match="pkt-line"):
        git.packets(body)
    with pytest.raises(BadRequest):
        git.upload_pack_key(PACK_URL, None, body)


@pytest.mark.parametrize("head", [b"0x0b", b" 00b", b"+00b", b"0_0b", b"00b "])
def test_lengths_must_be_four_hex_digits(head: bytes) -> None:
    with pytest.raises(BadRequest):
        git.packets(head + b"want x\n" + FLUSH)


def test_err_packet_framing() -> None:
    assert git.err_packet("boom") == b"000dERR boom\n"
    framed = git.err_packet("Not in offline seed: git repository é")
    assert int(framed[:4], 16) == len(framed)
    assert git.packets(framed) == [("data", framed[4:])]
    assert framed[4:].startswith(b"ERR ") and framed.endswith("é\n".encode())
    # A huge message still fits one pkt-line (git's limit is 65520 bytes).
    huge = git.err_packet("x" * 100_000)
    assert int(huge[:4], 16) == len(huge) <= 65520
    assert git.packets(huge)[0][1].endswith(b"x\n")


# -- normalisation and keys -------------------------------------------------------------


def test_normalise_drops_agent_and_session_id_lines() -> None:
    expected = (
        pkt("command=fetch\n")
        + pkt("object-format=sha1\n")
        + DELIM
        + pkt("thin-pack\n")
        + pkt("ofs-delta\n")
        + pkt(f"want {OID}\n")
        + pkt("done\n")
        + FLUSH
    )
    assert git.normalise(v2_fetch()) == expected
    assert git.normalise(expected) == expected  # idempotent


def test_normalise_drops_client_capabilities_of_a_v0_first_want_line() -> None:
    body = v0_wants("multi_ack_detailed side-band-64k ofs-delta agent=git/2.39.5 session-id=s1")
    assert git.normalise(body) == (
        pkt(f"want {OID} multi_ack_detailed side-band-64k ofs-delta\n")
        + pkt(f"want {OTHER_OID}\n")
        + FLUSH
        + pkt("done\n")
    )


def test_keys_ignore_the_client_but_not_the_request() -> None:
    v2 = git.upload_pack_key(PACK_URL, "version=2", v2_fetch())
    assert v2 == git.upload_pack_key(
        PACK_URL, "version=2", v2_fetch(agent="git/2.45.0", session="other")
    )
    assert v2 != git.upload_pack_key(PACK_URL, "version=2", v2_fetch(want=OTHER_OID))
    assert v2 != git.upload_pack_key(PACK_URL, None, v2_fetch())  # v0 answers differently
    digest = hashlib.sha256(git.normalise(v2_fetch())).hexdigest()
    assert v2 == f"{PACK_URL}#git-protocol=version=2&body-sha256={digest}"

    v0 = git.upload_pack_key(PACK_URL, None, v0_wants("side-band-64k agent=git/2.39.5"))
    assert v0 == git.upload_pack_key(PACK_URL, None, v0_wants("side-band-64k agent=git/2.1"))
    assert v0 == git.upload_pack_key(PACK_URL, None, v0_wants("side-band-64k"))
    # Capabilities that change the answer's framing stay in the key.
    assert v0 != git.upload_pack_key(PACK_URL, None, v0_wants("side-band agent=git/2.39.5"))
    assert v0 != git.upload_pack_key(
        PACK_URL, None, v0_wants("side-band-64k agent=git/2.39.5", want=OTHER_OID)
    )


@pytest.mark.parametrize(
    ("header", "protocol"),
    [
        (None, "v0"),
        ("", "v0"),
        ("version=1", "v0"),
        ("version=2", "version=2"),
        ("object-format=sha256:version=2", "version=2"),
    ],
)
def test_refs_key_carries_the_protocol(header: str | None, protocol: str) -> None:
    key = git.refs_key(REFS_URL, header)
    assert key == f"{REFS_URL}#git-protocol={protocol}"
    assert git.is_key(key) and not git.is_key(REFS_URL)


# -- back to an upstream request --------------------------------------------------------


def test_upstream_request_of_refs_keys() -> None:
    assert git.upstream_request(git.refs_key(REFS_URL, "version=2")) == (
        REFS_URL,
        {"Git-Protocol": "version=2"},
    )
    assert git.upstream_request(git.refs_key(REFS_URL, None)) == (REFS_URL, {})


def test_upstream_request_of_upload_pack_keys() -> None:
    url, headers = git.upstream_request(git.upload_pack_key(PACK_URL, "version=2", v2_fetch()))
    assert url == PACK_URL
    assert headers == {
        "Git-Protocol": "version=2",
        "Content-Type": "application/x-git-upload-pack-request",
        "Accept": "application/x-git-upload-pack-result",
    }
    url, headers = git.upstream_request(git.upload_pack_key(PACK_URL, None, v0_wants("ofs-delta")))
    assert url == PACK_URL and "Git-Protocol" not in headers
    assert headers["Content-Type"] == git.REQUEST_TYPE


def test_any_kind_turns_git_keys_back_into_requests() -> None:
    key = git.refs_key(REFS_URL, "version=2")
    generic = UpstreamConfig(name="g", kind="generic", url="https://git.example.test")
    assert upstream_request(generic, key) == git.upstream_request(key)
    assert upstream_request(generic, REFS_URL) == (REFS_URL, {})  # not a git key


def test_repository_names_what_a_user_clones() -> None:
    assert git.repository(git.refs_key(REFS_URL, None)) == REPO
    assert git.repository(git.upload_pack_key(PACK_URL, None, FLUSH)) == REPO
