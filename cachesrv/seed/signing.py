"""Signed seed bundles: who made a bundle, not only whether it is consistent.

`cachesrv-seed.json` pins the blake3 of `manifest.jsonl`, which pins every object's
digest, so one ed25519 signature over the exact bytes of `cachesrv-seed.json` vouches
for the whole bundle. It lives in `cachesrv-seed.sig` (JSON: algorithm, key id,
base64 signature), written just before the metadata (which is written last).

- `cachesrv seed keygen DIR`: `seed-signing.key` (PKCS#8 PEM, mode 0600) and
  `seed-signing.pub` (SubjectPublicKeyInfo PEM, to copy to the import side).
- `seed export --sign KEY` signs; `seed import` with trusted keys (`[seed]
  trusted_keys`, `--trusted-key`) refuses a bundle that no trusted key signed, before
  anything enters the store; `--allow-unsigned` overrides, and is logged.
- The key id is the first 16 hex digits of the sha256 of the raw public key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from ..errors import ConfigError, SeedError
from .reader import read_small

SIGNATURE = "cachesrv-seed.sig"
PRIVATE = "seed-signing.key"
PUBLIC = "seed-signing.pub"
ALGORITHM = "ed25519"

log = logging.getLogger("cachesrv.seed")


@dataclass(frozen=True)
class Signer:
    """What `seed verify` and `seed import` say about a bundle's signature."""

    #: The key id the bundle names, None when it is not signed.
    key_id: str | None
    #: The trusted key file whose key made the signature, if any.
    trusted_by: Path | None = None
    #: Why it does not count (bad signature, unknown key), if it does not.
    problem: str | None = None

    def describe(self) -> str:
        if self.key_id is None:
            return "not signed"
        if self.trusted_by is not None:
            return f"signed by ed25519 key {self.key_id} (trusted: {self.trusted_by})"
        why = f": {self.problem}" if self.problem else ""
        return f"signed by ed25519 key {self.key_id}{why}"


def key_id(public: ed25519.Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def keygen(directory: Path) -> tuple[Path, Path]:
    """Write a new key pair into `directory`; refuses to overwrite one."""
    directory.mkdir(parents=True, exist_ok=True)
    private, public = directory / PRIVATE, directory / PUBLIC
    if private.exists() or public.exists():
        raise ConfigError(f"{directory} already holds a signing key; keygen never overwrites")
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, pem)
    finally:
        os.close(fd)
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def load_private(path: Path) -> ed25519.Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--sign: cannot read the signing key {path}: {exc}") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ConfigError(f"--sign: {path} is not an ed25519 key (make one: cachesrv seed keygen)")
    return key


def load_public(path: Path) -> ed25519.Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"trusted key {path}: cannot read it: {exc}") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ConfigError(f"trusted key {path} is not an ed25519 public key")
    return key


def signature_document(key: ed25519.Ed25519PrivateKey, metadata: bytes) -> bytes:
    """The content of `cachesrv-seed.sig` for these metadata bytes."""
    doc = {
        "algorithm": ALGORITHM,
        "key_id": key_id(key.public_key()),
        "signature": base64.b64encode(key.sign(metadata)).decode(),
    }
    return (json.dumps(doc, indent=2) + "\n").encode()


def read_signer(bundle: Path, trusted: Sequence[Path]) -> Signer:
    """Who signed the bundle's metadata, checked against the trusted keys."""
    sig_path = bundle / SIGNATURE
    try:
        # Not through a link, not a FIFO, not unbounded: the bundle is not trusted yet.
        doc = json.loads(read_small(sig_path).decode("utf-8"))
    except FileNotFoundError:
        return Signer(None)
    except (OSError, ValueError, RecursionError) as exc:  # RecursionError: nested too deeply
        return Signer("unknown", problem=f"{SIGNATURE} is unreadable ({exc})")
    if not isinstance(doc, dict) or doc.get("algorithm") != ALGORITHM:
        return Signer("unknown", problem=f"{SIGNATURE}: not an {ALGORITHM} signature")
    kid = str(doc.get("key_id", "unknown"))[:64]
    try:
        signature = base64.b64decode(str(doc.get("signature", "")), validate=True)
        metadata = read_small(bundle / "cachesrv-seed.json")
    except (ValueError, OSError) as exc:
        return Signer(kid, problem=f"signature unreadable ({exc})")
    if not trusted:
        return Signer(kid, problem="not checked: no trusted keys configured")
    for path in trusted:
        public = load_public(path)
        try:
            public.verify(signature, metadata)
        except InvalidSignature:
            continue
        return Signer(key_id(public), trusted_by=path)
    known = {key_id(load_public(p)) for p in trusted}
    why = (
        "the signature does not verify (the bundle was changed after signing)"
        if kid in known
        else "not a trusted key"
    )
    return Signer(kid, problem=why)


def check_trust(bundle: Path, trusted: Sequence[Path], *, allow_unsigned: bool) -> Signer:
    """Refuse (SeedError) a bundle that no trusted key signed, when keys are trusted;
    `allow_unsigned` lets it through, and says so in the log."""
    signer = read_signer(bundle, trusted)
    if not trusted or signer.trusted_by is not None:
        return signer
    what = signer.describe()
    if allow_unsigned:
        log.warning("importing %s although %s (--allow-unsigned)", bundle, what)
        return signer
    raise SeedError(
        f"refused: {bundle} is {what}; trusted keys: {', '.join(map(str, trusted))}",
        [
            f"{what}",
            "sign it on the exporting side (cachesrv seed export --sign KEY) with a key "
            "whose .pub is trusted here, or pass --allow-unsigned to import it anyway",
        ],
    )
