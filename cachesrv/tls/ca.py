"""The local certificate authority that lets cachesrv record HTTPS downloads.

A client that sends `CONNECT host:443` to the server gets a TLS session whose
certificate for `host` was minted here, signed by this CA; clients that trust the
CA (the wrapper sets that up for a build, docs/https.md for a site) then send their
requests inside the tunnel to cachesrv, which fetches upstream over verified TLS.

- `ca.pem` (the certificate, public) and `ca.key` (the private key, mode 0600) live in
  `tls.ca_dir` (default `<store>/tls/`): outside `objects/`, so never exported in a
  seed bundle and never served. A key readable by group or others is refused.
- Keys are ECDSA P-256: minting a leaf costs a signature, not an RSA key generation.
  Every leaf of one server process shares one key, made at start-up and kept in memory.
- Leaves are short-lived (`LEAF_LIFETIME`), minted on first use per host name and kept
  in memory; the PEM pair reaches OpenSSL through a memfd, never a file on disk.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import socket
import ssl
import stat
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..errors import ConfigError

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
CA_LIFETIME = dt.timedelta(days=3650)
LEAF_LIFETIME = dt.timedelta(days=3)
#: A cached leaf is re-minted once less than this is left of its life.
LEAF_RENEW = dt.timedelta(days=1)
#: Backdating absorbs clock skew between the server and its clients.
BACKDATE = dt.timedelta(hours=1)
LEAF_CACHE = 1024


@dataclass(frozen=True)
class CaSummary:
    """What `cachesrv ca show` prints."""

    subject: str
    sha256_fingerprint: str
    not_before: dt.datetime
    not_after: dt.datetime
    cert_path: Path
    key_path: Path


class LocalCA:
    """A loaded CA: signs leaf certificates and builds server-side TLS contexts."""

    def __init__(self, directory: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey):
        self.directory = directory
        self.cert = cert
        self._key = key
        self._leaf_key = ec.generate_private_key(ec.SECP256R1())
        self._leaf_key_pem = self._leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self._contexts: OrderedDict[str, tuple[ssl.SSLContext, dt.datetime]] = OrderedDict()
        self._lock = threading.Lock()

    # -- files ----------------------------------------------------------------

    @classmethod
    def load(cls, directory: Path) -> LocalCA:
        """Load the CA in `directory`; refuses a key that others may read."""
        cert_path, key_path = directory / CA_CERT, directory / CA_KEY
        try:
            mode = key_path.stat().st_mode
        except FileNotFoundError:
            raise ConfigError(
                f"no CA in {directory}: run `cachesrv ca init` (serve and wrap make one "
                "on first need)"
            ) from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"the CA key {key_path} is readable by group or others "
                f"(mode {stat.S_IMODE(mode):04o}); anyone who reads it can impersonate every "
                f"HTTPS site to clients that trust the CA: chmod 600 {key_path}"
            )
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the CA in {directory}: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"the CA key {key_path} is not an ECDSA key")
        if cert.public_key() != key.public_key():
            raise ConfigError(f"{cert_path} and {key_path} do not belong together")
        return cls(directory, cert, key)

    @classmethod
    def create(cls, directory: Path) -> LocalCA:
        """Make a new CA in `directory` (which must hold none). The key is written
        0600 before any byte of it, and both files appear whole (temp + rename)."""
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        key_path = directory / CA_KEY
        if key_path.exists():
            raise ConfigError(f"a CA already exists in {directory}")
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cachesrv"),
                x509.NameAttribute(
                    NameOID.COMMON_NAME, f"cachesrv local CA ({socket.gethostname()[:40]})"
                ),
            ]
        )
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + CA_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                _key_usage(ca=True),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # The key first, exclusively: whoever writes it owns this CA; then its certificate.
        _write_new(key_path, key_pem, 0o600)
        _write_new(
            directory / CA_CERT, cert.public_bytes(serialization.Encoding.PEM), 0o644, replace=True
        )
        return cls(directory, cert, key)

    @classmethod
    def ensure(cls, directory: Path) -> LocalCA:
        """Load the CA, making it first if there is none (serve and wrap do this)."""
        if not (directory / CA_KEY).exists():
            with contextlib.suppress(ConfigError):  # another process made it meanwhile
                return cls.create(directory)
        return cls.load(directory)

    def pem(self) -> bytes:
        """The certificate clients must trust."""
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def summary(self) -> CaSummary:
        return CaSummary(
            subject=self.cert.subject.rfc4514_string(),
            sha256_fingerprint=self.cert.fingerprint(hashes.SHA256()).hex(":").upper(),
            not_before=self.cert.not_valid_before_utc,
            not_after=self.cert.not_valid_after_utc,
            cert_path=self.directory / CA_CERT,
            key_path=self.directory / CA_KEY,
        )

    # -- leaves ---------------------------------------------------------------

    def server_context(self, host: str) -> ssl.SSLContext:
        """A server-side TLS context presenting a certificate for `host` (a DNS name or
        an IP address), minted on first use and renewed before it expires."""
        now = dt.datetime.now(dt.UTC)
        with self._lock:
            cached = self._contexts.get(host)
            if cached is not None and cached[1] - now > LEAF_RENEW:
                self._contexts.move_to_end(host)
                return cached[0]
        cert, expires = self.mint(host, now=now)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(["http/1.1"])
        _load_chain(context, cert + self.pem(), self._leaf_key_pem)
        with self._lock:
            self._contexts[host] = (context, expires)
            self._contexts.move_to_end(host)
            while len(self._contexts) > LEAF_CACHE:
                self._contexts.popitem(last=False)
        return context

    def mint(self, host: str, *, now: dt.datetime | None = None) -> tuple[bytes, dt.datetime]:
        """A leaf certificate (PEM) for `host` and when it expires."""
        now = now or dt.datetime.now(dt.UTC)
        expires = now + LEAF_LIFETIME
        try:
            san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            san = x509.DNSName(host)
        ca_ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host[:64])]))
            .issuer_name(self.cert.subject)
            .public_key(self._leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(expires)
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                _key_usage(ca=False),
                critical=True,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                critical=False,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self._leaf_key.public_key()),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM), expires


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """A CA signs certificates (and CRLs); a leaf signs TLS handshakes (ECDSA)."""
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _write_new(path: Path, data: bytes, mode: int, *, replace: bool = False) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # whatever the umask
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    if replace:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # fails if another process made it meanwhile
    except FileExistsError:
        raise ConfigError(f"{path} already exists") from None
    finally:
        tmp.unlink()


def _load_chain(context: ssl.SSLContext, chain: bytes, key: bytes) -> None:
    """`load_cert_chain` reads files only; hand it memory-backed ones (the leaf key
    never touches a disk)."""
    cert_fd = os.memfd_create("cachesrv-leaf-cert")
    key_fd = os.memfd_create("cachesrv-leaf-key")
    try:
        os.write(cert_fd, chain)
        os.write(key_fd, key)
        context.load_cert_chain(f"/proc/self/fd/{cert_fd}", f"/proc/self/fd/{key_fd}")
    finally:
        os.close(cert_fd)
        os.close(key_fd)
