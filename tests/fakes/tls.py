"""A fake HTTPS upstream with its own test CA, serving files and real git repositories.

For HTTPS interception tests: the upstream must be a real TLS server whose certificate the
client trusts only through a CA the test made, so a test can show which side (cachesrv or
the upstream) a client really talked to::

    ca = TestCA.create(tmp_path / "ca")
    sha = make_git_repo(tmp_path / "git")
    with FakeTlsUpstream(tmp_path / "www", ca, git_root=tmp_path / "git") as up:
        env = client_env(GIT_SSL_CAINFO=str(ca.pem_path))
        subprocess.run(["git", "clone", f"{up.url}/git/demo.git", dest], env=env, check=True)
        assert up.count("/git/") > 0

* :class:`TestCA`: an ECDSA P-256 CA made with ``cryptography``, issuing leaf certificates
  that strict verifiers accept (OpenSSL 3 for curl, GnuTLS for Debian's git, Python's ssl
  with ``VERIFY_X509_STRICT``);
* :class:`FakeTlsUpstream`: :class:`~tests.fakes.upstream.FakeUpstream` over TLS (same
  files, faults and request log), plus smart-HTTP git under ``/git/`` through the real
  ``git http-backend`` CGI;
* :func:`make_git_repo`: a deterministic bare repository (same commit ids on every run);
* :func:`client_env`: ``os.environ`` without anything that would make a client bypass or
  second-guess the test (proxies, CA bundle overrides, git and curl settings).
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import ssl
import subprocess
import tempfile
from pathlib import Path
from typing import Self

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.fakes.upstream import FakeUpstream, FaultKind

_CHUNK = 256 * 1024
_DAY = datetime.timedelta(days=1)

# Variables that would send a client through a proxy or make it trust (or distrust) other
# CAs than the one it is given on the command line; compared lower-cased.
_SHIELDED = {
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "ftp_proxy",
    "ssl_cert_file",
    "ssl_cert_dir",
    "curl_ca_bundle",
    "requests_ca_bundle",
    "nix_ssl_cert_file",
}


def client_env(**extra: str) -> dict[str, str]:
    """``os.environ`` for a curl or git subprocess talking to the fakes, plus ``extra``.

    Drops every proxy variable, every CA bundle override (``SSL_CERT_FILE``,
    ``CURL_CA_BUNDLE``, ...) and every ``GIT_*`` variable (``GIT_SSL_CAINFO``, ``GIT_DIR``
    from a hook, ...); isolates git from the machine's and the user's config and never lets
    it prompt. Give curl ``-q`` as its first argument to skip ``~/.curlrc`` too.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if k.lower() not in _SHIELDED and not k.startswith("GIT_")
    }
    env.update(GIT_CONFIG_GLOBAL="/dev/null", GIT_CONFIG_NOSYSTEM="1", GIT_TERMINAL_PROMPT="0")
    env.update(extra)
    return env


# -- the CA ------------------------------------------------------------------------------


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


class TestCA:
    """A throw-away certificate authority whose files live in ``directory``.

    ``pem_path`` is the CA certificate (PEM): give it to clients (``curl --cacert``,
    ``GIT_SSL_CAINFO``, ``ssl.create_default_context(cafile=...)``). Leaf certificates and
    keys are written beside it, one pair per :meth:`issue` call.
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(
        self, directory: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate
    ) -> None:
        self.directory = directory
        self.key = key
        self.cert = cert
        self.pem_path: Path = directory / "ca.pem"
        self._issued = 0

    @classmethod
    def create(cls, directory: Path, name: str = "cachesrv test upstream CA") -> Self:
        """Make a new CA (ECDSA P-256, 10 years) and write ``directory/ca.pem``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cachesrv tests"),
                x509.NameAttribute(NameOID.COMMON_NAME, name),
            ]
        )
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _DAY)  # tolerate a client clock slightly behind
            .not_valid_after(now + 3650 * _DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        ca = cls(directory, key, cert)
        ca.pem_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_private(
            directory / "ca.key",
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        return ca

    def issue(self, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> tuple[Path, Path]:
        """Issue a server certificate for ``hosts``; return ``(cert_path, key_path)`` (PEM).

        IP addresses become ``IPAddress`` SANs, anything else ``DNSName`` SANs; the subject
        CN is ``hosts[0]`` (informational: verifiers only look at the SANs).
        """
        if not hosts:
            raise ValueError("a server certificate needs at least one host")
        sans: list[x509.GeneralName] = []
        for host in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        key = ec.generate_private_key(ec.SECP256R1())
        ca_ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _DAY)
            .not_valid_after(now + 365 * _DAY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski.value),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        self._issued += 1
        cert_path = self.directory / f"server-{self._issued}.pem"
        key_path = self.directory / f"server-{self._issued}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_private(
            key_path,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        return cert_path, key_path

    def server_context(self, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> ssl.SSLContext:
        """A server-side TLS context presenting a new leaf certificate for ``hosts``."""
        cert_path, key_path = self.issue(hosts)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_path, key_path)
        return context


# -- the upstream ------------------------------------------------------------------------


class FakeTlsUpstream(FakeUpstream):
    """:class:`FakeUpstream` over HTTPS on ``127.0.0.1:<random port>``, plus smart-HTTP git.

    ``url`` is ``"https://127.0.0.1:PORT"``; the certificate (from ``ca``) is valid for
    ``127.0.0.1`` and ``localhost``. Files, faults and the request log work exactly as in
    :class:`FakeUpstream`. With ``git_root``, every path under ``/git/`` goes to the real
    ``git http-backend`` (``/git/demo.git/...`` is the repository ``git_root/demo.git``),
    any method; those requests are logged too, and ``status``/``hang`` faults apply to
    them. Anything git writes to stderr is kept in ``git_stderr`` (one entry per request
    that wrote some), for debugging a failed clone.
    """

    def __init__(self, root: Path, ca: TestCA, git_root: Path | None = None) -> None:
        super().__init__(root)
        self._name = f"FakeTlsUpstream({self.root})"
        self.ca = ca
        self.git_root: Path | None = Path(git_root).resolve() if git_root is not None else None
        self.git_stderr: list[str] = []

    async def _setup(self) -> None:
        self.port = await self._listen(self._handle, ssl=self.ca.server_context())
        self.url = f"https://127.0.0.1:{self.port}"

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if self.git_root is None or not request.path.startswith("/git/"):
            return await super()._handle(request)
        fault = self._take_fault(request.path, {FaultKind.STATUS, FaultKind.HANG})
        if fault is not None and fault.kind is FaultKind.HANG:
            self._record(request, 0, fault)
            return await self._hang(request)
        if fault is not None:
            self._record(request, fault.code, fault)
            return web.Response(status=fault.code, reason=fault.reason, text="injected fault\n")
        return await self._git(request, self.git_root)

    async def _git(self, request: web.BaseRequest, git_root: Path) -> web.StreamResponse:
        """Run the request through ``git http-backend`` (CGI/1.1) and stream its answer."""
        headers = request.headers
        env = client_env(
            GIT_PROJECT_ROOT=str(git_root),
            GIT_HTTP_EXPORT_ALL="1",
            GATEWAY_INTERFACE="CGI/1.1",
            SERVER_PROTOCOL=f"HTTP/{request.version.major}.{request.version.minor}",
            REQUEST_METHOD=request.method,
            PATH_INFO=request.path.removeprefix("/git"),
            QUERY_STRING=request.query_string,
            CONTENT_TYPE=headers.get("Content-Type", ""),
            REMOTE_ADDR=request.remote or "127.0.0.1",
        )
        # aiohttp inflates gzip/deflate/br/zstd request bodies itself (its auto_decompress,
        # on by default) and keeps the Content-Encoding header: git clients gzip any
        # upload-pack request over 1 KiB. Telling git the body is gzip would make it
        # inflate plain bytes ("fatal: failed to inflate request"), and the Content-Length
        # is the compressed one; so for such a body git gets neither and reads to EOF, as
        # for a chunked request.
        encoding = headers.get("Content-Encoding", "")
        inflated = encoding.strip().lower() in {"gzip", "deflate", "br", "zstd"}
        if encoding and not inflated:
            env["HTTP_CONTENT_ENCODING"] = encoding
        if "Content-Length" in headers and not inflated:
            env["CONTENT_LENGTH"] = headers["Content-Length"]
        # Protocol v2 needs GIT_PROTOCOL in upload-pack's environment; http-backend (2.34+)
        # also copies HTTP_GIT_PROTOCOL there itself. Without it git silently serves v0.
        if "Git-Protocol" in headers:
            env["GIT_PROTOCOL"] = env["HTTP_GIT_PROTOCOL"] = headers["Git-Protocol"]

        proc = await asyncio.create_subprocess_exec(
            "git",
            "http-backend",
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        feed = asyncio.create_task(_feed(request, proc.stdin))
        errors = asyncio.create_task(proc.stderr.read())
        try:
            status, reason, cgi_headers = await _read_cgi_head(proc.stdout)
            self._record(request, status, None)
            resp = web.StreamResponse(status=status, reason=reason)
            for name, value in cgi_headers:
                resp.headers.add(name, value)
            try:
                await resp.prepare(request)
                while chunk := await proc.stdout.read(_CHUNK):
                    await resp.write(chunk)
                await resp.write_eof()
            except ConnectionError:
                pass  # the client went away mid-answer
            await feed
            await proc.wait()
            stderr = await errors
            if stderr:
                with self._lock:
                    self.git_stderr.append(stderr.decode(errors="replace"))
            return resp
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            for task in (feed, errors):
                task.cancel()
            await asyncio.gather(feed, errors, return_exceptions=True)


async def _feed(request: web.BaseRequest, stdin: asyncio.StreamWriter) -> None:
    """Copy the request body to the CGI's stdin, then close it (EOF ends the body)."""
    try:
        async for chunk in request.content.iter_any():
            stdin.write(chunk)
            await stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass  # git answered without reading the whole body (a 4xx, say)
    finally:
        stdin.close()


async def _read_cgi_head(
    stdout: asyncio.StreamReader,
) -> tuple[int, str | None, list[tuple[str, str]]]:
    """Parse a CGI response's header block: ``(status, reason, other headers)``.

    ``Status: 404 Not Found`` sets the status (default 200, or 302 with a ``Location``);
    a CGI that dies before finishing its headers gives a 502.
    """
    status, reason = 200, None
    headers: list[tuple[str, str]] = []
    while True:
        line = await stdout.readline()
        if not line.endswith(b"\n"):
            return 502, "CGI died before its headers", []
        text = line.decode("latin-1").rstrip("\r\n")
        if not text:
            break
        name, _, value = text.partition(":")
        name, value = name.strip(), value.strip()
        if name.lower() == "status":
            code, _, phrase = value.partition(" ")
            status, reason = int(code), phrase or None
        else:
            headers.append((name, value))
    if reason is None and status == 200 and any(n.lower() == "location" for n, _ in headers):
        status = 302
    return status, reason, headers


# -- the repository ----------------------------------------------------------------------

_GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "Cachesrv Tests",
    "GIT_AUTHOR_EMAIL": "tests@cachesrv.invalid",
    "GIT_COMMITTER_NAME": "Cachesrv Tests",
    "GIT_COMMITTER_EMAIL": "tests@cachesrv.invalid",
}


def _git(cwd: Path, *args: str, date: str = "2024-01-01T00:00:00+00:00") -> str:
    env = client_env(GIT_AUTHOR_DATE=date, GIT_COMMITTER_DATE=date, **_GIT_IDENTITY)
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    )
    return done.stdout.strip()


def make_git_repo(git_root: Path, name: str = "demo.git") -> str:
    """Create the bare repository ``git_root/name``; return its HEAD commit id.

    Two commits on ``main`` (HEAD): text files, a binary file (every byte value) and an
    executable script; the annotated tag ``v1.0`` on the first commit. Names, emails and
    dates are fixed and nothing is signed, so the ids are the same on every run.
    """
    bare = Path(git_root) / name
    bare.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="make-git-repo-") as tmp:
        work = Path(tmp)
        _git(work, "init", "--quiet", "--initial-branch=main")
        (work / "README.md").write_text("# demo\n\nA repository served by FakeTlsUpstream.\n")
        (work / "src").mkdir()
        (work / "src" / "hello.py").write_text('print("hello")\n')
        (work / "data.bin").write_bytes(bytes(range(256)) * 64)
        _git(work, "add", "--all")
        _git(work, "commit", "--quiet", "--no-gpg-sign", "-m", "first commit")
        _git(work, "tag", "--annotate", "--no-sign", "-m", "release 1.0", "v1.0")

        date = "2024-01-02T00:00:00+00:00"
        (work / "README.md").write_text("# demo\n\nA repository served by FakeTlsUpstream.\n\n2\n")
        (work / "run.sh").write_text("#!/bin/sh\necho run\n")
        (work / "run.sh").chmod(0o755)
        _git(work, "add", "--all", date=date)
        _git(work, "commit", "--quiet", "--no-gpg-sign", "-m", "second commit", date=date)

        _git(bare.parent, "init", "--quiet", "--bare", "--initial-branch=main", name)
        _git(work, "push", "--quiet", str(bare), "main", "v1.0")
    return _git(bare, "rev-parse", "HEAD")
