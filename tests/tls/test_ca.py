"""The local CA (cachesrv.tls.ca): its files, its leaves, and who may see its key.

Leaves are checked the way clients check them: Python's ssl with VERIFY_X509_STRICT over
a real TLS connection on 127.0.0.1, trusting only the CA's `ca.pem`.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import os
import socket
import ssl
import stat
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from cachesrv.config import Config
from cachesrv.errors import ConfigError
from cachesrv.tls.ca import LEAF_LIFETIME, LocalCA
from cachesrv.web import make_app
from tests.conftest import CACHESRV, REPO, run_cli
from tests.fakes.tls import TestCA
from tests.fakes.upstream import FakeUpstream

MakeClient = Callable[..., Awaitable[TestClient[Any, Any]]]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def fingerprint(pem: bytes) -> str:
    """SHA-256 of the certificate's DER, as `ca show` spells it (AB:CD:...)."""
    der = ssl.PEM_cert_to_DER_cert(pem.decode())
    return hashlib.sha256(der).hexdigest().upper()


def colons(hex_digest: str) -> str:
    return ":".join(hex_digest[i : i + 2] for i in range(0, len(hex_digest), 2))


def tls_handshake(
    server: ssl.SSLContext, cafile: Path, server_hostname: str
) -> tuple[dict[str, Any], bytes]:
    """Connect a strict client (trusting only `cafile`) to a TLS server on 127.0.0.1
    using `server`; return the peer certificate and what the server sent."""
    client = ssl.create_default_context(cafile=str(cafile))
    client.verify_flags |= ssl.VERIFY_X509_STRICT
    errors: list[BaseException] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)

        def serve() -> None:
            try:
                conn, _ = listener.accept()
                conn.settimeout(10)
                with server.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"hello")
            except (OSError, ssl.SSLError) as exc:  # the client refused us
                errors.append(exc)

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            with (
                socket.create_connection(listener.getsockname(), timeout=10) as raw,
                client.wrap_socket(raw, server_hostname=server_hostname) as tls,
            ):
                cert = tls.getpeercert()
                data = tls.recv(5)
        finally:
            thread.join(10)
    assert not thread.is_alive()
    assert cert is not None
    return cert, data


# -- files ------------------------------------------------------------------------------


def test_init_writes_a_private_key_in_a_private_dir(tmp_path: Path) -> None:
    store = tmp_path / "store"
    # A permissive umask must not leak the key (the modes are set explicitly).
    done = run_cli("ca", "init", "--store", store, umask=0)
    assert "made a new CA" in done.stdout
    tls = store / "tls"
    assert mode(tls) == 0o700
    assert mode(tls / "ca.key") == 0o600
    assert mode(tls / "ca.pem") == 0o644
    assert b"PRIVATE KEY" in (tls / "ca.key").read_bytes()
    assert (tls / "ca.pem").read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    assert sorted(p.name for p in tls.iterdir()) == ["ca.key", "ca.pem"]  # no temp files
    # A second init keeps it.
    key = (tls / "ca.key").read_bytes()
    again = run_cli("ca", "init", "--store", store)
    assert "kept the existing CA" in again.stdout
    assert (tls / "ca.key").read_bytes() == key


def test_ensure_twice_keeps_the_same_ca(tmp_path: Path) -> None:
    first = LocalCA.ensure(tmp_path / "tls")
    key = (tmp_path / "tls" / "ca.key").read_bytes()
    second = LocalCA.ensure(tmp_path / "tls")
    assert second.pem() == first.pem()
    assert second.summary().sha256_fingerprint == first.summary().sha256_fingerprint
    assert (tmp_path / "tls" / "ca.key").read_bytes() == key
    with pytest.raises(ConfigError, match="already exists"):
        LocalCA.create(tmp_path / "tls")


@pytest.mark.parametrize("key_mode", [0o640, 0o604, 0o660])
def test_a_key_others_may_read_is_refused(tmp_path: Path, key_mode: int) -> None:
    LocalCA.create(tmp_path / "tls")
    key = tmp_path / "tls" / "ca.key"
    key.chmod(key_mode)
    with pytest.raises(ConfigError, match=f"chmod 600 {key}"):
        LocalCA.load(tmp_path / "tls")
    with pytest.raises(ConfigError, match="chmod 600"):
        LocalCA.ensure(tmp_path / "tls")  # no new CA made over it either
    assert mode(key) == key_mode


def test_serve_refuses_a_readable_key_in_one_line(tmp_path: Path) -> None:
    store = tmp_path / "store"
    run_cli("ca", "init", "--store", store)
    key = store / "tls" / "ca.key"
    key.chmod(0o640)
    done = subprocess.run(
        [*CACHESRV, "serve", "--store", str(store), "--listen", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode != 0
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert "readable by group or others" in lines[0]
    assert f"chmod 600 {key}" in lines[0]
    assert "Traceback" not in done.stderr
    assert "serving" not in done.stderr


# -- leaves -----------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["example.org", "127.0.0.1", "::1"])
def test_a_minted_leaf_verifies_strictly_and_is_short_lived(tmp_path: Path, host: str) -> None:
    ca = LocalCA.create(tmp_path / "tls")
    before = time.time()
    cert, data = tls_handshake(ca.server_context(host), tmp_path / "tls" / "ca.pem", host)
    assert data == b"hello"
    # Python spells an IPv6 SAN in full (0:0:...:1): compare addresses, not text.
    sans = [
        (kind, str(ipaddress.ip_address(value.strip())) if kind == "IP Address" else value)
        for kind, value in cert["subjectAltName"]
    ]
    is_ip = host[0].isdigit() or ":" in host
    assert sans == [("IP Address", host) if is_ip else ("DNS", host)]
    not_after = ssl.cert_time_to_seconds(cert["notAfter"])
    lifetime = LEAF_LIFETIME.total_seconds()
    assert before + lifetime - 120 <= not_after <= time.time() + lifetime
    assert ssl.cert_time_to_seconds(cert["notBefore"]) <= before
    # Minted once per host, then reused.
    assert ca.server_context(host) is ca.server_context(host)


def test_a_leaf_is_only_good_for_its_host_and_this_ca(tmp_path: Path) -> None:
    ca = LocalCA.create(tmp_path / "tls")
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        tls_handshake(ca.server_context("example.org"), tmp_path / "tls" / "ca.pem", "example.net")
    stranger = TestCA.create(tmp_path / "other")
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_handshake(ca.server_context("example.org"), stranger.pem_path, "example.org")


# -- who sees what ----------------------------------------------------------------------


def test_ca_cert_prints_exactly_the_certificate(tmp_path: Path) -> None:
    store = tmp_path / "store"
    run_cli("ca", "init", "--store", store)
    done = subprocess.run(
        [*CACHESRV, "ca", "cert", "--store", str(store)],
        capture_output=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=True,
    )
    assert done.stdout == (store / "tls" / "ca.pem").read_bytes()
    assert b"PRIVATE KEY" not in done.stdout + done.stderr


def test_ca_show_prints_the_fingerprint(tmp_path: Path) -> None:
    store = tmp_path / "store"
    run_cli("ca", "init", "--store", store)
    pem = (store / "tls" / "ca.pem").read_bytes()
    shown = run_cli("ca", "show", "--store", store).stdout
    assert f"sha256:      {colons(fingerprint(pem))}\n" in shown
    assert "cachesrv local CA" in shown
    assert "PRIVATE KEY" not in shown
    assert LocalCA.load(store / "tls").summary().sha256_fingerprint == colons(fingerprint(pem))


async def raw_get(client: TestClient[Any, Any], target: str) -> tuple[int, bytes]:
    """Send one request line as-is (clients would normalise these URLs away)."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def test_the_certificate_is_served_and_the_key_never(
    aiohttp_client: MakeClient, load: Callable[..., Config], upstream: FakeUpstream
) -> None:
    config = load({"files": ("generic", upstream.url)})
    client = await aiohttp_client(make_app(config))
    pem = (config.ca_dir / "ca.pem").read_bytes()
    key = (config.ca_dir / "ca.key").read_bytes()
    resp = await client.get("/_cachesrv/ca.pem")
    assert resp.status == 200
    assert await resp.read() == pem
    assert resp.headers["Content-Type"] == "application/x-pem-file"

    own = f"http://127.0.0.1:{client.port}"
    for target in [
        "/_cachesrv/ca.key",
        "/_cachesrv/tls/ca.key",
        "/tls/ca.key",
        "/ca.key",
        "/_cachesrv/../tls/ca.key",
        "/_cachesrv/%2e%2e/tls/ca.key",
        "/_cachesrv/..%2ftls%2fca.key",
        "/_cachesrv/ca.pem/../ca.key",
        "/_cachesrv/ca.pem/../tls/ca.key",
        "/files/../tls/ca.key",
        "/files/%2e%2e/%2e%2e/tls/ca.key",
        "/@s1/tls/ca.key",
        "/HTTPS///127.0.0.1/tls/ca.key",
        f"{own}/tls/ca.key",
        f"{own}/_cachesrv/ca.key",
        f"{own}/_cachesrv/../tls/ca.key",
    ]:
        status, body = await raw_get(client, target)
        assert status >= 400, (target, status, body[:200])
        assert b"PRIVATE KEY" not in body and key not in body, target
    # Decorations of the certificate's URL give the certificate, never the key.
    status, body = await raw_get(client, "/_cachesrv/ca.pem?file=ca.key")
    assert (status, body) == (200, pem)
    assert upstream.count() == 0
