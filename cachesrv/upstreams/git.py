"""git smart HTTP (fetch and clone): which requests, their cache keys, their bodies.

A clone over smart HTTP is two kinds of request (git's `http-protocol.txt`,
`protocol-v2.txt`), whatever the host's upstream kind:

- `GET <repo>/info/refs?service=git-upload-pack`: the ref advertisement. Mutable
  (refs move): revalidated online, replayed offline. Its answer depends on the
  `Git-Protocol` request header (v2 answers with capabilities, v0 with refs), so that
  header is part of the key: `<url>#git-protocol=version=2`.
- `POST <repo>/git-upload-pack`: the client's request (v2 `ls-refs`/`fetch`, or v0
  wants and haves) answered with refs or a pack. Keyed by the URL, the protocol and
  the sha256 of the request body *normalised*: pkt-lines that only describe the
  client (`agent=`, `session-id=`, also as capabilities on a v0 first `want` line)
  are dropped, so another build of git asking for the same objects replays the same
  answer offline. `<url>#git-protocol=version=2&body-sha256=<hex>`.

Keys carry these as a fragment, which never reaches the upstream: `upstream_request`
turns a key back into the URL to fetch and the headers to send.

Offline misses are told in the two forms git shows a user: a `text/plain` error body
(git prints it as `remote:` lines) for the advertisement, and an `ERR` pkt-line in a
`200` for an upload-pack request.
"""

from __future__ import annotations

import hashlib
import re
from typing import Literal

from ..errors import BadRequest

SERVICE = "service=git-upload-pack"
ADVERTISEMENT = "application/x-git-upload-pack-advertisement"
REQUEST_TYPE = "application/x-git-upload-pack-request"
RESULT_TYPE = "application/x-git-upload-pack-result"
PROTOCOL_HEADER = "Git-Protocol"
#: Longest request body read from a git client (wants and haves of a big fetch).
MAX_REQUEST = 32 * 1024 * 1024
_CLIENT_SPECIFIC = (b"agent=", b"session-id=")
_LENGTH = re.compile(rb"[0-9a-fA-F]{4}")

Endpoint = Literal["refs", "upload-pack", "receive-pack"]


def endpoint(path: str) -> Endpoint | None:
    """Which git smart HTTP endpoint a path under an upstream is, if any."""
    plain, _, query = path.partition("?")
    if plain.endswith("/info/refs") or plain == "info/refs":
        if query == SERVICE:
            return "refs"
        if query == "service=git-receive-pack":
            return "receive-pack"
    last = plain.rsplit("/", 1)[-1]
    if last == "git-upload-pack" and not query:
        return "upload-pack"
    if last == "git-receive-pack" and not query:
        return "receive-pack"
    return None


def refs_key(url: str, protocol: str | None) -> str:
    return f"{url}#git-protocol={_protocol(protocol)}"


def upload_pack_key(url: str, protocol: str | None, body: bytes) -> str:
    digest = hashlib.sha256(normalise(body)).hexdigest()
    return f"{url}#git-protocol={_protocol(protocol)}&body-sha256={digest}"


def is_key(url: str) -> bool:
    return "#git-protocol=" in url


def is_exchange(url: str) -> bool:
    """Whether a URL (as a client asked it, or a key) is a git clone's request, which
    `prefetch` cannot fetch (misses list these as the clone that records them)."""
    return is_key(url) or endpoint(url.split("#", 1)[0]) is not None


def upstream_request(key: str) -> tuple[str, dict[str, str]]:
    """The URL to fetch for a git key, and the headers that make the same answer."""
    url, _, fragment = key.partition("#")
    fields = dict(part.split("=", 1) for part in fragment.split("&") if "=" in part)
    headers: dict[str, str] = {}
    protocol = fields.get("git-protocol", "v0")
    if protocol != "v0":
        headers[PROTOCOL_HEADER] = protocol
    if "body-sha256" in fields:
        headers["Content-Type"] = REQUEST_TYPE
        headers["Accept"] = RESULT_TYPE
    return url, headers


def repository(url: str) -> str:
    """The URL a user clones, for messages: `.../repo.git/info/refs?...` -> `.../repo.git`."""
    plain = url.split("#", 1)[0].split("?", 1)[0]
    for tail in ("/info/refs", "/git-upload-pack"):
        if plain.endswith(tail):
            return plain[: -len(tail)]
    return plain


def record_command(url: str, seed: str | None) -> str:
    """How to record a git exchange: run the clone (a `prefetch` cannot: the requests
    a clone sends depend on what it finds)."""
    seed_opt = f" --seed {seed}" if seed else ""
    return f"cachesrv wrap{seed_opt} -- git clone {repository(url)}"


def normalise(body: bytes) -> bytes:
    """The request's pkt-lines without the client-specific ones (see module doc)."""
    out = bytearray()
    for kind, payload in packets(body):
        if kind != "data":
            out += kind_marker(kind)
            continue
        if payload.startswith(_CLIENT_SPECIFIC):
            continue
        if payload.startswith(b"want ") and b" " in payload[5:].strip():
            # v0: capabilities ride on the first want line after the object id.
            words = payload.rstrip(b"\n").split(b" ")
            kept = [w for w in words if not w.startswith(_CLIENT_SPECIFIC)]
            payload = b" ".join(kept) + b"\n"
        out += b"%04x" % (len(payload) + 4) + payload
    return bytes(out)


def packets(body: bytes) -> list[tuple[str, bytes]]:
    """Split a pkt-line stream: ("data", payload), or ("flush"|"delim"|"end", b"")."""
    found: list[tuple[str, bytes]] = []
    at = 0
    while at < len(body):
        head = body[at : at + 4]
        size = int(head, 16) if _LENGTH.fullmatch(head) else -1
        if size < 0 or size == 3 or (size > 4 and at + size > len(body)):
            raise BadRequest(f"not a git pkt-line request body (bad length at byte {at})")
        if size < 4:
            found.append(({0: "flush", 1: "delim", 2: "end"}[size], b""))
            at += 4
            continue
        found.append(("data", body[at + 4 : at + size]))
        at += size
    return found


def kind_marker(kind: str) -> bytes:
    return {"flush": b"0000", "delim": b"0001", "end": b"0002"}[kind]


def err_packet(message: str) -> bytes:
    """An `ERR` pkt-line, which git prints as `fatal: remote error: <message>`."""
    payload = b"ERR " + message.encode("utf-8", "replace")[:65000] + b"\n"
    return b"%04x" % (len(payload) + 4) + payload


def _protocol(header: str | None) -> str:
    """`version=2` from the Git-Protocol header (other keys dropped), else `v0`."""
    if header:
        for part in header.split(":"):
            if part.strip() == "version=2":
                return "version=2"
    return "v0"
