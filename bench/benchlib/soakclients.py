"""The soak's clients: real-shaped request mixes through cachesrv, every body checked.

Each `Client` is one asyncio task with its own aiohttp session (keep-alive, at most 4
connections), looping over scenarios drawn by weight until told to stop:

- `apt`: InRelease, a by-hash Packages index, sometimes another index, 1-4 .debs;
  now and then InRelease revalidated with If-Modified-Since, as apt does;
- `pip`: a project page (PEP 691 JSON or PEP 503 HTML, by Accept), then the chosen
  wheel's PEP 658 .metadata and the wheel (or the sdist), through the page's links;
- `tarball`: a tarball (or SHA256SUMS, which may change and is revalidated);
- `range`: `bytes=a-b`, `a-` or `-n` of a file, checked against the true slice;
- `head`: HEAD, Content-Length checked;
- `abort`: a download dropped midway (the connection closed by the client);
- `conditional`: a GET, then If-None-Match and If-Modified-Since with what it served;
- `repeat`: the same small file 3-8 times (hits).

Every body received completely with 200 or 206 is compared with the upstream's true
bytes (sha256 and length, or the slice); a project page must list exactly the true
files with their true hashes. A mismatch is a *wrong body*, the failure the soak
hunts. A body cut short (an exception while reading), a refused connection or an
error status is a *failure*, counted by cause: the expected result of a fault, a
kill or a restart. Files whose hash only a project page declares are asked for only
once some client has received that page (pip's order), since cachesrv can check
them only then.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import html
import json
import random
import re
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from .soakcorpus import Corpus, Dist, TrueFile

CHUNK = 256 * 1024
PIP_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, "
    "text/html; q=0.01"
)
#: Statuses cachesrv answers when an upstream fails (502), times out (504) or the store
#: is full (507): expected under faults.
EXPECTED_ERRORS = {502, 504, 507}
WEIGHTS = {
    "apt": 24,
    "pip": 20,
    "tarball": 14,
    "range": 10,
    "head": 8,
    "abort": 6,
    "conditional": 10,
    "repeat": 8,
}
_A_TAG = re.compile(r"<a\s([^>]*)>([^<]*)</a>", re.I)
_ATTR = re.compile(r'([\w-]+)="([^"]*)"')


@dataclass
class Failure:
    cause: str
    t0: float
    t1: float


@dataclass
class Tally:
    """What all clients saw (one event loop: no locks needed)."""

    requests: Counter[str] = field(default_factory=Counter)  # by request type
    scenarios: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)  # cachesrv's X-Cachesrv-Status
    verified: int = 0  # complete 200/206 bodies that matched
    verified_bytes: int = 0
    partial: int = 0  # of those, 206 slices
    range_full: int = 0  # Range asked, whole body (200) answered
    not_modified: int = 0  # 304 to a conditional request
    conditional_full: int = 0  # 200 (checked) to a conditional request
    heads_ok: int = 0
    pages_ok: int = 0
    aborted: int = 0  # dropped midway on purpose
    stopped: int = 0  # in progress when the run ended
    wrong: list[dict[str, Any]] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)  # statuses no fault explains
    harness_errors: list[str] = field(default_factory=list)
    done: int = 0  # requests finished, any way


@dataclass
class Got:
    status: int
    headers: CIMultiDictProxy[str]
    size: int
    sha256: str
    body: bytes | None  # kept when asked for (pages, ranges)
    complete: bool = True


class Client:
    def __init__(
        self,
        n: int,
        base: str,
        corpus: Corpus,
        tally: Tally,
        pages_seen: set[str],
        seed: int,
    ) -> None:
        self.n = n
        self.base = base.rstrip("/")
        self.corpus = corpus
        self.tally = tally
        self.pages_seen = pages_seen
        self.rng = random.Random(f"{seed}-client-{n}")
        self.files_host = f"127.0.0.1:{corpus.files_port}"
        self.failed_connection = False
        self.session: aiohttp.ClientSession | None = None

    # -- the loop ------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        timeout = aiohttp.ClientTimeout(total=180, sock_connect=10, sock_read=60)
        connector = aiohttp.TCPConnector(limit=4)
        async with aiohttp.ClientSession(
            timeout=timeout, connector=connector, auto_decompress=False
        ) as self.session:
            names, weights = list(WEIGHTS), list(WEIGHTS.values())
            while not stop.is_set():
                scenario = self.rng.choices(names, weights)[0]
                self.tally.scenarios[scenario] += 1
                try:
                    await getattr(self, scenario)()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # a harness bug: reported, never hidden
                    self.tally.harness_errors.append(f"{scenario}: {type(exc).__name__}: {exc}")
                # A refused connection (server down): do not spin while it restarts.
                pause = 0.3 if self.failed_connection else self.rng.uniform(0, 0.02)
                self.failed_connection = False
                await asyncio.sleep(pause)

    # -- requests ------------------------------------------------------------------------

    def served(self, path: str) -> str:
        """cachesrv's URL path for an upstream path of the corpus."""
        if path.startswith("/files/"):
            return f"/pypi/files/http/{self.files_host}{path}"
        return path  # /debian/... and /tarballs/... are served under the same names

    async def fetch(
        self,
        kind: str,
        method: str,
        path: str,
        headers: Mapping[str, str] | None = None,
        *,
        keep: bool = False,
        stop_after: int | None = None,
    ) -> Got | None:
        """One request; None when it failed (counted by cause). `stop_after`: close the
        connection once that many body bytes are in (an aborted download)."""
        assert self.session is not None
        self.tally.requests[kind] += 1
        t0 = time.monotonic()
        try:
            async with self.session.request(
                method, self.base + path, headers=headers, allow_redirects=False
            ) as resp:
                h = hashlib.sha256()
                size = 0
                parts: list[bytes] = []
                async for chunk in resp.content.iter_chunked(CHUNK):
                    h.update(chunk)
                    size += len(chunk)
                    if keep or (resp.status >= 400 and size <= 4096):
                        parts.append(chunk)  # error bodies are kept: they say why
                    if stop_after is not None and size >= stop_after and resp.status == 200:
                        resp.close()
                        return Got(resp.status, resp.headers, size, "", None, complete=False)
                self.tally.statuses[resp.status] += 1
                self.tally.outcomes[resp.headers.get("X-Cachesrv-Status", "-")] += 1
                body = b"".join(parts) if keep or resp.status >= 400 else None
                return Got(resp.status, resp.headers, size, h.hexdigest(), body)
        except asyncio.CancelledError:
            self.tally.stopped += 1
            raise
        except aiohttp.ClientPayloadError:
            self._fail("body cut short", t0)
        except aiohttp.ServerDisconnectedError:
            self._fail("server disconnected", t0)
        except aiohttp.ClientConnectorError:
            self._fail("connection refused", t0)
            self.failed_connection = True
        except aiohttp.ClientOSError as exc:
            name = errno.errorcode.get(exc.errno or 0, "?") if exc.errno else str(exc)[:40]
            self._fail(f"connection error ({name})", t0)
        except TimeoutError:
            self._fail("client timeout", t0)
        except aiohttp.ClientError as exc:
            self._fail(type(exc).__name__, t0)
        finally:
            self.tally.done += 1
        return None

    def _fail(self, cause: str, t0: float) -> None:
        self.tally.failures.append(Failure(cause, t0, time.monotonic()))

    def _status(self, got: Got, path: str, t0: float, allowed: tuple[int, ...]) -> bool:
        """True if the status is one the caller checks; else counted as a failure."""
        if got.status in allowed:
            return True
        if got.status in EXPECTED_ERRORS:
            self._fail(f"HTTP {got.status}", t0)
        else:
            self._fail(f"HTTP {got.status} (unexpected)", t0)
            why = (got.body or b"")[:200].decode("utf-8", "replace").strip()
            self.tally.unexpected.append(
                f"{got.status} {got.headers.get('X-Cachesrv-Status', '')} for {path}: {why}"
            )
        return False

    def _wrong(self, path: str, got: Got | None, what: str, **extra: object) -> None:
        seen: dict[str, object] = {}
        if got is not None:
            seen = {
                "status": got.status,
                "size": got.size,
                "sha256": got.sha256,
                "cachesrv": got.headers.get("X-Cachesrv-Status"),
                "digest": got.headers.get("X-Cachesrv-Digest"),
            }
        self.tally.wrong.append(
            {"url": self.served(path), "what": what, "time": time.strftime("%H:%M:%S"),
             **seen, **extra}
        )  # fmt: skip

    def _check_whole(self, path: str, got: Got) -> bool:
        true = self.corpus.truth[path]
        if got.size != true.size or got.sha256 != true.sha256:
            self._wrong(path, got, "body differs from the upstream's file",
                        want_size=true.size, want_sha256=true.sha256)  # fmt: skip
            return False
        if got.headers.get("Content-Encoding"):
            self._wrong(path, got, f"Content-Encoding {got.headers['Content-Encoding']}")
            return False
        self.tally.verified += 1
        self.tally.verified_bytes += got.size
        return True

    async def get_file(
        self, path: str, kind: str = "GET", headers: Mapping[str, str] | None = None
    ) -> Got | None:
        """GET an upstream file through cachesrv; the answer if it was whole and right."""
        t0 = time.monotonic()
        got = await self.fetch(kind, "GET", self.served(path), headers)
        if got is None or not self._status(got, path, t0, (200,)):
            return None
        return got if self._check_whole(path, got) else None

    # -- what may be asked -------------------------------------------------------------

    def _dists_seen(self) -> list[Dist]:
        return [d for p in sorted(self.pages_seen) for d in self.corpus.projects[p]]

    def _any_file(self, min_size: int = 0, max_size: int | None = None) -> str | None:
        c = self.corpus
        pool = c.debs + c.tarballs + c.apt_indices + c.apt_by_hash + [c.tarball_index]
        for d in self._dists_seen():
            pool.append(d.path)
            if d.metadata_sha256:
                pool.append(d.path + ".metadata")
        pool = [
            p for p in pool
            if c.truth[p].size >= min_size and (max_size is None or c.truth[p].size <= max_size)
        ]  # fmt: skip
        return self.rng.choice(pool) if pool else None

    # -- scenarios ---------------------------------------------------------------------

    async def apt(self) -> None:
        c, rng = self.corpus, self.rng
        release = await self.get_file(c.apt_indices[0])
        if release is not None and rng.random() < 0.3:
            await self.conditional_get(c.apt_indices[0], release, etag=False)
        await self.get_file(rng.choice(c.apt_by_hash))
        if rng.random() < 0.2:
            await self.get_file(rng.choice(c.apt_indices[1:]))
        for deb in rng.sample(c.debs, k=rng.randint(1, 4)):
            await self.get_file(deb)

    async def pip(self) -> None:
        rng = self.rng
        if rng.random() < 0.1:
            await self.project_list()
        project = rng.choice(sorted(self.corpus.projects))
        links = await self.page(project, json_first=rng.random() < 0.5)
        if links is None:
            return
        self.pages_seen.add(project)
        dists = self.corpus.projects[project]
        wheels = [d for d in dists if d.filename.endswith(".whl")]
        dist = max(wheels, key=lambda d: d.filename) if rng.random() < 0.7 else rng.choice(dists)
        href = links[dist.filename]
        if dist.metadata_sha256:
            await self.get_file(dist.path + ".metadata")
        if href != self.served(dist.path):  # the page's link must lead to the file
            self._wrong(dist.path, None, f"the page links it as {href}")
            return
        await self.get_file(dist.path)

    async def project_list(self) -> None:
        path = "/pypi/simple/index.html"
        t0 = time.monotonic()
        got = await self.fetch("page", "GET", "/pypi/simple/", {"Accept": "text/html"}, keep=True)
        if got is None or not self._status(got, path, t0, (200,)):
            return
        text = (got.body or b"").decode("utf-8", "replace")
        missing = [p for p in self.corpus.projects if f">{p}</a>" not in text]
        if missing:
            self._wrong(path, got, f"project list lacks {missing}")
        else:
            self.tally.pages_ok += 1

    async def page(self, project: str, *, json_first: bool) -> dict[str, str] | None:
        """A project page through cachesrv, checked: {filename: the link's served path}."""
        path = self.corpus.page_path(project, "json" if json_first else "html")
        page_url = f"/pypi/simple/{project}/"
        accept = PIP_ACCEPT if json_first else "text/html"
        t0 = time.monotonic()
        got = await self.fetch("page", "GET", page_url, {"Accept": accept}, keep=True)
        if got is None or not self._status(got, path, t0, (200,)):
            return None
        assert got.body is not None
        try:
            listed = _parse_page(got.body, got.headers.get("Content-Type", ""))
        except (ValueError, KeyError, TypeError) as exc:
            self._wrong(path, got, f"page unreadable: {exc}")
            return None
        want = {d.filename: (d.sha256, d.metadata_sha256) for d in self.corpus.projects[project]}
        have = {name: (sha, meta) for name, (_, sha, meta) in listed.items()}
        if have != want:
            self._wrong(path, got, "page lists other files or hashes",
                        want=sorted(want.items()), have=sorted(have.items()))  # fmt: skip
            return None
        self.tally.pages_ok += 1
        base = URL(f"http://x{page_url}")
        return {name: base.join(URL(href)).path for name, (href, _, _) in listed.items()}

    async def tarball(self) -> None:
        c = self.corpus
        path = c.tarball_index if self.rng.random() < 0.15 else self.rng.choice(c.tarballs)
        await self.get_file(path)

    async def range(self) -> None:
        path = self._any_file(min_size=2)
        if path is None:
            return
        true = self.corpus.truth[path]
        size, rng = true.size, self.rng
        span = min(size, 2 << 20)
        form = rng.choice(("a-b", "a-", "-n"))
        if form == "a-b":
            a = rng.randrange(size)
            b = min(size - 1, a + rng.randrange(span))
            spec, first, last = f"{a}-{b}", a, b
        elif form == "a-":
            a = rng.randrange(size - span, size)
            spec, first, last = f"{a}-", a, size - 1
        else:
            n = rng.randint(1, span)
            spec, first, last = f"-{n}", size - n, size - 1
        t0 = time.monotonic()
        got = await self.fetch(
            "range", "GET", self.served(path), {"Range": f"bytes={spec}"}, keep=True
        )
        if got is None or not self._status(got, path, t0, (200, 206)):
            return
        if got.status == 200:
            self.tally.range_full += 1
            self._check_whole(path, got)
            return
        want_range = f"bytes {first}-{last}/{size}"
        if got.headers.get("Content-Range") != want_range:
            self._wrong(path, got, f"Content-Range {got.headers.get('Content-Range')!r} "
                                   f"for bytes={spec}, want {want_range!r}")  # fmt: skip
            return
        with true.disk.open("rb") as f:
            f.seek(first)
            want = f.read(last - first + 1)
        if got.body != want:
            self._wrong(path, got, f"206 slice bytes={spec} differs", want_size=len(want))
            return
        self.tally.verified += 1
        self.tally.partial += 1
        self.tally.verified_bytes += got.size

    async def head(self) -> None:
        path = self._any_file()
        if path is None:
            return
        t0 = time.monotonic()
        got = await self.fetch("HEAD", "HEAD", self.served(path))
        if got is None or not self._status(got, path, t0, (200,)):
            return
        length = got.headers.get("Content-Length")
        if length != str(self.corpus.truth[path].size):
            self._wrong(path, got, f"HEAD Content-Length {length}",
                        want_size=self.corpus.truth[path].size)  # fmt: skip
        else:
            self.tally.heads_ok += 1

    async def abort(self) -> None:
        path = self._any_file(min_size=256 * 1024)
        if path is None:
            return
        size = self.corpus.truth[path].size
        t0 = time.monotonic()
        got = await self.fetch(
            "abort", "GET", self.served(path), stop_after=self.rng.randint(1, size // 2)
        )
        if got is None:
            return
        if not got.complete:
            self.tally.aborted += 1
        elif self._status(got, path, t0, (200,)):
            self._check_whole(path, got)

    async def conditional(self) -> None:
        path = self._any_file()
        if path is None:
            return
        got = await self.get_file(path)
        if got is not None:
            await self.conditional_get(path, got, etag=True)

    async def conditional_get(self, path: str, got: Got, *, etag: bool) -> None:
        """Ask again with the validators of what was served: 304, or a whole right body."""
        asks = []
        if etag and got.headers.get("ETag"):
            asks.append({"If-None-Match": got.headers["ETag"]})
        if got.headers.get("Last-Modified"):
            asks.append({"If-Modified-Since": got.headers["Last-Modified"]})
        for headers in asks:
            t0 = time.monotonic()
            again = await self.fetch("conditional", "GET", self.served(path), headers)
            if again is None or not self._status(again, path, t0, (200, 304)):
                continue
            if again.status == 304:
                if again.size:
                    self._wrong(path, again, f"304 with a {again.size}-byte body")
                else:
                    self.tally.not_modified += 1
            elif self._check_whole(path, again):
                self.tally.conditional_full += 1

    async def repeat(self) -> None:
        path = self._any_file(max_size=256 * 1024)
        if path is None:
            return
        for _ in range(self.rng.randint(3, 8)):
            if await self.get_file(path, "repeat") is None:
                break


def _parse_page(body: bytes, content_type: str) -> dict[str, tuple[str, str, str | None]]:
    """{filename: (href without fragment, declared sha256, metadata sha256)} of a page."""
    out: dict[str, tuple[str, str, str | None]] = {}
    if "json" in content_type:
        doc = json.loads(body)
        for f in doc["files"]:
            meta = f.get("core-metadata") or f.get("dist-info-metadata")
            out[f["filename"]] = (
                f["url"].split("#", 1)[0],
                f["hashes"]["sha256"],
                meta["sha256"] if isinstance(meta, dict) else None,
            )
        return out
    for m in _A_TAG.finditer(body.decode("utf-8")):
        attrs = dict(_ATTR.findall(m.group(1)))
        href, _, frag = html.unescape(attrs["href"]).partition("#")
        if not frag.startswith("sha256="):
            raise ValueError(f"link without #sha256: {attrs['href']}")
        meta = attrs.get("data-core-metadata") or attrs.get("data-dist-info-metadata")
        out[html.unescape(m.group(2))] = (
            href,
            frag.removeprefix("sha256="),
            meta.removeprefix("sha256=") if meta else None,
        )
    return out


def truth_of_key(corpus: Corpus, key: str, ports: tuple[int, int]) -> TrueFile | None:
    """The true file behind a cache key (an upstream URL), for the store audit."""
    url = URL(key)
    if url.host != "127.0.0.1" or url.port not in ports:
        return None
    path = url.path
    if path.endswith("/"):
        path += "index.json" if "json" in url.query.get("format", "") else "index.html"
    return corpus.truth.get(path)
