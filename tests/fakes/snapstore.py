"""A fake Snap Store: real aiohttp servers on 127.0.0.1, in a background thread.

Requests and answers follow the shapes of snapd's own store client (`canonical/snapd`):

* ``POST /v2/snaps/refresh`` (``store/store_action.go``): a JSON body with ``context``,
  ``actions`` (``action``, ``instance-key``, ``name`` or ``snap-id``, ``channel`` or
  ``revision``, and ``epoch``, which the store requires for install/download) and
  ``fields``; v2 device headers ``Snap-Device-Series`` and ``Snap-Device-Architecture``
  are required (``store/store.go`` ``newRequest``). The answer is ``{"error-list": [],
  "results": [...]}`` with one result per action, matched by ``instance-key``: either
  ``{"result": "download", "snap": {only the requested fields}, "effective-channel"}``
  or ``{"result": "error", "name", "error": {"code", "message", "extra"}}`` with the codes
  snapd knows (``name-not-found``, ``revision-not-found``: ``store/errors.go``). A
  result's ``snap.download`` has ``url``, ``size``, ``sha3-384`` and ``deltas``
  (``store/details_v2.go``).
* ``GET /api/v1/snaps/download/<snap-id>_<rev>.snap``: the ``download.url`` the store
  hands out, which redirects (302) to the CDN listener, like api.snapcraft.io redirects to
  ``*.cdn.snapcraftcontent.com``; the CDN serves the bytes (single ``Range`` honoured;
  ``store/store_download.go`` resumes with one).
* ``GET /v2/snaps/info/<name>``: ``{"channel-map": [...], "snap": {...}, "name",
  "snap-id"}`` (``store/details_v2.go`` ``storeInfo``), or 404 with an error list.
* ``GET /v2/assertions/<type>/<primary key>?max-format=N`` with ``Accept:
  application/x.ubuntu.assertion`` (``store/store_asserts.go``): the assertion text
  (``asserts/asserts.go`` format) or 404 ``{"error-list": [{"code": "not-found"}]}`` as
  ``application/json``. The texts are plausible (snap-revision, snap-declaration,
  account-key, account) but not signed by a real key: snapd's verification of them fails.

A snap is a real squashfs image with ``meta/snap.yaml`` (``build_snap``, ``mksquashfs``).
Every request is recorded (method, path, query, headers, body, listener, status) before
its answer is sent. Faults: ``lie_sha3`` (names whose refresh answer declares a wrong
sha3-384) and ``corrupt`` (names whose CDN bytes are flipped).
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from multidict import CIMultiDictProxy

from tests.fakes.server import ThreadedServer

ASSERTION_TYPE = "application/x.ubuntu.assertion"
#: The real root key of the store (snapd's asserts/sysdb): assertions that claim it as
#: signer are checked against the real key by snapd, and fail.
ROOT_KEY_ID = "-CvQKAwRQ5h3Ffn10FILJoEZUXOv6km9FwA80-Rcj-f-6jadQ89VRswHNiEB9Lxk"
PUBLISHER_ID = "fakepublisher0000000000000000000"
TIMESTAMP = "2024-01-02T03:04:05.000000Z"


def build_snap(workdir: Path, name: str, version: str, *, arch: str = "all") -> Path:
    """A real snap: a squashfs image of a tree with `meta/snap.yaml`, reproducible."""
    src = workdir / f"{name}-{version}-tree"
    (src / "meta").mkdir(parents=True, exist_ok=True)
    (src / "bin").mkdir(exist_ok=True)
    (src / "meta" / "snap.yaml").write_text(
        f"name: {name}\nversion: '{version}'\nsummary: {name} for cachesrv tests\n"
        f"description: A test snap.\narchitectures: [{arch}]\nconfinement: strict\n"
        f"base: core22\ngrade: stable\napps:\n  {name}:\n    command: bin/{name}\n"
    )
    script = src / "bin" / name
    script.write_text(f"#!/bin/sh\necho 'hello from {name} {version}'\n")
    script.chmod(0o755)
    out = workdir / f"{name}_{version}.snap"
    subprocess.run(
        ["mksquashfs", str(src), str(out), "-noappend", "-comp", "xz", "-all-root"]
        + ["-no-xattrs", "-no-progress", "-quiet", "-mkfs-time", "0", "-all-time", "0"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return out


@dataclass(frozen=True)
class FakeSnap:
    """One revision of a snap, released to some channels."""

    name: str
    snap_id: str
    revision: int
    path: Path
    channels: tuple[str, ...] = ("latest/stable",)
    architecture: str = "amd64"
    version: str = "1.0"

    @property
    def data(self) -> bytes:
        return self.path.read_bytes()

    @property
    def sha3_384(self) -> str:
        return hashlib.sha3_384(self.data).hexdigest()

    @property
    def filename(self) -> str:
        return f"{self.snap_id}_{self.revision}.snap"


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: str
    headers: CIMultiDictProxy[str]
    body: bytes
    listener: str
    status: int = 0


def channel_name(channel: str) -> str:
    """`track/risk[/branch]` for what a client sent ("" and a bare risk: `latest/`)."""
    channel = channel or "stable"
    first = channel.split("/", 1)[0]
    return f"latest/{channel}" if first in ("stable", "candidate", "beta", "edge") else channel


# -- OpenPGP packets as snapd encodes them (asserts/crypto.go), so that snapd parses the
# keys and signatures and fails only where a fake must: verifying against real keys.


def _mpi(n: int) -> bytes:
    return n.bit_length().to_bytes(2, "big") + n.to_bytes((n.bit_length() + 7) // 8, "big")


def _packet(tag: int, body: bytes) -> bytes:
    """A new-format OpenPGP packet (RFC 4880 4.2.2)."""
    n = len(body)
    if n < 192:
        length = bytes([n])
    elif n < 8384:
        length = bytes([((n - 192) >> 8) + 192, (n - 192) & 0xFF])
    else:
        length = b"\xff" + n.to_bytes(4, "big")
    return bytes([0xC0 | tag]) + length + body


def _number(seed: bytes) -> int:
    """A deterministic odd 2048-bit number (an RSA modulus or signature in shape only)."""
    return int.from_bytes(hashlib.shake_256(seed).digest(256), "big") | (1 << 2047) | 1


def encode_v1(data: bytes) -> bytes:
    """asserts/crypto.go `encodeV1`: a version byte, base64, lines of 76."""
    flat = base64.b64encode(b"\x01" + data)
    return b"\n".join(flat[i : i + 76] for i in range(0, len(flat), 76))


def public_key_packet(seed: bytes) -> bytes:
    """A v4 RSA public key packet created 2016-01-01 (snapd's fixed key timestamp)."""
    body = b"\x04" + (1451606400).to_bytes(4, "big") + b"\x01" + _mpi(_number(seed)) + _mpi(65537)
    return _packet(6, body)


def key_id(packet: bytes) -> str:
    """asserts/crypto.go: the unpadded base64url sha3-384 of the v1-encoded key."""
    digest = hashlib.sha3_384(b"\x01" + packet).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


STORE_KEY = public_key_packet(b"fake store key")
STORE_KEY_ID = key_id(STORE_KEY)


def _signature(content: bytes) -> bytes:
    """A v4 RSA/SHA-512 signature packet: well formed, and verifying against nothing."""

    def sub(kind: int, data: bytes) -> bytes:
        return bytes([len(data) + 1, kind]) + data

    hashed = sub(2, (1704164645).to_bytes(4, "big"))  # creation time
    unhashed = sub(16, hashlib.sha256(content).digest()[:8])  # issuer key id
    body = (
        bytes([4, 0x00, 1, 10])
        + len(hashed).to_bytes(2, "big")
        + hashed
        + len(unhashed).to_bytes(2, "big")
        + unhashed
        + hashlib.sha512(content).digest()[:2]
        + _mpi(_number(content))
    )
    return encode_v1(_packet(2, body))


def assertion(headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
    """An assertion text in snapd's format (asserts/asserts.go `assembleAndSign`)."""
    lines = [f"{k}: {v}" for k, v in headers]
    if body:
        lines.insert(len(lines) - 1, f"body-length: {len(body)}")
    content = "\n".join(lines).encode() + (b"\n\n" + body if body else b"")
    return content + b"\n\n" + _signature(content) + b"\n"


class FakeSnapStore(ThreadedServer[RecordedRequest]):
    """The store API (and assertion service) on one port, its CDN on another.

    ``url`` is the API base (``SNAPPY_FORCE_API_URL``), ``cdn_url`` the CDN's;
    ``requests`` every request; ``count(prefix)`` those whose path starts with it,
    ``paths(prefix)`` their paths; ``reset_log()`` forgets them.
    """

    def __init__(self) -> None:
        super().__init__()
        self.snaps: list[FakeSnap] = []
        self.assertions: dict[str, bytes] = {}
        self.lie_sha3: set[str] = set()
        self.corrupt: set[str] = set()
        self.url = ""
        self.cdn_url = ""

    # -- content ------------------------------------------------------------------------

    def add(self, snap: FakeSnap) -> FakeSnap:
        """Publish a snap revision and the assertions a client needs to install it."""
        self.snaps.append(snap)
        sha3_b64 = base64.urlsafe_b64encode(bytes.fromhex(snap.sha3_384)).decode().rstrip("=")
        a = self.assertions
        a[f"snap-revision/{sha3_b64}"] = assertion(
            [
                ("type", "snap-revision"),
                ("authority-id", "canonical"),
                ("snap-sha3-384", sha3_b64),
                ("developer-id", PUBLISHER_ID),
                ("snap-id", snap.snap_id),
                ("snap-revision", str(snap.revision)),
                ("snap-size", str(len(snap.data))),
                ("timestamp", TIMESTAMP),
                ("sign-key-sha3-384", STORE_KEY_ID),
            ]
        )
        a[f"snap-declaration/16/{snap.snap_id}"] = assertion(
            [
                ("type", "snap-declaration"),
                ("authority-id", "canonical"),
                ("series", "16"),
                ("snap-id", snap.snap_id),
                ("publisher-id", PUBLISHER_ID),
                ("snap-name", snap.name),
                ("timestamp", TIMESTAMP),
                ("sign-key-sha3-384", STORE_KEY_ID),
            ]
        )
        a[f"account-key/{STORE_KEY_ID}"] = assertion(
            [
                ("type", "account-key"),
                ("authority-id", "canonical"),
                ("public-key-sha3-384", STORE_KEY_ID),
                ("account-id", "canonical"),
                ("name", "store"),
                ("since", "2016-04-01T00:00:00.0Z"),
                ("sign-key-sha3-384", ROOT_KEY_ID),
            ],
            body=encode_v1(STORE_KEY),
        )
        a[f"account/{PUBLISHER_ID}"] = assertion(
            [
                ("type", "account"),
                ("authority-id", "canonical"),
                ("account-id", PUBLISHER_ID),
                ("display-name", "Fake Publisher"),
                ("timestamp", TIMESTAMP),
                ("username", "fakepub"),
                ("validation", "unproven"),
                ("sign-key-sha3-384", STORE_KEY_ID),
            ]
        )
        return snap

    def assertion_chain(self, snap: FakeSnap) -> list[bytes]:
        """The four assertions of `snap` (account-key, account, declaration, revision)."""
        sha3_b64 = base64.urlsafe_b64encode(bytes.fromhex(snap.sha3_384)).decode().rstrip("=")
        a = self.assertions
        return [
            a[f"account-key/{STORE_KEY_ID}"],
            a[f"account/{PUBLISHER_ID}"],
            a[f"snap-declaration/16/{snap.snap_id}"],
            a[f"snap-revision/{sha3_b64}"],
        ]

    # -- serving ------------------------------------------------------------------------

    async def _setup(self) -> None:
        api, cdn = [await self._listen(app) for app in (self._api_app(), self._cdn_app())]
        self.url = f"http://127.0.0.1:{api}"
        self.cdn_url = f"http://127.0.0.1:{cdn}"

    def _api_app(self) -> web.Application:
        app = web.Application(middlewares=[self._recorder("api", RecordedRequest, body=True)])
        app.router.add_post("/v2/snaps/refresh", self._refresh)
        app.router.add_get("/v2/snaps/info/{name}", self._info)
        app.router.add_get("/v2/assertions/{tail:.+}", self._assertion)
        app.router.add_get("/api/v1/snaps/download/{filename}", self._download_redirect)
        return app

    def _cdn_app(self) -> web.Application:
        app = web.Application(middlewares=[self._recorder("cdn", RecordedRequest, body=True)])
        app.router.add_get("/download-origin/canonical/{filename}", self._cdn)
        return app

    # -- the API --------------------------------------------------------------------------

    @staticmethod
    def _error(status: int, code: str, message: str) -> web.Response:
        body = json.dumps({"error-list": [{"code": code, "message": message}]})
        return web.Response(
            status=status,
            body=body.encode(),
            headers={"Content-Type": "application/json", "X-Oops-Id": f"OOPS-FAKE-{code}"},
        )

    def _find(self, name: str, snap_id: str, channel: str, revision: int, arch: str) -> Any:
        mine = [
            s
            for s in self.snaps
            if (s.name == name or (snap_id and s.snap_id == snap_id))
            and s.architecture in (arch, "all")
        ]
        if not mine:
            return "name-not-found"
        if revision:
            found = [s for s in mine if s.revision == revision]
        else:
            found = [s for s in mine if channel_name(channel) in s.channels]
        return max(found, key=lambda s: s.revision) if found else "revision-not-found"

    def _snap_doc(self, snap: FakeSnap, fields: list[str] | None) -> dict[str, Any]:
        sha3 = snap.sha3_384
        if snap.name in self.lie_sha3:
            sha3 = hashlib.sha3_384(b"not the snap " + sha3.encode()).hexdigest()
        full: dict[str, Any] = {
            "architectures": [snap.architecture],
            "base": "core22",
            "confinement": "strict",
            "contact": "",
            "created-at": TIMESTAMP,
            "description": f"The {snap.name} test snap.",
            "download": {
                "deltas": [],
                "sha3-384": sha3,
                "size": len(snap.data),
                "url": f"{self.url}/api/v1/snaps/download/{snap.filename}",
            },
            "epoch": {"read": [0], "write": [0]},
            "license": "MIT",
            "name": snap.name,
            "prices": {},
            "private": False,
            "publisher": {
                "display-name": "Fake Publisher",
                "id": PUBLISHER_ID,
                "username": "fakepub",
                "validation": "unproven",
            },
            "revision": snap.revision,
            "snap-id": snap.snap_id,
            "snap-yaml": "",
            "summary": f"{snap.name} for cachesrv tests",
            "title": snap.name,
            "type": "app",
            "version": snap.version,
            "website": "",
            "store-url": f"https://snapcraft.io/{snap.name}",
            "media": [],
            "common-ids": [],
        }
        return {k: v for k, v in full.items() if fields is None or k in fields}

    async def _refresh(self, request: web.Request) -> web.Response:
        series = request.headers.get("Snap-Device-Series")
        arch = request.headers.get("Snap-Device-Architecture")
        if not series or not arch:
            return self._error(400, "missing-header", "Snap-Device-Series/Architecture needed")
        if request.content_type != "application/json":
            return self._error(415, "invalid-content-type", "Content-Type must be JSON")
        try:
            doc = json.loads(await request.read())
            context = {c["instance-key"]: c for c in doc["context"]}
            actions = list(doc["actions"])
            fields = list(doc["fields"])
        except (ValueError, KeyError, TypeError):
            return self._error(400, "invalid-request", "context, actions and fields needed")
        results = []
        for action in actions:
            ik = action.get("instance-key")
            kind = action.get("action")
            if not ik or kind not in ("install", "download", "refresh"):
                return self._error(400, "invalid-field", f"bad action {action!r}")
            if kind != "refresh" and "epoch" not in action:
                return self._error(400, "invalid-field", "install/download need 'epoch'")
            cur = context.get(ik, {})
            if kind == "refresh" and not cur:
                return self._error(400, "invalid-field", f"refresh of unknown {ik!r}")
            name = action.get("name", "")
            snap_id = action.get("snap-id") or cur.get("snap-id", "")
            channel = action.get("channel") or cur.get("tracking-channel", "")
            found = self._find(name, snap_id, channel, action.get("revision", 0), arch)
            if isinstance(found, str):
                err: dict[str, Any] = {"code": found, "message": f"{found} for {name or snap_id}"}
                if found == "revision-not-found":
                    err["extra"] = {"releases": self._releases(name or snap_id)}
                results.append({"result": "error", "instance-key": ik, "name": name, "error": err})
                continue
            results.append(
                {
                    "result": kind,
                    "instance-key": ik,
                    "snap-id": found.snap_id,
                    "name": found.name,
                    "snap": self._snap_doc(found, fields),
                    "effective-channel": channel_name(channel).removeprefix("latest/"),
                    "released-at": TIMESTAMP,
                }
            )
        body = json.dumps({"error-list": [], "results": results})
        return web.Response(body=body.encode(), content_type="application/json")

    def _releases(self, name: str) -> list[dict[str, str]]:
        return [
            {"architecture": s.architecture, "channel": c}
            for s in self.snaps
            if name in (s.name, s.snap_id)
            for c in s.channels
        ]

    async def _info(self, request: web.Request) -> web.Response:
        if not request.headers.get("Snap-Device-Series"):
            return self._error(400, "missing-header", "Snap-Device-Series needed")
        name = request.match_info["name"]
        arch = request.query.get("architecture", "amd64")
        mine = [s for s in self.snaps if s.name == name and s.architecture in (arch, "all")]
        if not mine:
            return self._error(404, "resource-not-found", f"No snap named {name!r} found")
        channel_map = []
        for s in sorted(mine, key=lambda s: -s.revision):
            for c in s.channels:
                track, risk = c.split("/", 1)
                doc = self._snap_doc(s, ["download", "revision", "version", "confinement"])
                doc["channel"] = {
                    "architecture": s.architecture,
                    "name": risk if track == "latest" else c,
                    "risk": risk,
                    "track": track,
                    "released-at": TIMESTAMP,
                }
                channel_map.append(doc)
        top = self._snap_doc(mine[0], ["name", "snap-id", "publisher", "summary", "title"])
        body = {"channel-map": channel_map, "snap": top, "name": name, "snap-id": mine[0].snap_id}
        return web.Response(body=json.dumps(body).encode(), content_type="application/json")

    async def _assertion(self, request: web.Request) -> web.Response:
        if ASSERTION_TYPE not in request.headers.get("Accept", ""):
            return self._error(406, "not-acceptable", f"Accept must be {ASSERTION_TYPE}")
        text = self.assertions.get(request.match_info["tail"])
        if text is None:
            return self._error(404, "not-found", "not found")
        return web.Response(body=text, headers={"Content-Type": ASSERTION_TYPE})

    async def _download_redirect(self, request: web.Request) -> web.Response:
        filename = request.match_info["filename"]
        if not any(s.filename == filename for s in self.snaps):
            return self._error(404, "not-found", "no such snap file")
        location = f"{self.cdn_url}/download-origin/canonical/{filename}?token=fake"
        return web.Response(status=302, headers={"Location": location})

    async def _cdn(self, request: web.Request) -> web.Response:
        filename = request.match_info["filename"]
        snap = next((s for s in self.snaps if s.filename == filename), None)
        if snap is None:
            return web.Response(status=404, text="not found\n")
        data = snap.data
        if snap.name in self.corrupt:
            data = bytes(b ^ 0xFF for b in data)
        rng = request.headers.get("Range", "")
        if rng.startswith("bytes=") and rng[6:].rstrip("-").isdigit() and rng.endswith("-"):
            start = int(rng[6:-1])
            if start < len(data):
                return web.Response(
                    status=206,
                    body=data[start:],
                    headers={"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"},
                    content_type="application/octet-stream",
                )
        return web.Response(body=data, content_type="application/octet-stream")
