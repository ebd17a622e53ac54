"""A minimal real Go checksum database (the protocol of sum.golang.org), for FakeGoProxy.

It holds one record per module version, in the order they were added: the two go.sum
lines go writes (``<path> <version> h1:...`` and ``<path> <version>/go.mod h1:...``).
The records are the leaves of a transparency log (``golang.org/x/mod/sumdb/tlog``,
RFC 6962 hashing: a leaf is ``sha256(0x00 || record)``, a node ``sha256(0x01 || left ||
right)``), served as tiles of height 8; the tree head is a note signed with Ed25519
(``golang.org/x/mod/sumdb/note``). go verifies all of it: the signature with the key in
``GOSUMDB`` (:attr:`ChecksumDB.vkey`), the record against the tree through the tiles.

:meth:`ChecksumDB.answer` answers a path under the database's URL (what go asks,
relative to ``<proxy>/sumdb/<name>/`` or the database's own URL):

* ``supported`` (only through a proxy): 200, empty;
* ``latest``: the signed tree head;
* ``lookup/<escaped path>@<escaped version>``: ``<id>\\n<record>\\n`` then the signed
  tree head; 404 for a module version the database does not know;
* ``tile/8/<L>/<NNN>[.p/<W>]``: ``W`` hashes (32 bytes each) of level ``8*L`` of the
  tree, from index ``NNN*256``; ``tile/8/data/<NNN>[.p/<W>]``: those records, each
  formatted as in a lookup. 404 for a tile the current tree does not hold yet.

The key is fixed by ``seed`` (deterministic Ed25519): the same name and seed give the
same ``vkey`` and, for the same records, the same bytes on every run.
"""

from __future__ import annotations

import base64
import hashlib
import re
import struct
import threading
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

HEIGHT: Final = 8
TEXT: Final = "text/plain; charset=UTF-8"
_TILE = re.compile(r"tile/(\d+)/(data|\d+)/((?:x\d{3}/)*\d{3})(?:\.p/(\d+))?")
_ALG_ED25519: Final = b"\x01"


def record_hash(data: bytes) -> bytes:
    """``tlog.RecordHash``: the hash of a leaf."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``tlog.NodeHash``: the hash of an inner node."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def tile_path(level: int | str, n: int, width: int) -> str:
    """``tlog.Tile.Path`` for height 8 (``level`` ``"data"`` for record tiles)."""
    digits = f"{n % 1000:03d}"
    while n >= 1000:
        n //= 1000
        digits = f"x{n % 1000:03d}/{digits}"
    partial = f".p/{width}" if width != 1 << HEIGHT else ""
    return f"tile/{HEIGHT}/{level}/{digits}{partial}"


def unescape_path(escaped: str) -> str | None:
    """Undo the module proxy's case encoding (`!b` -> `B`); None if `escaped` is not a
    valid encoding."""
    out = []
    bang = False
    for c in escaped:
        if bang:
            if not "a" <= c <= "z":
                return None
            out.append(c.upper())
            bang = False
        elif c == "!":
            bang = True
        elif "A" <= c <= "Z":
            return None
        else:
            out.append(c)
    return None if bang else "".join(out)


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    content_type: str = TEXT


class ChecksumDB:
    """A growing checksum database named ``name`` (see module doc). Thread-safe."""

    def __init__(self, name: str, seed: bytes = b"cachesrv tests") -> None:
        self.name = name
        self._key = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(seed).digest())
        public = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self._pubkey = _ALG_ED25519 + public
        digest = hashlib.sha256(name.encode() + b"\n" + self._pubkey).digest()
        (self.key_hash,) = struct.unpack(">I", digest[:4])
        self._records: list[bytes] = []
        self._ids: dict[tuple[str, str], int] = {}
        self._leaves: list[bytes] = []
        self._lock = threading.Lock()

    @property
    def vkey(self) -> str:
        """The verifier key for ``GOSUMDB``: ``<name>+<hash>+<base64(0x01 || key)>``."""
        return f"{self.name}+{self.key_hash:08x}+{base64.b64encode(self._pubkey).decode()}"

    def add(self, path: str, version: str, gosum_lines: list[str]) -> int:
        """Append the record of ``path@version`` (its go.sum lines); returns its id. A
        version already recorded keeps its record (a log never rewrites)."""
        with self._lock:
            if (path, version) in self._ids:
                return self._ids[(path, version)]
            data = "".join(line + "\n" for line in gosum_lines).encode()
            self._ids[(path, version)] = len(self._records)
            self._records.append(data)
            self._leaves.append(record_hash(data))
            return len(self._records) - 1

    @property
    def size(self) -> int:
        with self._lock:
            return len(self._records)

    # -- the tree ----------------------------------------------------------------------

    def _subtree(self, lo: int, hi: int) -> bytes:
        """RFC 6962 hash of leaves [lo, hi): split at the largest power of 2 below."""
        if hi - lo == 1:
            return self._leaves[lo]
        k = 1 << ((hi - lo - 1).bit_length() - 1)
        return node_hash(self._subtree(lo, lo + k), self._subtree(lo + k, hi))

    def tree_hash(self, size: int | None = None) -> bytes:
        with self._lock:
            n = len(self._leaves) if size is None else size
            if n == 0:
                return hashlib.sha256(b"").digest()
            return self._subtree(0, n)

    def signed_tree(self) -> bytes:
        """The tree head as a signed note (``tlog.FormatTree`` + ``note.Sign``)."""
        with self._lock:
            n = len(self._leaves)
            root = self._subtree(0, n) if n else hashlib.sha256(b"").digest()
        text = f"go.sum database tree\n{n}\n{base64.b64encode(root).decode()}\n".encode()
        sig = struct.pack(">I", self.key_hash) + self._key.sign(text)
        return text + f"\n— {self.name} {base64.b64encode(sig).decode()}\n".encode()

    # -- serving -------------------------------------------------------------------------

    def answer(self, path: str) -> Answer:
        """The answer to ``path`` (relative to the database's URL, no leading slash)."""
        if path == "supported":
            return Answer(200, b"")
        if path == "latest":
            return Answer(200, self.signed_tree())
        if path.startswith("lookup/"):
            return self._lookup(path[len("lookup/") :])
        m = _TILE.fullmatch(path)
        if m is None or int(m.group(1)) != HEIGHT:
            return Answer(404, b"not found\n")
        level, width = m.group(2), int(m.group(4) or 1 << HEIGHT)
        n = 0
        for group in m.group(3).split("/"):
            n = n * 1000 + int(group.removeprefix("x"))
        if tile_path(level, n, width) != path or not 0 < width <= 1 << HEIGHT:
            return Answer(400, b"invalid tile syntax\n")
        if level == "data":
            return self._data_tile(n, width)
        return self._hash_tile(int(level), n, width)

    def _lookup(self, mod: str) -> Answer:
        esc_path, sep, esc_version = mod.rpartition("@")
        path, version = unescape_path(esc_path), unescape_path(esc_version)
        if not sep or path is None or version is None:
            return Answer(400, b"invalid module@version syntax\n")
        with self._lock:
            rid = self._ids.get((path, version))
            data = self._records[rid] if rid is not None else b""
        if rid is None:
            return Answer(404, f"not found: {path}@{version}\n".encode())
        return Answer(200, f"{rid}\n".encode() + data + b"\n" + self.signed_tree())

    def _hash_tile(self, level: int, n: int, width: int) -> Answer:
        span = 1 << (HEIGHT * level)  # leaves under one hash of this level
        start = n << HEIGHT
        with self._lock:
            if (start + width) * span > len(self._leaves):
                return Answer(404, b"tile not in tree\n")
            hashes = [self._subtree(i * span, (i + 1) * span) for i in range(start, start + width)]
        return Answer(200, b"".join(hashes), "application/octet-stream")

    def _data_tile(self, n: int, width: int) -> Answer:
        start = n << HEIGHT
        with self._lock:
            if start + width > len(self._records):
                return Answer(404, b"tile not in tree\n")
            records = self._records[start : start + width]
        body = b"".join(f"{start + i}\n".encode() + r + b"\n" for i, r in enumerate(records))
        return Answer(200, body)
