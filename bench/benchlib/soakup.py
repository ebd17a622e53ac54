"""The soak's upstream: tests/fakes/upstream.py's FakeUpstream with faults drawn at random.

Run as its own process (`python bench/benchlib/soakup.py SPEC.json`, with the
repository on PYTHONPATH), so that stopping it is what a crashed or restarted upstream
does to cachesrv: every connection aborted, the ports closed, then open again on the
same ports. It serves the corpus directory on every port of the spec (the first is the
archive host, the second the pypi files host) with FakeUpstream's semantics (ETag,
Last-Modified, 304, Range), plus:

- a URL path ending in `/` answers its `index.html`, or `index.json` when `Accept`
  prefers PEP 691 JSON (pypi's simple pages are static files of the corpus);
- each request draws its faults from a seeded RNG (`FaultPlan`): a 500/503 answer, a
  body cut at half its `Content-Length`, a slow body, or a lie (the right length,
  every byte flipped). Lies go only to paths matching `lie_pattern`: files whose hash
  a URL or an index page declares (apt by-hash, pypi files), which cachesrv must catch.
  A lie elsewhere could not be caught by anyone, and is no test of cachesrv;
- a revalidation may be answered 200 in full (its validators ignored, as any server
  may), so that cachesrv records index files again, through the same faults, rather
  than only hearing 304.

It blocks SIGTERM/SIGINT and waits for one; then it stops (abruptly, like a crash:
ThreadedServer.stop) and writes how many faults of each kind it injected to the
spec's `stats` file.
"""

from __future__ import annotations

import contextvars
import json
import os
import random
import re
import signal
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from aiohttp import web
from multidict import CIMultiDict

from tests.fakes.upstream import FakeUpstream, Fault, FaultKind

#: Files whose hash cachesrv is told before it fetches them.
LIE_PATTERN = r"/by-hash/SHA256/[0-9a-f]{64}$|^/files/packages/"

_accept: contextvars.ContextVar[str] = contextvars.ContextVar("accept", default="")


@dataclass(frozen=True)
class FaultPlan:
    """Probabilities per request (each drawn independently for each request)."""

    seed: int = 0
    status: float = 0.03  # 500 or 503 instead of the answer
    truncate: float = 0.03  # half the body, then the connection closed
    lie: float = 0.10  # the right length, wrong bytes (only paths matching lie_pattern)
    slow: float = 0.05  # the body in 256 KiB pieces, 20 ms apart
    full: float = 0.25  # a revalidation answered 200 in full (its validators ignored)
    lie_pattern: str = LIE_PATTERN


@dataclass(frozen=True)
class Spec:
    root: str
    ports: list[int]
    plan: FaultPlan
    stats: str


class SoakUpstream(FakeUpstream):
    def __init__(self, root: Path, ports: list[int], plan: FaultPlan) -> None:
        super().__init__(root)
        self.ports = ports
        self.plan = plan
        # Each start of the upstream draws its own faults.
        self.rng = random.Random(f"{plan.seed}-{os.getpid()}")
        self.lie_re = re.compile(plan.lie_pattern)
        self.counts: Counter[str] = Counter()

    async def _setup(self) -> None:
        for port in self.ports:
            await self._listen(self._handle, port=port)
        self.port = self.ports[0]
        self.url = f"http://127.0.0.1:{self.port}"

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        _accept.set(request.headers.get("Accept", ""))  # this request's task only
        self.counts["requests"] += 1
        conditional = ("If-None-Match", "If-Modified-Since")
        if any(h in request.headers for h in conditional) and self.rng.random() < self.plan.full:
            # A server may always answer in full: cachesrv then records the body again.
            headers = CIMultiDict(request.headers)
            for h in conditional:
                headers.popall(h, None)
            request = request.clone(headers=headers)
            self.counts["full answer to a revalidation"] += 1
        return await super()._handle(request)

    def _resolve(self, path: str) -> Path | int:
        if path.endswith("/"):
            json_first = "application/vnd.pypi.simple.v1+json" in _accept.get()
            path += "index.json" if json_first else "index.html"
        return super()._resolve(path)

    def _take_fault(self, path: str, kinds: set[FaultKind]) -> Fault | None:
        """One draw per call: FakeUpstream asks for STATUS/HANG before answering, and
        for TRUNCATE/LIE/SLOW once it knows a body will be sent."""
        plan, r = self.plan, self.rng.random()
        fault = None
        if FaultKind.STATUS in kinds:
            if r < plan.status:
                fault = Fault.status(self.rng.choice((500, 503)))
        elif r < plan.truncate:
            fault = Fault.truncate()
        elif r < plan.truncate + plan.slow:
            fault = Fault.slow(chunk_size=256 * 1024, delay=0.02)
        elif r < plan.truncate + plan.slow + plan.lie and self.lie_re.search(path):
            fault = Fault.lie()
        if fault is not None:
            self.counts[fault.kind.value] += 1
        return fault


def serve(spec_path: Path) -> None:
    raw = json.loads(spec_path.read_text())
    spec = Spec(raw["root"], raw["ports"], FaultPlan(**raw["plan"]), raw["stats"])
    # Blocked before the server thread starts (which inherits the mask): only sigwait
    # below receives them, whichever thread the kernel picks.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    up = SoakUpstream(Path(spec.root), spec.ports, spec.plan).start()
    print(f"listening on 127.0.0.1 ports {' '.join(map(str, spec.ports))}", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    up.stop()
    Path(spec.stats).write_text(json.dumps(dict(up.counts)))


def write_spec(path: Path, root: Path, ports: list[int], plan: FaultPlan, stats: Path) -> None:
    path.write_text(
        json.dumps({"root": str(root), "ports": ports, "plan": asdict(plan), "stats": str(stats)})
    )


if __name__ == "__main__":
    serve(Path(sys.argv[1]))
