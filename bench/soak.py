#!/usr/bin/env python3
"""Soak test: cachesrv under faults, kills and restarts; not one wrong body, no leak.

    .venv/bin/python bench/soak.py                       # 30 minutes (see bench/README.md)
    .venv/bin/python bench/soak.py --minutes 5
    .venv/bin/python bench/soak.py --seconds 120 --scale small --clients 16

For `--minutes` (30 by default), on 127.0.0.1 only:

- an upstream (bench/benchlib/soakup.py: tests/fakes' FakeUpstream in its own process)
  serves a signed apt archive, pypi simple pages (HTML and PEP 691 JSON) with wheels,
  .metadata and sdists on a second port (the files host), and tarballs of a few KiB to
  ~20 MiB (bench/benchlib/soakcorpus.py, which knows the true sha256 of every file). It
  answers 500/503, truncates bodies, sends slow bodies and lies (right length, wrong
  bytes; only for files whose hash a URL or page declares) at random, and is stopped
  and started again on the same ports now and then;
- `cachesrv serve` runs online over a temp store (`kind = "apt"`, `"pypi"` with
  `file_hosts`, `"generic"`; `[store] max_size` below the corpus, so it also evicts),
  and is killed with SIGKILL a few times (in the first 60% of the run, so the rest is
  one long life to judge leaks on) and started again on the same port and store;
- many asyncio clients (bench/benchlib/soakclients.py) run apt, pip, tarball, Range,
  HEAD, aborted, conditional and repeated requests; every body received whole with
  200/206 is checked against the true file (or slice);
- every few seconds the server's RSS (VmRSS) and open descriptors (/proc/PID/fd),
  summed over its processes, are sampled.

At the end the upstream is stopped, the server's descriptors are counted once idle,
the server is stopped with SIGTERM, its store's `tmp/` is listed, `cachesrv fsck` runs,
and every index entry's recorded sha256 is compared with the true file. Exit status 1
when a body was wrong, fsck is not clean, temp files are left, an entry records wrong
bytes, or RSS or descriptors grew beyond the bounds the report states; 130 when
interrupted (everything started is stopped and the work dir removed either way).

`run_soak(Options(...))` is the same run as a function (tests/e2e/test_soak.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
# The upstream and the corpus are the test suite's fakes (tests/fakes/).
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchlib import procs, soakcorpus, soakup  # noqa: E402
from benchlib.daemons import Daemon, measure  # noqa: E402
from benchlib.soakclients import Client, Tally, truth_of_key  # noqa: E402
from benchlib.soakreport import (  # noqa: E402
    Fit,
    Sample,
    Window,
    failures_by_cause,
    fit,
    scan_logs,
    series_table,
    spread,
)

WORK_PREFIX = "cachesrv-soak-"
MiB = 1 << 20
log = procs.log
FSCK_LINE = re.compile(
    r"fsck: (clean|PROBLEMS FOUND): (\d+) blobs \((\d+) bytes\) re-hashed, (\d+) corrupt "
    r"\(quarantined\), (\d+) missing, (\d+) unindexed, (\d+) temp files"
)


@dataclass
class Options:
    seconds: float = 30 * 60
    clients: int = 32
    scale: str = "full"  # soakcorpus.SCALES
    server_kills: int | None = None  # default: one per 4 minutes begun
    upstream_restarts: int | None = None  # default: one per 3 minutes begun
    sample_every: float | None = None  # default 5 s (2 s for runs under 5 minutes)
    workers: int = 1
    max_store_mib: float | None = None  # default half the corpus; 0: no limit
    faults: soakup.FaultPlan = field(default_factory=soakup.FaultPlan)
    seed: int | None = None
    python: str = sys.executable
    work_root: Path | None = None  # default: the system temp dir
    keep: bool = False
    # Bounds (the report states them):
    rss_growth_mib: float = 16.0  # RSS fit over the last server life, after warm-up
    rss_max_mib: float = 300.0
    fd_growth: int = 8  # idle descriptors at the end minus idle at the first start
    log: Callable[[str], object] = log
    #: SIGINT, SIGTERM, SIGHUP and SIGALRM (the deadline) end the run early, cleanly,
    #: with `procs.Interrupted` (the command line; a test leaves its signals alone).
    handle_signals: bool = False


@dataclass
class Result:
    requests: int = 0
    wrong: list[dict[str, object]] = field(default_factory=list)
    server_kills: int = 0
    upstream_restarts: int = 0
    fsck: str = ""
    fsck_clean: bool = False
    temp_files: list[str] = field(default_factory=list)
    audit_wrong: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)  # statuses no fault explains
    failed: int = 0  # requests that failed in an expected way (by cause in the report)
    problems: list[str] = field(default_factory=list)
    report: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems


def run_soak(opts: Options) -> Result:
    """The whole soak (see module doc); everything it starts is stopped before it returns."""
    seed = opts.seed if opts.seed is not None else random.randrange(1 << 16)
    root = opts.work_root or Path(tempfile.gettempdir())
    remove_stale_work(root)
    work = Path(tempfile.mkdtemp(prefix=f"{WORK_PREFIX}{os.getpid()}-", dir=root))
    pg = procs.Processes()
    soak = Soak(opts, seed, work, pg)
    try:
        asyncio.run(soak.run())
        return soak.result
    except asyncio.CancelledError:
        if soak.interrupted:
            raise procs.Interrupted(soak.interrupted) from None
        raise
    finally:
        pg.stop_all()
        if opts.keep:
            opts.log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def remove_stale_work(root: Path) -> None:
    """Work dirs of earlier runs that were killed before they could clean up."""
    for d in root.glob(WORK_PREFIX + "*"):
        m = re.match(re.escape(WORK_PREFIX) + r"(\d+)-", d.name)
        if m and not Path(f"/proc/{m[1]}").exists():
            shutil.rmtree(d, ignore_errors=True)


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO)  # cachesrv from this tree; tests.fakes for the upstream
    e.pop("CACHESRV_STORE", None)
    return e


CACHESRV_CONF = """\
[server]
connect_timeout = 5.0
read_timeout = 20.0
{store}
[upstreams.debian]
kind = "apt"
url = "http://127.0.0.1:{up}/debian"

[upstreams.pypi]
kind = "pypi"
url = "http://127.0.0.1:{up}/pypi/simple"
file_hosts = ["127.0.0.1:{files}"]

[upstreams.tarballs]
kind = "generic"
url = "http://127.0.0.1:{up}/tarballs"
"""


# -- the run ---------------------------------------------------------------------------


class Soak:
    def __init__(self, opts: Options, seed: int, work: Path, pg: procs.Processes) -> None:
        self.opts, self.seed, self.work, self.pg = opts, seed, work, pg
        self.rng = random.Random(seed)
        self.result = Result()
        self.tally = Tally()
        self.samples: list[Sample] = []
        self.windows: list[Window] = []
        self.timeline: list[str] = []
        self.tmp_after_kill: list[int] = []
        self.upstream_counts: dict[str, int] = {}
        self.idle_start: tuple[int | None, int | None] = (None, None)
        self.idle_end: tuple[int | None, int | None] = (None, None)
        self.t0 = 0.0
        self.load_seconds = 0.0
        self.store = work / "store"
        self.interrupted = ""

    def _interrupt(self, sig: int, task: asyncio.Task[None]) -> None:
        # Handled by the loop, not raised where the main thread happens to be: an
        # exception raised inside a client's task would only end that task.
        self.interrupted = signal.Signals(sig).name
        self.opts.log(f"soak: {self.interrupted}: stopping, cleaning up")
        task.cancel()

    # ---- set-up

    def _prepare(self) -> None:
        opts, work = self.opts, self.work
        ports: list[int] = []
        while len(ports) < 3:
            p = procs.free_port()
            if p not in ports:
                ports.append(p)
        self.up_port, self.files_port, self.port = ports
        opts.log(f"soak: seed {self.seed}, work dir {work}, building the corpus ...")
        self.corpus = soakcorpus.build(
            work / "www", soakcorpus.SCALES[opts.scale], self.files_port, self.seed, opts.log
        )
        if opts.max_store_mib is None:
            # Under the corpus, so that bodies are evicted and fetched again (through the
            # faults) all along; room for two of the largest at once, so 507 stays rare.
            self.max_store = max(self.corpus.total_bytes // 2, 2 * self.corpus.largest)
        else:
            self.max_store = int(opts.max_store_mib * MiB)
        store_conf = f'\n[store]\nmax_size = "{self.max_store}"\n' if self.max_store else ""
        self.config = work / "cachesrv.toml"
        self.config.write_text(CACHESRV_CONF.format(
            store=store_conf, up=self.up_port, files=self.files_port))  # fmt: skip
        logs = work / "logs"
        logs.mkdir()
        spec = work / "upstream.json"
        self.upstream_stats = work / "upstream-stats.json"
        plan = dataclasses.replace(opts.faults, seed=self.seed)
        soakup.write_spec(spec, self.corpus.root, [self.up_port, self.files_port], plan,
                          self.upstream_stats)  # fmt: skip
        up_argv = [opts.python, str(BENCH / "benchlib" / "soakup.py"), str(spec)]
        self.upstream = Daemon(self.pg, "upstream", up_argv, logs=logs, ready="listening on",
                               cwd=REPO, env=env())  # fmt: skip
        argv = [opts.python, "-m", "cachesrv", "serve", "--config", str(self.config),
                "--store", str(self.store), "--listen", f"127.0.0.1:{self.port}"]  # fmt: skip
        if opts.workers > 1:
            argv += ["--workers", str(opts.workers)]
        ready = r"serving http://127\.0\.0\.1:"
        self.server = Daemon(self.pg, "cachesrv", argv, logs=logs, ready=ready, cwd=REPO,
                             env=env())  # fmt: skip

    def _plan(self) -> list[tuple[float, str]]:
        """When to kill the server and restart the upstream (seconds into the load)."""
        total, minutes = self.opts.seconds, self.opts.seconds / 60
        kills = self.opts.server_kills
        kills = math.ceil(minutes / 4) if kills is None else kills
        restarts = self.opts.upstream_restarts
        restarts = math.ceil(minutes / 3) if restarts is None else restarts

        def spaced(n: int, lo: float, hi: float) -> list[float]:
            step = (hi - lo) * total / max(n, 1)
            return [lo * total + step * (i + 0.5 + self.rng.uniform(-0.3, 0.3)) for i in range(n)]

        plan = [(t, "server kill") for t in spaced(kills, 0.15, 0.6)]
        for t in spaced(restarts, 0.1, 0.9):
            while any(abs(t - k) < 8 for k, _ in plan):
                t += 8  # one thing at a time: a failure's cause stays readable
            plan.append((t, "upstream restart"))
        return sorted(plan)

    # ---- the run

    async def run(self) -> None:
        opts = self.opts
        if opts.handle_signals:
            loop, task = asyncio.get_running_loop(), asyncio.current_task()
            assert task is not None
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGALRM):
                loop.add_signal_handler(sig, self._interrupt, sig, task)
        self._prepare()
        await self.upstream.start()
        await self.server.start()
        await asyncio.sleep(1)
        self.idle_start = measure(self.server.pids())
        every = opts.sample_every or (2.0 if opts.seconds < 300 else 5.0)
        plan = self._plan()
        opts.log(
            f"soak: {opts.seconds:.0f} s, {opts.clients} clients, cachesrv on 127.0.0.1:"
            f"{self.port}, upstream on {self.up_port} and {self.files_port}; "
            + ", ".join(f"{what} at {t:.0f} s" for t, what in plan)
        )
        stop = asyncio.Event()
        pages_seen: set[str] = set()
        base = f"http://127.0.0.1:{self.port}"
        clients = [Client(i, base, self.corpus, self.tally, pages_seen, self.seed)
                   for i in range(opts.clients)]  # fmt: skip
        self.t0 = time.monotonic()
        tasks = [asyncio.create_task(c.run(stop), name=f"client {c.n}") for c in clients]
        sampler = asyncio.create_task(self._sample(every, stop))
        try:
            await self._schedule(plan, stop)
            await asyncio.sleep(max(0.0, self.t0 + opts.seconds - time.monotonic()))
        finally:
            stop.set()
            self.load_seconds = time.monotonic() - self.t0
            # Scenarios under way may finish; what is still running after 10 s is cut.
            _, pending = await asyncio.wait(tasks, timeout=10)
            for t in pending:
                t.cancel()
            results = await asyncio.gather(*tasks, sampler, return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
                self.tally.harness_errors.append(f"client task: {type(r).__name__}: {r}")
        await self._finish()

    async def _schedule(self, plan: list[tuple[float, str]], stop: asyncio.Event) -> None:
        for at, what in plan:
            await asyncio.sleep(max(0.0, self.t0 + at - time.monotonic()))
            start = time.monotonic() - self.t0
            if what == "server kill":
                await self.server.stop(signal.SIGKILL)
                self.result.server_kills += 1
                self.tmp_after_kill.append(len(list((self.store / "tmp").iterdir())))
                await asyncio.sleep(self.rng.uniform(0.2, 1.5))
                await self.server.start()
            else:
                await self.upstream.stop()
                self._add_upstream_counts()
                self.result.upstream_restarts += 1
                await asyncio.sleep(self.rng.uniform(0.5, 3.0))
                await self.upstream.start()
            done = time.monotonic() - self.t0
            self.windows.append(Window(what, start, done + 1))
            self.timeline.append(f"{start:6.1f} s  {what} (back after {done - start:.1f} s)")
            self.opts.log(f"soak: {what} at {start:.0f} s, back after {done - start:.1f} s")

    async def _sample(self, every: float, stop: asyncio.Event) -> None:
        last_t, last_done = 0.0, 0
        while not stop.is_set():
            t = time.monotonic() - self.t0
            rss, fds = measure(self.server.pids())
            rate = (self.tally.done - last_done) / max(t - last_t, 1e-6)
            self.samples.append(Sample(t, self.server.starts, rss, fds, rate))
            last_t, last_done = t, self.tally.done
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)

    def _add_upstream_counts(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            for k, v in json.loads(self.upstream_stats.read_text()).items():
                self.upstream_counts[k] = self.upstream_counts.get(k, 0) + v

    # ---- the end

    async def _finish(self) -> None:
        opts, res = self.opts, self.result
        await self.upstream.stop()  # the server's upstream connections close with it
        self._add_upstream_counts()
        # Idle: no client, no upstream. Wait until the descriptor count settles.
        previous, steady, deadline = None, 0, time.monotonic() + 30
        while steady < 4 and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            now = measure(self.server.pids())
            steady = steady + 1 if now == previous else 0
            previous = now
        self.idle_end = previous or (None, None)
        server_alive = self.server.proc is not None and self.server.proc.alive()
        rc = await self.server.stop(signal.SIGTERM)
        if not server_alive:
            res.problems.append("cachesrv was not running at the end (crashed?)")
        elif rc != 0:
            res.problems.append(f"cachesrv exited with status {rc} on SIGTERM")
        res.temp_files = sorted(p.name for p in (self.store / "tmp").iterdir())
        fsck = await asyncio.to_thread(
            subprocess.run,
            [opts.python, "-m", "cachesrv", "fsck", "--config", str(self.config),
             "--store", str(self.store)],
            capture_output=True, text=True, cwd=REPO, env=env(), timeout=900, check=False,
        )  # fmt: skip
        res.fsck = (fsck.stdout + fsck.stderr).strip()
        m = FSCK_LINE.search(res.fsck)
        res.fsck_clean = bool(
            fsck.returncode == 0 and m and m[1] == "clean" and m[4] == "0" and m[5] == "0"
        )
        self._audit()
        res.requests = sum(self.tally.requests.values())
        res.wrong = self.tally.wrong
        res.unexpected = self.tally.unexpected
        res.failed = len(self.tally.failures) - len(self.tally.unexpected)
        self._judge()
        res.report = self.report()

    def _audit(self) -> None:
        """Every entry's recorded sha256 against the true file it was fetched from."""
        self.audited = 0
        with contextlib.closing(sqlite3.connect(f"file:{self.store / 'index.sqlite'}?mode=ro",
                                                uri=True)) as db:  # fmt: skip
            rows = db.execute("SELECT key, sha256, size FROM entries").fetchall()
        ports = (self.up_port, self.files_port)
        for key, sha, size in rows:
            true = truth_of_key(self.corpus, key, ports)
            if true is None:
                self.result.audit_wrong.append(f"{key}: no such upstream file")
            elif (sha, size) != (true.sha256, true.size):
                self.result.audit_wrong.append(
                    f"{key}: recorded {sha} ({size} bytes), "
                    f"the upstream's is {true.sha256} ({true.size})"
                )
            self.audited += 1

    def _steady(self) -> list[Sample]:
        """The last server life's samples after its warm-up (a fifth of it, 10-120 s)."""
        last = [s for s in self.samples if s.server == self.server.starts and s.rss_kib]
        if not last:
            return []
        first = last[0].t
        warm = min(max(10.0, (last[-1].t - first) / 5), 120.0)
        return [s for s in last if s.t >= first + warm]

    def _judge(self) -> None:
        opts, res, tally = self.opts, self.result, self.tally
        if tally.wrong:
            res.problems.append(f"{len(tally.wrong)} wrong bodies")
        if not res.fsck_clean:
            res.problems.append("cachesrv fsck is not clean")
        if res.temp_files:
            res.problems.append(f"{len(res.temp_files)} temp files left in the store's tmp/")
        if res.audit_wrong:
            res.problems.append(f"{len(res.audit_wrong)} index entries record wrong bytes")
        if tally.unexpected:
            res.problems.append(f"{len(tally.unexpected)} answers with a status no fault "
                                f"explains (e.g. {tally.unexpected[0]})")  # fmt: skip
        if tally.harness_errors:
            res.problems.append(f"{len(tally.harness_errors)} errors in the soak itself")
        steady = self._steady()
        self.rss_fit = fit([(s.t, s.rss_kib / 1024) for s in steady if s.rss_kib])
        self.fd_fit = fit([(s.t, s.fds) for s in steady if s.fds is not None])
        if self.rss_fit and self.rss_fit.growth > opts.rss_growth_mib:
            res.problems.append(f"RSS grew {self.rss_fit.growth:.1f} MiB over the steady "
                                f"window (bound {opts.rss_growth_mib:g})")  # fmt: skip
        peak = max((s.rss_kib for s in self.samples if s.rss_kib), default=0) / 1024
        if peak > opts.rss_max_mib:
            res.problems.append(f"RSS peaked at {peak:.0f} MiB (bound {opts.rss_max_mib:g})")
        (_, fd0), (_, fd1) = self.idle_start, self.idle_end
        if fd0 is None or fd1 is None:
            res.problems.append("idle descriptors could not be counted")
        elif fd1 - fd0 > opts.fd_growth:
            res.problems.append(f"idle descriptors grew from {fd0} to {fd1} "
                                f"(bound +{opts.fd_growth})")  # fmt: skip

    # ---- the report

    def report(self) -> str:
        opts, res, t, c = self.opts, self.result, self.tally, self.corpus
        minutes = self.load_seconds / 60
        out = [
            f"## cachesrv soak: {minutes:.1f} min, {opts.clients} clients, seed {self.seed}",
            "",
            f"- corpus: {len(c.truth)} files, {c.total_bytes / MiB:.0f} MiB (scale "
            f"{opts.scale}; largest {c.largest / MiB:.1f} MiB); store max_size "
            + (f"{self.max_store / MiB:.0f} MiB" if self.max_store else "none"),
            f"- upstream faults (rates per request): status {opts.faults.status:g}, truncate "
            f"{opts.faults.truncate:g}, slow {opts.faults.slow:g}, lie {opts.faults.lie:g} "
            f"(declared-hash files only); injected: "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.upstream_counts.items())),
            f"- server kills (SIGKILL): {res.server_kills}; temp files each left: "
            f"{self.tmp_after_kill or '-'}; upstream restarts: {res.upstream_restarts}",
            "",
            "### Requests",
            "",
            f"- {res.requests} requests ({res.requests / max(self.load_seconds, 1):.0f}/s), "
            f"{t.verified} bodies verified whole ({t.verified_bytes / MiB:.0f} MiB), "
            f"{t.partial} of them 206 slices; {t.pages_ok} pypi pages checked; "
            f"{t.heads_ok} HEADs checked",
            f"- **wrong bodies: {len(t.wrong)}**",
            f"- conditional: {t.not_modified} x 304, {t.conditional_full} x 200 (checked); "
            f"Range answered whole: {t.range_full}; aborted on purpose: {t.aborted}; "
            f"cut by the end of the run: {t.stopped}",
            "- by type: " + ", ".join(f"{k} {v}" for k, v in t.requests.most_common()),
            "- scenarios: " + ", ".join(f"{k} {v}" for k, v in t.scenarios.most_common()),
            "- statuses of complete answers: "
            + ", ".join(f"{k} x {v}" for k, v in sorted(t.statuses.items()))
            + "; cachesrv's X-Cachesrv-Status: "
            + ", ".join(f"{k} {v}" for k, v in t.outcomes.most_common()),
            "",
            "Failed requests, by cause (expected: faults, kills and restarts make them):",
            "",
            "| cause | when | count |",
            "|---|---|---:|",
        ]
        out += [
            f"| {cause} | {when} | {n} |"
            for cause, when, n in failures_by_cause(t.failures, self.windows, self.t0)
        ]
        if t.unexpected:
            out += ["", f"Unexpected statuses ({len(t.unexpected)}): "
                    + "; ".join(sorted(set(t.unexpected))[:10])]  # fmt: skip
        if t.wrong:
            out += ["", "Wrong bodies (first 10):", ""]
            out += [f"- {json.dumps(w)}" for w in t.wrong[:10]]
        out += ["", "### Server RSS and descriptors", "", *series_table(self.samples, self.windows)]
        rss = [s.rss_kib / 1024 for s in self.samples if s.rss_kib]
        fds = [float(s.fds) for s in self.samples if s.fds is not None]
        (r0, f0), (r1, f1) = self.idle_start, self.idle_end
        out += [
            "",
            f"- RSS MiB: {spread(rss)}; fds: {spread(fds, '.0f')}",
            f"- idle at the first start: RSS {_mib(r0)} MiB, {f0} fds; idle at the end (no "
            f"client, upstream stopped): RSS {_mib(r1)} MiB, {f1} fds "
            f"(bound: at most +{opts.fd_growth} fds)",
            f"- steady window (the last server life after warm-up): RSS {_fit(self.rss_fit, 'MiB')}"
            f" (bound: grows at most {opts.rss_growth_mib:g} MiB; peak under "
            f"{opts.rss_max_mib:g} MiB); fds {_fit(self.fd_fit, 'fds')}",
            "",
            "### Timeline",
            "",
            *[f"    {line}" for line in self.timeline],
            "",
            "### Store",
            "",
            f"- temp files left in tmp/: {len(res.temp_files)}"
            + (f" ({', '.join(res.temp_files[:10])})" if res.temp_files else ""),
            f"- `cachesrv fsck`: {res.fsck.splitlines()[-1] if res.fsck else '(no output)'}"
            + ("" if res.fsck_clean else f"\n\n```\n{res.fsck[-3000:]}\n```"),
            f"- entries audited against the true files: {self.audited}, wrong: "
            f"{len(res.audit_wrong)}" + "".join(f"\n  - {a}" for a in res.audit_wrong[:10]),
        ]
        for level, records in scan_logs(self.server.logs_written()).items():
            out += ["", f"cachesrv's {level} records ({sum(n for _, n in records)}), by count:", ""]
            out += [f"- {n} x `{text}`" for text, n in records[:12]]
        if t.harness_errors:
            out += ["", "Errors of the soak itself:", ""]
            out += [f"- {e}" for e in t.harness_errors[:10]]
        out += ["", "### Verdict", ""]
        out += [f"- **{p}**" for p in res.problems] or [
            "- pass: no wrong body, fsck clean, no temp file, RSS and fds within bounds"
        ]
        return "\n".join(out) + "\n"


def _mib(kib: int | None) -> str:
    return f"{kib / 1024:.1f}" if kib is not None else "?"


def _fit(f: Fit | None, unit: str) -> str:
    if f is None:
        return "too few samples to fit"
    return (f"slope {f.slope:+.2f} {unit}/min over {f.minutes:.1f} min ({f.n} samples), "
            f"{f.growth:+.1f} {unit} across it")  # fmt: skip


# -- command line ----------------------------------------------------------------------


def parse_args(argv: list[str]) -> tuple[Options, argparse.Namespace]:
    ap = argparse.ArgumentParser(
        description="Soak cachesrv under upstream faults, kills and restarts; see bench/README.md."
    )
    length = ap.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, default=30, help="load duration (30)")
    length.add_argument("--seconds", type=float, help="load duration in seconds instead")
    ap.add_argument("--clients", type=int, default=32, help="concurrent clients (32)")
    ap.add_argument("--scale", choices=sorted(soakcorpus.SCALES), default="full",
                    help="corpus size: full (~250 MiB) or small (~60 MiB)")  # fmt: skip
    ap.add_argument("--server-kills", type=int, help="SIGKILLs of cachesrv (1 per 4 min)")
    ap.add_argument("--upstream-restarts", type=int, help="upstream restarts (1 per 3 min)")
    ap.add_argument("--sample-every", type=float, help="seconds between samples (5; 2 < 5 min)")
    ap.add_argument("--workers", type=int, default=1, help="cachesrv serve --workers (1)")
    ap.add_argument("--max-store-mib", type=float,
                    help="[store] max_size (default half the corpus; 0: none)")  # fmt: skip
    ap.add_argument("--seed", type=int, help="random seed (printed; default random)")
    ap.add_argument("--fault-status", type=float, default=0.03, help="500/503 rate (0.03)")
    ap.add_argument("--fault-truncate", type=float, default=0.03, help="truncation rate (0.03)")
    ap.add_argument("--fault-slow", type=float, default=0.05, help="slow body rate (0.05)")
    ap.add_argument("--fault-lie", type=float, default=0.10,
                    help="wrong bytes rate, declared-hash files only (0.10)")  # fmt: skip
    ap.add_argument("--rss-growth-mib", type=float, default=16.0,
                    help="bound on RSS growth over the steady window (16)")  # fmt: skip
    ap.add_argument("--rss-max-mib", type=float, default=300.0, help="bound on peak RSS (300)")
    ap.add_argument("--fd-growth", type=int, default=8, help="bound on idle fd growth (8)")
    ap.add_argument("--max-minutes", type=float,
                    help="hard stop for the whole run (default: duration x 1.5 + 10)")  # fmt: skip
    ap.add_argument("--python", default=sys.executable, help="Python that runs cachesrv")
    ap.add_argument("--work-root", type=Path, help="where the work dir goes (system temp)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (store, logs)")
    ap.add_argument("--out", type=Path, help="also write the report to this file")
    a = ap.parse_args(argv)
    seconds = a.seconds if a.seconds is not None else a.minutes * 60
    opts = Options(
        seconds=seconds, clients=a.clients, scale=a.scale, server_kills=a.server_kills,
        upstream_restarts=a.upstream_restarts, sample_every=a.sample_every, workers=a.workers,
        max_store_mib=a.max_store_mib, seed=a.seed, python=a.python, work_root=a.work_root,
        keep=a.keep, rss_growth_mib=a.rss_growth_mib, rss_max_mib=a.rss_max_mib,
        fd_growth=a.fd_growth, handle_signals=True,
        faults=soakup.FaultPlan(status=a.fault_status, truncate=a.fault_truncate,
                                slow=a.fault_slow, lie=a.fault_lie),
    )  # fmt: skip
    if a.max_minutes is None:
        a.max_minutes = seconds / 60 * 1.5 + 10
    return opts, a


def main(argv: list[str]) -> int:
    opts, a = parse_args(argv)
    # Ctrl-C, SIGTERM, SIGHUP and the deadline (SIGALRM) raise Interrupted: outside the
    # event loop from bound_run's handlers, inside it by way of Options.handle_signals.
    procs.bound_run(a.max_minutes)
    try:
        result = run_soak(opts)
    except procs.Interrupted as exc:
        why = f"the --max-minutes deadline ({a.max_minutes:g})" if str(exc) == "SIGALRM" else exc
        log(f"stopped by {why}; everything started was stopped, the work dir removed")
        return 130
    finally:
        signal.alarm(0)
    print(result.report, flush=True)
    if a.out:
        a.out.write_text(result.report)
    return 0 if result.ok else 1


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main(sys.argv[1:]))
