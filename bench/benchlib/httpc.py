"""A small blocking HTTP/1.1 client: keep-alive, 1 MiB reads, sha256 of every body.

Used for the cold runs (one keep-alive connection, time to first byte), the hash
check of every file through every target, and the 100 clients on one cold file.
Every socket operation has a timeout, so nothing here waits forever.
"""

from __future__ import annotations

import hashlib
import mmap
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .corpus import File

READ = 1 << 20


class HttpError(Exception):
    pass


class NoStatus(HttpError):
    """The connection closed before the status line: nothing of an answer came."""


@dataclass
class Reply:
    status: int
    length: int
    sha256: str
    ttfb: float  # seconds from sending the request to the status line
    elapsed: float  # seconds from sending the request to the body's last byte
    headers: dict[str, str]
    matches: bool | None = None  # body == `expect`, when the request gave one


class Conn:
    """One keep-alive connection to 127.0.0.1:`port`, reopened when the server closes it."""

    def __init__(self, port: int, timeout: float = 120.0) -> None:
        self.port = port
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.rfile: object = None
        self.connects = 0
        self.retries = 0
        self.used = 0  # requests answered on the current connection
        self.buf = bytearray(READ)

    def connect(self) -> None:
        self.close()
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.rfile = sock.makefile("rb", buffering=65536)
        self.connects += 1
        self.used = 0

    def close(self) -> None:
        if self.rfile is not None:
            self.rfile.close()  # type: ignore[attr-defined]
            self.rfile = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def get(self, path: str, extra: str = "", expect: mmap.mmap | None = None) -> Reply:
        """GET `path`. Like any HTTP client, a request that a reused keep-alive
        connection drops before the status line is sent once more on a new one."""
        if self.sock is None:
            self.connect()
        try:
            reply = self._get(path, extra, expect)
        except (OSError, HttpError) as exc:
            stale = self.used > 0 and isinstance(exc, (ConnectionError, NoStatus))
            self.close()
            if not stale:
                raise
            self.retries += 1
            self.connect()
            try:
                reply = self._get(path, extra, expect)
            except (OSError, HttpError):
                self.close()
                raise
        self.used += 1
        return reply

    def _get(self, path: str, extra: str, expect: mmap.mmap | None) -> Reply:
        assert self.sock is not None
        rfile = self.rfile
        req = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n{extra}\r\n"
        t0 = time.perf_counter()
        self.sock.sendall(req.encode())
        line = rfile.readline(65537)  # type: ignore[attr-defined]
        ttfb = time.perf_counter() - t0
        if not line:
            raise NoStatus("connection closed before the status line")
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise HttpError(f"bad status line {line[:80]!r}")
        status = int(parts[1])
        headers: dict[str, str] = {}
        while True:
            h = rfile.readline(65537)  # type: ignore[attr-defined]
            if h in (b"\r\n", b"\n"):
                break
            if not h:
                raise HttpError("connection closed in the headers")
            k, _, v = h.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        digest = Compare(expect) if expect is not None else hashlib.sha256()
        length = 0
        mv = memoryview(self.buf)
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int(rfile.readline(1024).split(b";")[0], 16)  # type: ignore[attr-defined]
                if size == 0:
                    while rfile.readline(65537) not in (b"\r\n", b"\n", b""):  # type: ignore[attr-defined]
                        pass
                    break
                length += self._body(size, mv, digest)
                rfile.readline(3)  # type: ignore[attr-defined]
        elif "content-length" in headers:
            length = self._body(int(headers["content-length"]), mv, digest)
        else:
            length = self._body(-1, mv, digest)
            self.close()
        if headers.get("connection", "").lower() == "close":
            self.close()
        elapsed = time.perf_counter() - t0
        if isinstance(digest, Compare):
            ok = digest.same and length == len(digest.expect)
            return Reply(status, length, "", ttfb, elapsed, headers, ok)
        return Reply(status, length, digest.hexdigest(), ttfb, elapsed, headers)

    def _body(self, size: int, mv: memoryview, digest: hashlib._Hash | Compare) -> int:
        got = 0
        rfile = self.rfile
        while size < 0 or got < size:
            want = READ if size < 0 else min(READ, size - got)
            n = rfile.readinto(mv[:want])  # type: ignore[attr-defined]
            if not n:
                if size < 0:
                    break
                raise HttpError(f"connection closed after {got} of {size} body bytes")
            digest.update(mv[:n])
            got += n
        return got


class Compare:
    """A stand-in for a hash object: compares the body with the file itself (memcmp
    speed; for the crowd, whose 100 bodies would cost minutes of sha256)."""

    def __init__(self, expect: mmap.mmap) -> None:
        self.expect = expect
        self.offset = 0
        self.same = True

    def update(self, chunk: memoryview) -> None:
        n = len(chunk)
        if self.same:
            self.same = chunk.tobytes() == self.expect[self.offset : self.offset + n]
        self.offset += n


def verify(reply: Reply, f: File) -> str | None:
    """None when `reply` carries exactly `f`; else what is wrong."""
    if reply.status != 200:
        return f"{f.path}: HTTP {reply.status}"
    if reply.length != f.size:
        return f"{f.path}: {reply.length} bytes, want {f.size}"
    if reply.matches is not None:
        return None if reply.matches else f"{f.path}: WRONG BODY (differs from the file)"
    if reply.sha256 != f.sha256:
        return f"{f.path}: WRONG BODY (sha256 {reply.sha256[:12]}, want {f.sha256[:12]})"
    return None


@dataclass
class CheckResult:
    checked: int = 0
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    bytes: int = 0

    @property
    def ok(self) -> int:
        return self.checked - len(self.failures)


def check_all(
    port: int, prefix: str, files: Sequence[File], threads: int = 4, timeout: float = 120
) -> CheckResult:
    """GET every file once through `port` (biggest first, `threads` keep-alive
    connections) and compare length and sha256 with the corpus manifest."""
    todo = sorted(files, key=lambda f: -f.size)
    lock = threading.Lock()
    result = CheckResult()
    index = [0]

    def worker() -> None:
        conn = Conn(port, timeout)
        try:
            while True:
                with lock:
                    if index[0] >= len(todo):
                        return
                    f = todo[index[0]]
                    index[0] += 1
                try:
                    reply = conn.get(prefix + f.path)
                    problem = verify(reply, f)
                    n = reply.length
                except (OSError, HttpError) as exc:
                    problem, n = f"{f.path}: {exc}", 0
                with lock:
                    result.checked += 1
                    result.bytes += n
                    if problem:
                        result.failures.append(problem)
        finally:
            conn.close()

    t0 = time.perf_counter()
    pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    result.seconds = time.perf_counter() - t0
    return result


@dataclass
class SequenceResult:
    seconds: float
    ttfb_first: float
    ttfb_median: float
    response_p99: float  # request sent to last body byte
    response_max: float
    failures: list[str]
    connects: int
    retries: int


def fetch_sequence(port: int, prefix: str, files: Sequence[File]) -> SequenceResult:
    """GET `files` one after the other on one keep-alive connection."""
    conn = Conn(port)
    failures: list[str] = []
    ttfbs: list[float] = []
    totals: list[float] = []
    t0 = time.perf_counter()
    try:
        conn.connect()
        for f in files:
            try:
                reply = conn.get(prefix + f.path)
                ttfbs.append(reply.ttfb)
                totals.append(reply.elapsed)
                problem = verify(reply, f)
            except (OSError, HttpError) as exc:
                problem = f"{f.path}: {exc}"
            if problem:
                failures.append(problem)
    finally:
        conn.close()
    seconds = time.perf_counter() - t0
    ttfbs_sorted = sorted(ttfbs) or [float("nan")]
    totals_sorted = sorted(totals) or [float("nan")]
    return SequenceResult(
        seconds,
        ttfbs[0] if ttfbs else float("nan"),
        ttfbs_sorted[len(ttfbs_sorted) // 2],
        totals_sorted[min(len(totals_sorted) - 1, len(totals_sorted) * 99 // 100)],
        totals_sorted[-1],
        failures,
        conn.connects,
        conn.retries,
    )


@dataclass
class CrowdResult:
    clients: int
    correct: int
    seconds: float  # from the common start to the last client's last byte
    ttfb_max: float
    slowest: float
    failures: list[str]


def crowd(
    port: int, prefix: str, f: File, original: Path, clients: int, timeout: float = 300
) -> CrowdResult:
    """`clients` connections, opened first, then all GET `f` at once; every body is
    compared byte for byte with `original` (the corpus file, whose sha256 the manifest
    holds: checked once here first)."""
    with original.open("rb") as fh:
        expect = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    if hashlib.sha256(expect).hexdigest() != f.sha256:
        raise RuntimeError(f"{original} does not match the corpus manifest")
    conns = [Conn(port, timeout) for _ in range(clients)]
    for c in conns:
        c.connect()
    barrier = threading.Barrier(clients + 1, timeout=60)
    results: list[Reply | str] = ["not run"] * clients

    def one(i: int) -> None:
        try:
            barrier.wait()
            reply = conns[i].get(prefix + f.path, expect=expect)
            results[i] = verify(reply, f) or reply
        except Exception as exc:  # noqa: BLE001 - every failure is a result here
            results[i] = f"client {i}: {exc!r}"
        finally:
            conns[i].close()

    pool = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(clients)]
    for t in pool:
        t.start()
    t0 = time.perf_counter()
    barrier.wait()
    for t in pool:
        t.join(timeout + 60)
    seconds = time.perf_counter() - t0
    expect.close()
    replies = [r for r in results if isinstance(r, Reply)]
    failures = [r for r in results if isinstance(r, str)]
    return CrowdResult(
        clients,
        len(replies),
        seconds,
        max((r.ttfb for r in replies), default=float("nan")),
        max((r.elapsed for r in replies), default=float("nan")),
        failures,
    )
