"""HTTPS interception end to end: `CONNECT` through the real `cachesrv serve` with real curl.

The upstreams are FakeTlsUpstreams on 127.0.0.1 whose certificates come from a test CA
that only cachesrv trusts (`[tls] upstream_ca`); curl trusts only the CA cachesrv made in
its store (`--cacert <store>/tls/ca.pem`), so a 200 proves curl talked to cachesrv and
cachesrv talked to the upstream over verified TLS. Malformed CONNECT lines and the plain
403 are in test_hostile.py.
"""

from __future__ import annotations

import itertools
import json
import random
import socket
import ssl
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import blake3
import pytest

from tests.conftest import CachesrvProcess, Upstreams, config_text, run_cli
from tests.fakes.tls import FakeTlsUpstream, TestCA, client_env

FILE = "files/demo-1.0.tar.gz"
# Pseudo-random (no compression helps) and big enough to take many TLS records.
DATA = random.Random(7).randbytes(2 * 1024 * 1024 + 17)
SMALL = "files/small-2.0.tgz"
SMALL_DATA = b"a small tarball\n"
CURL_PROXY_REFUSED = 56  # "CONNECT tunnel failed, response 403"
CURL_UNTRUSTED = 60


@dataclass
class Head:
    status: int
    reason: str
    headers: dict[str, str]  # names lower-cased


@dataclass
class Fetched:
    """What one curl run got: every response head in order (the proxy's
    `Connection Established` included), and each URL's body."""

    rc: int
    heads: list[Head]
    bodies: list[bytes]
    stderr: str

    @property
    def answers(self) -> list[Head]:
        """The responses to the GETs (not to the CONNECT)."""
        return [h for h in self.heads if h.reason != "Connection Established"]

    @property
    def tunnels(self) -> int:
        return sum(h.reason == "Connection Established" for h in self.heads)


def parse_heads(raw: bytes) -> list[Head]:
    heads = []
    for block in raw.decode("latin-1").split("\r\n\r\n"):
        if not block.startswith("HTTP/"):
            continue
        status_line, *lines = block.split("\r\n")
        _, code, reason = (status_line.split(" ", 2) + [""])[:3]
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines)}
        heads.append(Head(int(code), reason, headers))
    return heads


@dataclass
class Proxy:
    """A running `cachesrv serve` and how to reach it."""

    srv: CachesrvProcess
    store: Path
    config: Path
    tmp: Path
    _outputs: Iterator[int] = field(default_factory=itertools.count)

    @property
    def cacert(self) -> Path:
        return self.store / "tls" / "ca.pem"

    def curl(self, *urls: str, proxy: str | None = None, trust: bool = True) -> Fetched:
        """GET `urls` in one curl run through the server as HTTP proxy."""
        outputs = [self.tmp / f"body-{next(self._outputs)}" for _ in urls]
        cmd = ["curl", "-q", "-sS", "--max-time", "30", "-D", "-"]
        cmd += ["--proxy", proxy or self.srv.url]
        if trust:
            cmd += ["--cacert", str(self.cacert)]
        for url, out in zip(urls, outputs, strict=True):
            cmd += ["-o", str(out), url]
        done = subprocess.run(cmd, env=client_env(), capture_output=True, timeout=60)
        bodies = [out.read_bytes() if out.exists() else b"" for out in outputs]
        return Fetched(done.returncode, parse_heads(done.stdout), bodies, done.stderr.decode())

    def get(self, path: str) -> tuple[Head, bytes]:
        """A plain (no proxy) request to the server itself."""
        out = self.tmp / f"direct-{next(self._outputs)}"
        cmd = ["curl", "-q", "-sS", "--max-time", "30", "-D", "-", "-o", str(out)]
        done = subprocess.run(
            [*cmd, self.srv.url + path], env=client_env(), capture_output=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return parse_heads(done.stdout)[-1], out.read_bytes()

    def entries(self) -> list[dict[str, object]]:
        head, body = self.get("/_cachesrv/api/v1/entries")
        assert head.status == 200
        return json.loads(body)  # type: ignore[no-any-return]


def raw_connect(port: int, authority: str) -> tuple[int, str, bytes, socket.socket]:
    """Send `CONNECT authority` as-is; the status, reason, body and the open socket."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    (parsed,) = parse_heads(head + b"\r\n\r\n")
    length = int(parsed.headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, body
        body += chunk
    return parsed.status, parsed.reason, body, sock


def refused(port: int, authority: str) -> str:
    """The body of the 403 a CONNECT gets (asserted)."""
    status, reason, body, sock = raw_connect(port, authority)
    sock.close()
    assert status == 403, (authority, status, reason, body)
    return body.decode()


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture
def upstream_ca(tmp_path: Path) -> TestCA:
    return TestCA.create(tmp_path / "upstream-ca")


@pytest.fixture
def www(tmp_path: Path) -> Path:
    root = tmp_path / "www"
    (root / "files").mkdir(parents=True)
    (root / FILE).write_bytes(DATA)
    (root / SMALL).write_bytes(SMALL_DATA)
    return root


@pytest.fixture
def up(www: Path, upstream_ca: TestCA) -> Iterator[FakeTlsUpstream]:
    """The configured upstream."""
    with FakeTlsUpstream(www, upstream_ca) as server:
        yield server


@pytest.fixture
def other(www: Path, upstream_ca: TestCA) -> Iterator[FakeTlsUpstream]:
    """Another HTTPS server cachesrv would trust, but not a configured upstream."""
    with FakeTlsUpstream(www, upstream_ca) as server:
        yield server


StartProxy = Callable[..., Proxy]


@pytest.fixture
def start_proxy(
    tmp_path: Path, cachesrv: Callable[..., CachesrvProcess], upstream_ca: TestCA
) -> StartProxy:
    """Start `cachesrv serve` with `upstreams`, `[tls] upstream_ca` = the test CA and
    `intercept`; `mode="offline"` for an offline server."""

    def start(
        upstreams: Upstreams, *, intercept: tuple[str, ...] = (), mode: str = "online"
    ) -> Proxy:
        config = tmp_path / "cachesrv.toml"
        tls = f"[tls]\nupstream_ca = {json.dumps(str(upstream_ca.pem_path))}\n"
        tls += f"intercept = {json.dumps(list(intercept))}\n"
        config.write_text(config_text(upstreams) + tls)
        store = tmp_path / "store"
        srv = cachesrv("--config", config, "--store", store, "--mode", mode)
        return Proxy(srv, store, config, tmp_path)

    return start


# -- recording and replay ---------------------------------------------------------------


def test_get_through_a_tunnel_records_then_hits_and_shares_the_https_entry(
    start_proxy: StartProxy, up: FakeTlsUpstream
) -> None:
    proxy = start_proxy({"files": ("generic", up.url)})
    url = f"{up.url}/{FILE}"

    first = proxy.curl(url)
    assert first.rc == 0, first.stderr
    assert first.tunnels == 1
    (answer,) = first.answers
    assert (answer.status, answer.headers["x-cachesrv-status"]) == (200, "recorded")
    assert first.bodies == [DATA]
    assert up.count() == 1

    second = proxy.curl(url)
    (answer,) = second.answers
    assert (answer.status, answer.headers["x-cachesrv-status"]) == (200, "hit")
    assert second.bodies == [DATA]
    digest = answer.headers["x-cachesrv-digest"]
    assert digest == blake3.blake3(DATA).hexdigest()
    assert up.count() == 1

    # apt-cacher-ng's spelling of the same URL, as a path and as a proxy request.
    head, body = proxy.get(f"/HTTPS///127.0.0.1:{up.port}/{FILE}")
    assert (head.status, head.headers["x-cachesrv-status"]) == (200, "hit")
    assert head.headers["x-cachesrv-digest"] == digest and body == DATA
    plain = proxy.curl(f"http://HTTPS///127.0.0.1:{up.port}/{FILE}")
    assert plain.tunnels == 0
    assert plain.answers[0].headers["x-cachesrv-digest"] == digest and plain.bodies == [DATA]
    assert up.count() == 1

    entries = proxy.entries()
    assert [(e["key"], e["upstream"], e["digest"]) for e in entries] == [(url, "files", digest)]


def test_two_urls_in_one_tunnel(start_proxy: StartProxy, up: FakeTlsUpstream) -> None:
    proxy = start_proxy({"files": ("generic", up.url)})
    got = proxy.curl(f"{up.url}/{FILE}", f"{up.url}/files/missing.tgz", f"{up.url}/{SMALL}")
    assert got.rc == 0, got.stderr
    assert got.tunnels == 1  # curl kept the tunnel for all three
    assert [h.status for h in got.answers] == [200, 404, 200]
    assert got.bodies[0] == DATA and got.bodies[2] == SMALL_DATA
    assert [r.path for r in up.requests] == ["/" + FILE, "/files/missing.tgz", "/" + SMALL]
    # And again, from the store, in one tunnel.
    again = proxy.curl(f"{up.url}/{SMALL}", f"{up.url}/{FILE}")
    assert again.tunnels == 1
    assert [h.headers["x-cachesrv-status"] for h in again.answers] == ["hit", "hit"]
    assert again.bodies == [SMALL_DATA, DATA]
    assert up.count() == 3


def test_proxy_credentials_route_a_tunnel_into_a_seed(
    start_proxy: StartProxy, up: FakeTlsUpstream
) -> None:
    proxy = start_proxy({"files": ("generic", up.url)})
    url = f"{up.url}/{FILE}"
    got = proxy.curl(url, proxy=f"http://seed:s1@127.0.0.1:{proxy.srv.port}")
    assert got.rc == 0, got.stderr
    assert got.answers[0].headers["x-cachesrv-status"] == "recorded"
    assert got.bodies == [DATA]
    # A hit through another seed's credentials puts the entry in that seed too.
    hit = proxy.curl(url, proxy=f"http://seed:s2@127.0.0.1:{proxy.srv.port}")
    assert hit.answers[0].headers["x-cachesrv-status"] == "hit"
    assert up.count() == 1

    head, body = proxy.get("/_cachesrv/api/v1/seeds")
    seeds = {s["name"]: s for s in json.loads(body)}
    assert set(seeds) == {"s1", "s2"}
    assert (seeds["s1"]["entries"], seeds["s1"]["bytes"]) == (1, len(DATA))
    shown = run_cli("seed", "show", "s1", "--store", proxy.store).stdout
    assert url in shown and "seed s1: 1 entries" in shown


# -- who may be reached -----------------------------------------------------------------


def test_connect_to_a_host_not_allowed_is_refused_and_nothing_leaves(
    start_proxy: StartProxy, up: FakeTlsUpstream, other: FakeTlsUpstream
) -> None:
    proxy = start_proxy({"files": ("generic", up.url)})
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)
        silent = listener.getsockname()[1]

        got = proxy.curl(f"https://localhost:{other.port}/{FILE}")
        assert got.rc == CURL_PROXY_REFUSED, got.stderr
        assert [h.status for h in got.heads] == [403]
        body = refused(proxy.srv.port, f"localhost:{other.port}")
        assert "[tls] intercept" in body and f'"localhost:{other.port}"' in body
        assert "[tls] intercept" in refused(proxy.srv.port, f"127.0.0.1:{silent}")
        assert "[tls] intercept" in refused(proxy.srv.port, f"example.org:{silent}")

        # The configured upstream still works, after which nothing has knocked.
        assert proxy.curl(f"{up.url}/{SMALL}").bodies == [SMALL_DATA]
        with pytest.raises(BlockingIOError):
            listener.accept()
    assert other.count() == 0
    assert [e["key"] for e in proxy.entries()] == [f"{up.url}/{SMALL}"]


def test_connect_only_to_the_configured_port(
    start_proxy: StartProxy, up: FakeTlsUpstream, other: FakeTlsUpstream
) -> None:
    proxy = start_proxy({"files": ("generic", up.url)})
    # Same host, another port: refused, though cachesrv would trust that server.
    got = proxy.curl(f"https://127.0.0.1:{other.port}/{FILE}")
    assert got.rc == CURL_PROXY_REFUSED
    refused(proxy.srv.port, f"127.0.0.1:{other.port}")
    refused(proxy.srv.port, "127.0.0.1:443")  # the default port is not the named one
    refused(proxy.srv.port, f"localhost:{up.port}")  # nor is another name of the host
    assert other.count() == 0 and up.count() == 0

    ok = proxy.curl(f"{up.url}/{FILE}")
    assert ok.rc == 0 and ok.bodies == [DATA]
    assert up.count() == 1


def test_tls_intercept_allows_listed_hosts_and_ports(
    start_proxy: StartProxy, up: FakeTlsUpstream, other: FakeTlsUpstream
) -> None:
    proxy = start_proxy(
        {"files": ("generic", up.url)}, intercept=(f"localhost:{other.port}", "*.example.test")
    )
    url = f"https://localhost:{other.port}/{SMALL}"
    got = proxy.curl(url)
    assert got.rc == 0, got.stderr
    assert got.answers[0].headers["x-cachesrv-status"] == "recorded"
    assert got.bodies == [SMALL_DATA]
    assert [(r.path, r.status) for r in other.requests] == [("/" + SMALL, 200)]
    assert [(e["key"], e["upstream"]) for e in proxy.entries()] == [(url, "_intercept")]

    # The entry names a host:port; the same server under another name is not listed.
    refused(proxy.srv.port, f"127.0.0.1:{other.port}")
    # A pattern without a port means 443 only.
    assert "[tls] intercept" in refused(proxy.srv.port, "pkg.example.test:8443")
    status, reason, _, sock = raw_connect(proxy.srv.port, "pkg.example.test:443")
    assert (status, reason) == (200, "Connection Established")
    # The tunnel presents a certificate for that name from cachesrv's CA (and no
    # request is sent, so nothing resolves pkg.example.test).
    client = ssl.create_default_context(cafile=str(proxy.cacert))
    client.verify_flags |= ssl.VERIFY_X509_STRICT
    with client.wrap_socket(sock, server_hostname="pkg.example.test") as tls:
        cert = tls.getpeercert()
        assert cert is not None and cert["subjectAltName"] == (("DNS", "pkg.example.test"),)
    assert other.count() == 1


# -- TLS on either side -----------------------------------------------------------------


def test_an_upstream_certificate_from_an_untrusted_ca_is_a_502(
    tmp_path: Path, start_proxy: StartProxy, www: Path
) -> None:
    stranger_ca = TestCA.create(tmp_path / "stranger-ca")
    with FakeTlsUpstream(www, stranger_ca) as bad:
        proxy = start_proxy({"bad": ("generic", bad.url)})
        got = proxy.curl(f"{bad.url}/{FILE}")
        assert got.rc == 0, got.stderr  # curl trusted cachesrv; cachesrv did not trust bad
        (answer,) = got.answers
        assert answer.status == 502
        assert "TLS certificate not trusted" in got.bodies[0].decode()
        assert "[tls] upstream_ca" in got.bodies[0].decode()
        assert DATA[:64] not in got.bodies[0]
        assert bad.count() == 0  # the handshake failed: no request reached it
        assert proxy.entries() == []


def test_a_client_that_does_not_trust_the_ca_fails_and_the_next_is_served(
    start_proxy: StartProxy, up: FakeTlsUpstream
) -> None:
    proxy = start_proxy({"files": ("generic", up.url)})
    distrust = proxy.curl(f"{up.url}/{FILE}", trust=False)
    assert distrust.rc == CURL_UNTRUSTED, distrust.stderr
    assert distrust.bodies == [b""]
    # A client that speaks plain HTTP into the tunnel is cut off too.
    status, _, _, sock = raw_connect(proxy.srv.port, f"127.0.0.1:{up.port}")
    assert status == 200
    with sock:
        sock.sendall(b"GET /" + FILE.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            answer = sock.recv(4096)
        except ConnectionResetError:
            answer = b""
        assert answer == b""  # closed, and no HTTP answer where TLS was due
    assert up.count() == 0

    ok = proxy.curl(f"{up.url}/{FILE}")
    assert ok.rc == 0 and ok.bodies == [DATA]
    assert up.count() == 1


def test_paths_inside_a_tunnel_are_the_upstream_s(
    start_proxy: StartProxy, up: FakeTlsUpstream, www: Path
) -> None:
    (www / "metrics").write_bytes(b"the upstream's own metrics page\n")
    (www / "_cachesrv").mkdir()
    (www / "_cachesrv" / "ca.pem").write_bytes(b"the upstream's own file\n")
    proxy = start_proxy({"files": ("generic", up.url)})
    got = proxy.curl(f"{up.url}/metrics", f"{up.url}/_cachesrv/ca.pem")
    assert got.bodies == [b"the upstream's own metrics page\n", b"the upstream's own file\n"]


# -- offline ----------------------------------------------------------------------------


def test_offline_miss_through_a_tunnel(start_proxy: StartProxy, up: FakeTlsUpstream) -> None:
    proxy = start_proxy({"files": ("generic", up.url)}, mode="offline")
    url = f"{up.url}/files/never-1.0.tar.gz"
    got = proxy.curl(url)
    assert got.rc == 0, got.stderr
    assert got.tunnels == 1
    (answer,) = got.answers
    assert (answer.status, answer.reason) == (404, "Not in offline seed")
    assert answer.headers["x-cachesrv-status"] == "offline-miss"
    text = got.bodies[0].decode()
    assert f"url:    {url}\n" in text and "never recorded" in text
    assert f"cachesrv prefetch {url}" in text
    assert up.count() == 0

    proxy.srv.stop()
    misses = run_cli("misses", "--format", "urls", "--store", proxy.store).stdout
    assert misses.splitlines() == [url]
    assert up.count() == 0


def _early_hello_handshake(port: int, authority: str, cafile: Path) -> bytes:
    """CONNECT with the TLS ClientHello in the same write (not waiting for the 200),
    then finish the handshake and GET `/small`; the answer's head."""
    host = authority.rsplit(":", 1)[0]
    ctx = ssl.create_default_context(cafile=str(cafile))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=host)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    connect = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(connect + outgoing.read())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        incoming.write(rest)
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(outgoing.read())
                incoming.write(sock.recv(65536))
        tls.write(
            f"GET /{SMALL} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n".encode()
        )
        sock.sendall(outgoing.read())
        answer = b""
        while not _complete(answer):
            try:
                chunk = tls.read(65536)
            except ssl.SSLWantReadError:
                chunk = sock.recv(65536)
                assert chunk, answer
                incoming.write(chunk)
                continue
            assert chunk, answer
            answer += chunk
        return answer


def _complete(answer: bytes) -> bool:
    head, sep, body = answer.partition(b"\r\n\r\n")
    if not sep:
        return False
    (parsed,) = parse_heads(head + sep)
    return len(body) >= int(parsed.headers.get("content-length", "0"))


def test_a_client_hello_sent_with_the_connect_is_not_lost(
    start_proxy: StartProxy, up: FakeTlsUpstream
) -> None:
    proxy = start_proxy({"files": ("generic", up.url)})
    answer = _early_hello_handshake(proxy.srv.port, f"127.0.0.1:{up.port}", proxy.cacert)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert body == SMALL_DATA
