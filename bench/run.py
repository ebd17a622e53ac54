#!/usr/bin/env python3
"""cachesrv against nginx and apt-cacher-ng, side by side, rep by rep (issue 8).

    apt-get install -y nginx wrk apt-cacher-ng       # once; see bench/README.md
    python3 bench/run.py                             # full run, 3 reps, ~12 min
    python3 bench/run.py --quick                     # smoke run, ~2 min

Generates a corpus (1 x 512 MiB, 20 x 20 MiB, 2,000 x 16 KiB under Debian pool
paths; seeded, kept in bench/out/corpus), serves it as the upstream with nginx
(access log on), then in each rep: records the corpus cold through cachesrv
(online) and apt-cacher-ng against fetching it straight from the upstream, restarts
both offline, checks every file by sha256 through every target, and loads them with
wrk next to an nginx serving the corpus directly. Prints medians with min-max and
ratios taken within each rep as markdown, also written to bench/out/results.md.

The server under test runs on CPU 0, wrk, the upstream and this script on CPU 1.
As root the whole run happens in a private network namespace (`unshare -n`) whose
loopback has MTU 1500. Only 127.0.0.1 in that namespace is ever contacted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from benchlib import corpus as corpus_mod
from benchlib import httpc, procs, profile, servers, wrk
from benchlib.report import Results, number_format, spread, table, verdict

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
OUT = BENCH / "out"
NETNS_ENV = "CACHESRV_BENCH_NETNS"
MiB = 1 << 20

# Scenario names (rows of the tables); `name_scenarios` fits them to the corpus.
SMALL = "16 KiB hits, 64 conns"
BIG1 = "512 MiB hits, 1 conn"
BIG8 = "512 MiB hits, 8 conns"
MID1 = "20 MiB hits, 1 conn"
MID8 = "20 MiB hits, 8 conns"
COLD_BIG = "cold 512 MiB, 1 conn"
COLD_SMALL = "cold 2,000 x 16 KiB, 1 keep-alive conn"
CROWD = "100 clients, 1 cold 512 MiB file"


def name_scenarios(spec: corpus_mod.Spec, clients: int) -> None:
    global SMALL, BIG1, BIG8, MID1, MID8, COLD_BIG, COLD_SMALL, CROWD
    small, mid, big = f"{spec.small_size >> 10} KiB", f"{spec.mid_size >> 20} MiB", (
        f"{spec.big_size >> 20} MiB")  # fmt: skip
    SMALL = f"{small} hits, 64 conns"
    BIG1, BIG8 = f"{big} hits, 1 conn", f"{big} hits, 8 conns"
    MID1, MID8 = f"{mid} hits, 1 conn", f"{mid} hits, 8 conns"
    COLD_BIG = f"cold {big}, 1 conn"
    COLD_SMALL = f"cold {spec.small_count:,} x {small}, 1 keep-alive conn"
    CROWD = f"{clients} clients, 1 cold {big} file"


log = procs.log
Interrupted = procs.Interrupted


# -- command line ---------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="cachesrv vs nginx vs apt-cacher-ng (issue 8); see bench/README.md."
    )
    ap.add_argument("--reps", type=int, help="reps (default 3; 1 with --quick)")
    ap.add_argument("--quick", action="store_true", help="small corpus, short runs (smoke)")
    ap.add_argument("--duration", type=float, help="seconds per measured wrk point (6; 2)")
    ap.add_argument("--warmup", type=float, help="seconds of unmeasured wrk first (1; 1)")
    ap.add_argument(
        "--netns",
        action=argparse.BooleanOptionalAction,
        default=os.geteuid() == 0,
        help="run in a private network namespace, lo at MTU 1500 (default: when root)",
    )
    ap.add_argument("--mtu", type=int, default=1500, help="loopback MTU in the namespace")
    ap.add_argument(
        "--targets",
        default="cachesrv,apt-cacher-ng",
        help="comma-separated: cachesrv, apt-cacher-ng (nginx is always the baseline)",
    )
    ap.add_argument("--crowd", type=int, default=100, help="clients on one cold big file")
    ap.add_argument(
        "--crowd-reps", type=int, default=1, help="reps that run the crowd scenario (1)"
    )
    ap.add_argument("--no-scaling", action="store_true", help="skip --workers 2 vs 1")
    ap.add_argument("--python", help="Python that runs cachesrv (default: .venv's)")
    ap.add_argument("--corpus-dir", type=Path, help="default bench/out/corpus/{full,quick}")
    ap.add_argument("--out", type=Path, default=OUT / "results.md", help="markdown output")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="py-spy (in the venv: pip install py-spy) over cachesrv during rep 1's small-file "
        "hit run: bench/out/profile-small.txt and a summary in the results",
    )
    ap.add_argument("--keep", action="store_true", help="keep the work dir (stores, logs)")
    ap.add_argument(
        "--nice",
        type=int,
        default=-10 if os.geteuid() == 0 else 0,
        help="niceness of this run and all it starts (default -10 as root: other "
        "processes on the machine disturb the numbers less)",
    )
    ap.add_argument("--max-minutes", type=float, default=40, help="hard stop for the run")
    args = ap.parse_args(argv)
    args.reps = args.reps or (1 if args.quick else 3)
    args.duration = args.duration or (2.0 if args.quick else 6.0)
    args.warmup = args.warmup if args.warmup is not None else 1.0
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    for t in args.targets:
        if t not in ("cachesrv", "apt-cacher-ng"):
            ap.error(f"unknown target {t!r}")
    venv = REPO / ".venv" / "bin" / "python"
    args.python = args.python or (str(venv) if venv.exists() else sys.executable)
    return args


def reexec_in_netns(argv: list[str]) -> None:
    """Become this same command inside `unshare -n` (a new, empty network namespace)."""
    if shutil.which("unshare") is None:
        sys.exit("unshare (util-linux) not found: install it or use --no-netns")
    os.environ[NETNS_ENV] = "1"
    cmd = ["unshare", "--net", "--", sys.executable, str(Path(__file__).resolve()), *argv]
    os.execvp("unshare", cmd)


def setup_loopback(mtu: int) -> None:
    subprocess.run(["ip", "link", "set", "lo", "mtu", str(mtu), "up"], check=True, timeout=30)


def loopback_mtu() -> int:
    """lo's MTU in this namespace (/sys shows the namespace it was mounted in)."""
    try:
        out = subprocess.run(
            ["ip", "-o", "link", "show", "lo"], capture_output=True, text=True, timeout=30
        ).stdout
    except OSError:
        return -1
    m = re.search(r" mtu (\d+)", out)
    return int(m.group(1)) if m else -1


# -- the run ---------------------------------------------------------------------------


@dataclass
class Run:
    args: argparse.Namespace
    corpus: corpus_mod.Corpus
    work: Path
    pg: procs.Processes
    upstream: servers.Server
    upstream_log: servers.AccessLog
    server_cpu: str | None
    load_cpu: str | None
    all_cpus: str | None
    res: Results = field(default_factory=Results)
    checks: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    fatal: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    rss: dict[tuple[str, str], list[list[int]]] = field(default_factory=dict)
    cachesrv_logs: list[Path] = field(default_factory=list)
    workers_supported: bool = False
    wrk_one: Path = Path()
    wrk_many: Path = Path()
    paths: dict[tuple[str, str], Path] = field(default_factory=dict)
    disturbance: list[tuple[str, float]] = field(default_factory=list)
    cpu_split: dict[str, list[str]] = field(default_factory=dict)
    unsaturated: list[str] = field(default_factory=list)
    profile: str = ""

    # ---- helpers

    def problem(self, msg: str, target: str = "") -> None:
        """A wrong answer, a failed request, a broken promise. Those of apt-cacher-ng
        are reported but do not fail the run (exit status 1 is for cachesrv, nginx
        and the harness)."""
        log("PROBLEM: " + msg)
        self.problems.append(msg)
        if target != "apt-cacher-ng" and "apt-cacher-ng" not in msg:
            self.fatal.append(msg)

    @contextmanager
    def peak(self, scenario: str, server: servers.Server) -> Iterator[None]:
        """Record the server's peak RSS (VmHWM, reset first) over the block."""
        pids = server.pids()
        if not procs.reset_peak_rss(pids) and "no-reset" not in self.notes:
            self.notes.append("no-reset")
        try:
            yield
        finally:
            kib = procs.peak_rss_kib(server.pids())
            if kib:
                self.rss.setdefault((scenario, server.name), []).append(kib)

    def paths_file(self, server: servers.Server, kind: str) -> Path:
        key = (server.prefix, kind)
        if key not in self.paths:
            p = self.work / f"paths-{len(self.paths)}.txt"
            p.write_text("".join(server.prefix + f.path + "\n" for f in self.corpus.of(kind)))
            self.paths[key] = p
        return self.paths[key]

    def wrk_point(
        self,
        rep: int,
        scenario: str,
        server: servers.Server,
        label: str,
        *,
        kind: str,
        conns: int,
        metric: str,
        warmup: bool,
        cpus: str | None,
    ) -> None:
        """One bounded wrk run against `server`; values land under `label`."""
        files = self.corpus.of(kind)
        if len(files) == 1:
            url, script, paths = server.url(files[0].path), self.wrk_one, None
        else:
            url, script = f"http://127.0.0.1:{server.port}/", self.wrk_many
            paths = self.paths_file(server, kind)
        try:
            if warmup and self.args.warmup > 0:
                wrk.run(url, connections=conns, seconds=self.args.warmup, script=script,
                        paths_file=paths, cpus=cpus)  # fmt: skip
            spy = None
            if self.args.profile and label == "cachesrv" and scenario == SMALL and rep == 0:
                exe = profile.py_spy(self.args.python)
                if exe is None:
                    self.notes.append("--profile: py-spy not found (pip install py-spy)")
                else:
                    spy = profile.start(exe, server.proc.pid, self.args.duration,
                                        OUT / "profile-small.txt", self.load_cpu)  # fmt: skip
            with self.peak(scenario, server):
                each0 = {p: procs.cpu_seconds([p]) for p in server.pids()}
                cpu0, t0 = sum(each0.values()), time.monotonic()
                steal = procs.Steal()
                kids0 = procs.children_cpu()
                r = wrk.run(url, connections=conns, seconds=self.args.duration, script=script,
                            paths_file=paths, cpus=cpus)  # fmt: skip
                steal.stop()
                wall = time.monotonic() - t0
                wrk_cpu = (procs.children_cpu() - kids0) / wall
                each = {p: procs.cpu_seconds([p]) - c for p, c in each0.items()}
                cpu = (procs.cpu_seconds(server.pids()) - cpu0) / wall
            if spy is not None:
                _, err = spy.communicate(timeout=self.args.duration + 60)
                if spy.returncode == 0:
                    self.profile = profile.summary(OUT / "profile-small.txt")
                else:
                    self.notes.append(f"--profile: py-spy failed: {err.decode()[-300:]}")
        except Exception as exc:  # noqa: BLE001 - one failed point must not end the run
            self.problem(f"rep {rep + 1}: {label} {scenario}: {exc}")
            return
        sizes = {f.size for f in files}
        per_req = r.bytes / max(1, r.requests)
        if r.error_count:
            self.problem(f"rep {rep + 1}: {label} {scenario}: wrk errors {r.errors}")
        elif kind == "small" and r.requests and per_req < min(sizes):
            self.problem(f"rep {rep + 1}: {label} {scenario}: {per_req:.0f} bytes a response")
        if metric == "req/s":
            self.res.put(scenario, "req/s", label, rep, r.rps)
            if cpu > 0.01:
                self.res.put(scenario, "req/s per server CPU", label, rep, r.rps / cpu)
            self.res.put(scenario, "p50 ms", label, rep, r.p50_ms)
            self.res.put(scenario, "p99 ms", label, rep, r.p99_ms)
        else:
            self.res.put(scenario, "MB/s", label, rep, r.mbps)
        self.res.put(scenario, "server CPU %", label, rep, 100 * cpu)
        if len(each) > 1:
            split = " / ".join(f"{100 * c / wall:.0f}%" for c in each.values())
            self.cpu_split.setdefault(label, []).append(split)
        self.disturbance.append((f"rep {rep + 1} {label} {scenario}", steal.cpus))
        self.res.put(scenario, "wrk CPU %", label, rep, 100 * wrk_cpu)
        if cpus == self.load_cpu and cpu < 0.85 and wrk_cpu < 0.85:
            self.unsaturated.append(
                f"rep {rep + 1} {label} {scenario}: server {100 * cpu:.0f}%, wrk "
                f"{100 * wrk_cpu:.0f}%, steal {100 * steal.cpus:.0f}%"
            )
        value = f"{r.rps:,.0f} req/s p99 {r.p99_ms:.2f} ms" if metric == "req/s" else (
            f"{r.mbps:,.0f} MB/s")  # fmt: skip
        log(f"  {scenario:24} {label:24} {value}, server CPU {100 * cpu:.0f}%, "
            f"wrk CPU {100 * wrk_cpu:.0f}%")  # fmt: skip

    # ---- servers

    def start_nginx(self, name: str, cpus: str | None, workers: int = 1) -> servers.Server:
        return servers.start_nginx(
            self.pg, name, root=self.corpus.root, workdir=self.work, cpus=cpus, workers=workers
        )

    def start_cachesrv(
        self, store: Path, mode: str, cpus: str | None, workers: int | None = None
    ) -> servers.Server:
        s = servers.start_cachesrv(
            self.pg,
            python=self.args.python,
            repo=REPO,
            workdir=self.work,
            store=store,
            upstream_port=self.upstream.port,
            mode=mode,
            cpus=cpus,
            workers=workers,
        )
        self.cachesrv_logs.append(s.proc.log)
        if workers and workers > 1:
            deadline = time.monotonic() + 15
            while len(s.pids()) < workers and time.monotonic() < deadline:
                time.sleep(0.1)
        return s

    def start_acng(self, offline: bool, cpus: str | None) -> servers.Server:
        return servers.start_acng(
            self.pg,
            workdir=self.work / "acng-cache",
            upstream_port=self.upstream.port,
            offline=offline,
            cpus=cpus,
            bind_any=os.environ.get(NETNS_ENV) == "1",
        )

    def hash_check(self, rep: int, server: servers.Server, label: str) -> None:
        r = httpc.check_all(server.port, server.prefix, self.corpus.files)
        mb = r.bytes / r.seconds / 1e6 if r.seconds else 0
        line = f"rep {rep + 1}: {label}: {r.ok}/{len(self.corpus.files)} files correct"
        self.checks.append(f"{line} ({r.seconds:.1f} s, {mb:,.0f} MB/s with 4 connections)")
        log(f"  hash check {label}: {r.ok}/{len(self.corpus.files)} ok in {r.seconds:.1f} s")
        for failure in r.failures[:10]:
            self.problem(f"rep {rep + 1}: {label}: {failure}")
        if len(r.failures) > 10:
            self.problem(f"rep {rep + 1}: {label}: {len(r.failures) - 10} more failures")

    # ---- phases

    def cold(self, rep: int, label: str, start: Callable[[], servers.Server] | None) -> None:
        """Cold big file, then cold small files on one connection, then the mid files
        (unmeasured), through a fresh cache (or straight from the upstream); stops it."""
        server = start() if start else self.upstream
        try:
            self._cold(rep, label, server, cache=start is not None)
        finally:
            if start is not None:
                self.pg.stop(server.proc)

    def _cold(self, rep: int, label: str, server: servers.Server, cache: bool) -> None:
        big = self.corpus.of("big")[0]
        mark = self.upstream_log.mark()
        with self.peak(COLD_BIG, server) if cache else _null():
            conn = httpc.Conn(server.port)
            try:
                reply = conn.get(server.prefix + big.path)
            finally:
                conn.close()
        bad = httpc.verify(reply, big)
        if bad:
            self.problem(f"rep {rep + 1}: {label} {COLD_BIG}: {bad}")
        self.res.put(COLD_BIG, "total s", label, rep, reply.elapsed)
        self.res.put(COLD_BIG, "TTFB ms", label, rep, 1000 * reply.ttfb)
        if cache:
            up = sum(
                b for _, uri, _, b, _ in self.upstream_log.since(mark) if uri.endswith(big.path)
            )
            self.res.put(COLD_BIG, "upstream bytes (x file)", label, rep, up / big.size)
        log(f"  {COLD_BIG:24} {label:24} {reply.elapsed:.2f} s, TTFB {1000 * reply.ttfb:.1f} ms")

        small = self.corpus.of("small")
        with self.peak(COLD_SMALL, server) if cache else _null():
            seq = httpc.fetch_sequence(server.port, server.prefix, small)
        for failure in seq.failures[:10]:
            self.problem(f"rep {rep + 1}: {label} {COLD_SMALL}: {failure}")
        if seq.connects > 1:
            self.notes.append(
                f"rep {rep + 1}: {label} {COLD_SMALL}: the server closed the keep-alive "
                f"connection {seq.connects - 1} times ({seq.retries} requests dropped "
                "unanswered, sent again on a new connection)"
            )
        self.res.put(COLD_SMALL, "connections", label, rep, seq.connects)
        self.res.put(COLD_SMALL, "total s", label, rep, seq.seconds)
        self.res.put(COLD_SMALL, "TTFB first ms", label, rep, 1000 * seq.ttfb_first)
        self.res.put(COLD_SMALL, "TTFB median ms", label, rep, 1000 * seq.ttfb_median)
        self.res.put(COLD_SMALL, "response p99 ms", label, rep, 1000 * seq.response_p99)
        self.res.put(COLD_SMALL, "response max ms", label, rep, 1000 * seq.response_max)
        log(f"  {COLD_SMALL:24} {label:24} {seq.seconds:.2f} s, "
            f"median TTFB {1000 * seq.ttfb_median:.2f} ms")  # fmt: skip
        if not cache:
            return
        # Record the rest (mid files) too; the upstream must have served each file once.
        r = httpc.check_all(server.port, server.prefix, self.corpus.of("mid"))
        for failure in r.failures[:10]:
            self.problem(f"rep {rep + 1}: {label} cold mid files: {failure}")
        fetched = [f for f in self.upstream_log.since(mark) if f[0] == "GET"]
        uris = [uri for _, uri, _, _, _ in fetched]
        want = {"/" + f.path for f in self.corpus.files}
        missing, twice = len(want - set(uris)), len(uris) - len(set(uris))
        self.checks.append(
            f"rep {rep + 1}: {label} cold phase: {len(fetched)} upstream GETs for "
            f"{len(want)} files, {missing} never fetched, {twice} fetched more than once"
        )
        if missing or twice:
            self.problem(f"rep {rep + 1}: {label} cold phase: {missing} files never fetched, "
                         f"{twice} more than once")  # fmt: skip

    def run_rep(self, rep: int) -> None:
        a = self.args
        log(f"rep {rep + 1}/{a.reps}: cold phase")
        store = self.work / f"store-{rep}"
        acng_cache = self.work / "acng-cache"
        shutil.rmtree(acng_cache, ignore_errors=True)
        self.cold(rep, "direct", None)
        live: dict[str, servers.Server] = {}
        for name in a.targets:
            starter = (
                (lambda: self.start_cachesrv(store, "online", self.server_cpu))
                if name == "cachesrv"
                else (lambda: self.start_acng(False, self.server_cpu))
            )
            try:
                self.cold(rep, name, starter)
            except Exception as exc:  # noqa: BLE001
                self.problem(f"rep {rep + 1}: {name} cold phase: {exc}")
                traceback.print_exc()

        log(f"rep {rep + 1}/{a.reps}: warm phase (offline)")
        mark = self.upstream_log.mark()
        nginx = self.start_nginx("nginx", self.server_cpu)
        live["nginx"] = nginx
        starters = {
            "cachesrv": lambda: self.start_cachesrv(store, "offline", self.server_cpu),
            "apt-cacher-ng": lambda: self.start_acng(True, self.server_cpu),
        }
        for name in a.targets:
            try:
                live[name] = starters[name]()
            except Exception as exc:  # noqa: BLE001
                self.problem(f"rep {rep + 1}: {name} offline start: {exc}")
        for name, s in live.items():
            try:
                self.hash_check(rep, s, name)
            except Exception as exc:  # noqa: BLE001
                self.problem(f"rep {rep + 1}: {name} hash check: {exc}")
        order = [n for n in ("nginx", "cachesrv", "apt-cacher-ng") if n in live]
        points = [
            (SMALL, "small", 64, "req/s"),
            (BIG1, "big", 1, "MB/s"),
            (BIG8, "big", 8, "MB/s"),
            (MID1, "mid", 1, "MB/s"),
            (MID8, "mid", 8, "MB/s"),
        ]
        for scenario, kind, conns, metric in points:
            for name in order:
                self.wrk_point(
                    rep,
                    scenario,
                    live[name],
                    name,
                    kind=kind,
                    conns=conns,
                    metric=metric,
                    warmup=kind == "small",
                    cpus=self.load_cpu,
                )
        for name in order:
            if name != "nginx":
                self.pg.stop(live[name].proc)
        self.pg.stop(nginx.proc)

        if not a.no_scaling and self.all_cpus:
            self.scaling(rep, store)

        fetched = self.upstream_log.since(mark)
        self.checks.append(
            f"rep {rep + 1}: warm phase: {len(fetched)} requests in the upstream's access log"
        )
        if fetched:
            self.problem(f"rep {rep + 1}: warm phase reached the upstream: {fetched[:3]}")

        if rep < a.crowd_reps and a.crowd > 0:
            for name in ["direct", *a.targets]:
                try:
                    self.crowd(rep, name)
                except Exception as exc:  # noqa: BLE001
                    self.problem(f"rep {rep + 1}: {name} {CROWD}: {exc}")
                    traceback.print_exc()
        shutil.rmtree(store, ignore_errors=True)
        shutil.rmtree(acng_cache, ignore_errors=True)

    def scaling(self, rep: int, store: Path) -> None:
        """Small-file req/s with 1 and 2 server processes, all on both CPUs (wrk too)."""
        log(f"rep {rep + 1}: 1 vs 2 server processes (server and wrk on CPUs {self.all_cpus})")
        runs: list[tuple[str, Callable[[], servers.Server]]] = [
            ("nginx 1", lambda: self.start_nginx("nginx-w1", self.all_cpus, 1)),
            ("nginx 2", lambda: self.start_nginx("nginx-w2", self.all_cpus, 2)),
        ]
        if "cachesrv" in self.args.targets and self.workers_supported:
            runs += [
                ("cachesrv 1", lambda: self.start_cachesrv(store, "offline", self.all_cpus, 1)),
                ("cachesrv 2", lambda: self.start_cachesrv(store, "offline", self.all_cpus, 2)),
            ]
        for label, start in runs:
            try:
                s = start()
            except Exception as exc:  # noqa: BLE001
                self.problem(f"rep {rep + 1}: scaling {label}: {exc}")
                continue
            try:
                n = len(s.pids())
                self.res.put("scaling", "processes", label, rep, n)
                self.wrk_point(rep, "scaling", s, label, kind="small", conns=64,
                               metric="req/s", warmup=True, cpus=self.all_cpus)  # fmt: skip
            finally:
                self.pg.stop(s.proc)

    def crowd(self, rep: int, name: str) -> None:
        """`--crowd` clients on the cold big file through a fresh cache, or ("direct")
        straight from the upstream: the time the clients themselves need."""
        big = self.corpus.of("big")[0]
        log(f"rep {rep + 1}: {name}: {self.args.crowd} clients on one cold {big.size >> 20} MiB")
        store = self.work / f"crowd-store-{rep}"
        shutil.rmtree(self.work / "acng-cache", ignore_errors=True)
        if name == "direct":
            s = self.upstream
        elif name == "cachesrv":
            s = self.start_cachesrv(store, "online", self.server_cpu)
        else:
            s = self.start_acng(False, self.server_cpu)
        try:
            mark = self.upstream_log.mark()
            with self.peak(CROWD, s) if name != "direct" else _null():
                r = httpc.crowd(s.port, s.prefix, big, self.corpus.root / big.path, self.args.crowd)
            fetched = self.upstream_log.since(mark)
        finally:
            if name != "direct":
                self.pg.stop(s.proc)
            shutil.rmtree(store, ignore_errors=True)
            shutil.rmtree(self.work / "acng-cache", ignore_errors=True)
        up_bytes = sum(b for _, uri, _, b, _ in fetched if uri.endswith(big.path))
        self.res.put(CROWD, "total s", name, rep, r.seconds)
        self.res.put(CROWD, "TTFB max ms", name, rep, 1000 * r.ttfb_max)
        self.res.put(CROWD, "bodies correct", name, rep, r.correct)
        log(f"  {name}: {r.correct}/{r.clients} correct in {r.seconds:.1f} s, upstream sent "
            f"{up_bytes / big.size:.2f}x the file in {len(fetched)} requests")  # fmt: skip
        for failure in r.failures[:5]:
            self.problem(f"rep {rep + 1}: {name} {CROWD}: {failure}")
        if r.correct != r.clients:
            self.problem(f"rep {rep + 1}: {name} {CROWD}: {r.correct}/{r.clients} correct")
        if name == "direct":
            return
        self.res.put(CROWD, "upstream bytes (x file)", name, rep, up_bytes / big.size)
        self.res.put(CROWD, "upstream requests", name, rep, len(fetched))
        if up_bytes != big.size:
            msg = (f"rep {rep + 1}: {name} {CROWD}: upstream sent {up_bytes} bytes in "
                   f"{len(fetched)} requests, want exactly {big.size} (1x)")  # fmt: skip
            if name == "cachesrv":
                self.problem(msg)
            else:
                self.notes.append(msg)


@contextmanager
def _null() -> Iterator[None]:
    yield


# -- report ------------------------------------------------------------------------------


COUNTS = ("processes", "bodies correct", "upstream requests", "connections")


def _cell(run: Run, scenario: str, metric: str, target: str) -> str:
    vals = [v for v in run.res.get(scenario, metric, target).values() if not math.isnan(v)]
    if not vals:
        return "-"
    fmt = ".0f" if metric in COUNTS else number_format(sorted(vals)[len(vals) // 2])
    return spread(vals, fmt)


def _ratio(run: Run, scenario: str, metric: str, target: str, base: str, goal: str) -> str:
    ratios = run.res.ratios(scenario, metric, target, base)
    if not ratios:
        return "-"
    v = verdict(ratios, goal)
    return spread(ratios, ".2f") + "x" + (f" {v}" if v else "")


def report(run: Run, facts: dict[str, str], command: str, seconds: float) -> str:
    a = run.args
    tg = [t for t in ("cachesrv", "apt-cacher-ng") if t in a.targets]
    short = {"cachesrv": "cachesrv", "apt-cacher-ng": "acng"}
    c = run.corpus.spec
    out = [
        "# cachesrv benchmark (issue 8)",
        "",
        f"Command: `{command}` ({a.reps} reps, {a.duration:g} s per wrk point, "
        f"finished in {seconds / 60:.1f} min)",
        "",
        f"Corpus: {c.big_count} x {c.big_size >> 20} MiB, {c.mid_count} x {c.mid_size >> 20} MiB, "
        f"{c.small_count:,} x {c.small_size >> 10} KiB under `pool/main/`. Values are medians "
        "over reps with (min-max); ratios are taken within each rep, then summarised the same "
        "way. Targets are the issue's, judged on the median ratio.",
        "",
        "## Machine",
        "",
        table(["fact", "value"], [[k, v] for k, v in facts.items()]),
        "",
        f"## Hits (warm, offline) - server on CPU {run.server_cpu}, wrk (1 thread) on CPU "
        f"{run.load_cpu}",
        "",
    ]
    header = ["scenario", "metric", "nginx"]
    for t in tg:
        header += [t, f"{short[t]} / nginx"]
    header.append("target (cachesrv / nginx)")
    goals = {
        (SMALL, "req/s"): ">=1.0",
        (SMALL, "p99 ms"): "<=2.0",
        **{(s, "MB/s"): ">=0.95" for s in (BIG1, BIG8, MID1, MID8)},
    }
    rows = []
    for scenario, metrics in [
        (SMALL, ["req/s", "p50 ms", "p99 ms", "server CPU %", "wrk CPU %", "req/s per server CPU"]),
        (BIG1, ["MB/s", "server CPU %", "wrk CPU %"]),
        (BIG8, ["MB/s", "server CPU %", "wrk CPU %"]),
        (MID1, ["MB/s", "server CPU %", "wrk CPU %"]),
        (MID8, ["MB/s", "server CPU %", "wrk CPU %"]),
    ]:
        for metric in metrics:
            goal = goals.get((scenario, metric), "")
            row = [scenario, metric, _cell(run, scenario, metric, "nginx")]
            for t in tg:
                row.append(_cell(run, scenario, metric, t))
                row.append(
                    _ratio(run, scenario, metric, t, "nginx", goal if t == "cachesrv" else "")
                    if metric not in ("server CPU %", "wrk CPU %")
                    else ""
                )
            row.append(goal.replace(">=", ">= ").replace("<=", "<= ") + "x" if goal else "")
            rows.append(row)
    out += [table(header, rows), ""]

    out += [
        "## Misses (cold, online) - against fetching the same straight from the upstream",
        "",
        f"Upstream nginx, clients and this script on CPU {run.load_cpu}, cache on CPU "
        f"{run.server_cpu}. TTFB: request sent to status line received; response: request "
        "sent to last body byte received.",
        "",
    ]
    header = ["scenario", "metric", "direct"]
    for t in tg:
        header += [t, f"{short[t]} / direct"]
    header.append("target (cachesrv / direct)")
    goals = {(COLD_BIG, "total s"): "<=1.5", (COLD_SMALL, "total s"): "<=2.0"}
    rows = []
    for scenario, metrics in [
        (COLD_BIG, ["total s", "TTFB ms", "upstream bytes (x file)"]),
        (
            COLD_SMALL,
            [
                "total s",
                "TTFB first ms",
                "TTFB median ms",
                "response p99 ms",
                "response max ms",
                "connections",
            ],
        ),  # fmt: skip
    ]:
        for metric in metrics:
            goal = goals.get((scenario, metric), "")
            row = [scenario, metric, _cell(run, scenario, metric, "direct")]
            for t in tg:
                row.append(_cell(run, scenario, metric, t))
                ratio = metric not in ("upstream bytes (x file)", "connections")
                row.append(
                    _ratio(run, scenario, metric, t, "direct", goal if t == "cachesrv" else "")
                    if ratio
                    else ""
                )
            row.append(goal.replace("<=", "<= ") + "x" if goal else "")
            rows.append(row)
    out += [table(header, rows), ""]

    crowd_metrics = ["total s", "TTFB max ms", "bodies correct", "upstream requests",
                     "upstream bytes (x file)"]  # fmt: skip
    if any(run.res.get(CROWD, m, t) for m in crowd_metrics for t in tg):
        big = run.corpus.of("big")[0]
        out += [
            f"## {a.crowd} clients on one cold {big.size >> 20} MiB file "
            f"({a.crowd_reps} rep{'s' if a.crowd_reps > 1 else ''})",
            "",
            "All clients connect first, then send their GET at once; every body is compared "
            "byte for byte with the file (by 100 threads of this script on one CPU: the "
            "direct column is what the clients themselves need). Target: the upstream "
            "sends the file exactly once (1.00x), every client correct.",
            "",
        ]
        rows = []
        for m in crowd_metrics:
            row = [m, _cell(run, CROWD, m, "direct")]
            for t in tg:
                row.append(_cell(run, CROWD, m, t))
                ratio = m in ("total s", "TTFB max ms")
                row.append(_ratio(run, CROWD, m, t, "direct", "") if ratio else "")
            rows.append(row)
        header = ["metric", "direct (no cache)"]
        for t in tg:
            header += [t, f"{short[t]} / direct"]
        out += [table(header, rows), ""]

    out += [
        "## Peak RSS of the server (MiB)",
        "",
        "VmHWM, reset (`clear_refs`) before each scenario and read after it; the largest "
        "over reps. For several processes: the largest process, and all summed. "
        "Target for cachesrv: < 100 MiB in every scenario.",
        "",
    ]
    scen_order = [COLD_BIG, COLD_SMALL, CROWD, SMALL, BIG1, BIG8, MID1, MID8]
    labels = ["nginx", *tg]
    rows = []
    for scenario in scen_order:
        row = [scenario]
        for t in labels:
            samples = run.rss.get((scenario, t), [])
            if not samples:
                row.append("-")
                continue
            top = max(max(s) for s in samples) / 1024
            total = max(sum(s) for s in samples) / 1024
            n = max(len(s) for s in samples)
            cell = f"{top:.1f}" + (f" (sum of {n}: {total:.1f})" if n > 1 else "")
            if t == "cachesrv" and top >= 100:
                cell += " **over 100**"
            row.append(cell)
        rows.append(row)
    out += [table(["scenario", *labels], rows), ""]

    if run.res.get("scaling", "req/s", "nginx 1"):
        out += [
            "## 1 vs 2 server processes, 16 KiB hits at 64 conns",
            "",
            f"Server and wrk both on CPUs {run.all_cpus} (wrk takes part of a core, so 2.0x "
            "cannot be reached here; nginx shows what this machine allows). Target for "
            "cachesrv `--workers 2`: >= 1.8x.",
            "",
        ]
        rows = []
        for server in ("nginx", "cachesrv"):
            one, two = f"{server} 1", f"{server} 2"
            if not run.res.get("scaling", "req/s", one):
                continue
            procs_two = _cell(run, "scaling", "processes", two)
            rows.append([
                server + (" (`worker_processes`)" if server == "nginx" else " (`--workers`)"),
                _cell(run, "scaling", "req/s", one),
                _cell(run, "scaling", "req/s", two),
                _ratio(run, "scaling", "req/s", two, one, ">=1.8" if server == "cachesrv" else ""),
                _cell(run, "scaling", "p99 ms", two),
                _cell(run, "scaling", "req/s per server CPU", one),
                _cell(run, "scaling", "req/s per server CPU", two),
                procs_two,
                "; ".join(run.cpu_split.get(two, [])) or "-",
            ])  # fmt: skip
        out += [
            table(["server", "1 process req/s", "2 processes req/s", "2 / 1", "p99 ms (2)",
                   "req/s per CPU (1)", "req/s per CPU (2)", "processes (2)",
                   "CPU of each process (2), by rep"], rows),
            "",
        ]  # fmt: skip
    elif "cachesrv" in tg and not run.workers_supported:
        out += ["`cachesrv serve --help` offers no `--workers`: scaling not measured.", ""]

    if run.profile:
        out += [
            f"## Profile: cachesrv during rep 1's {SMALL} run (py-spy, 250 Hz, "
            "on the load CPU beside wrk)",
            "",
            "Collapsed stacks: `bench/out/profile-small.txt`.",
            "",
            run.profile,
        ]
    out += ["## Checks", ""]
    out += [f"- {c}" for c in run.checks]
    if run.disturbance:
        steal = sorted(d[1] for d in run.disturbance)
        out.append(
            "- steal (time the hypervisor did not run this VM; 100% = one CPU) during the wrk "
            f"points: median {100 * steal[len(steal) // 2]:.0f}%, max {100 * steal[-1]:.0f}%"
        )
        bad = [d for d in run.disturbance if d[1] > 0.10]
        for name, st in bad[:20]:
            out.append(f"  - steal over 10%: {name}: {100 * st:.0f}%")
        if len(bad) > 20:
            out.append(f"  - and {len(bad) - 20} more points with steal over 10%")
    if run.unsaturated:
        out.append(
            "- points where neither the server nor wrk used 85% of its CPU (the limit was "
            "elsewhere: waiting, or other processes on the machine):"
        )
        out += [f"  - {u}" for u in run.unsaturated]
    out += ["", "## Problems", ""]
    out += [f"- {p}" for p in run.problems] or ["- none"]
    notes = [n for n in run.notes if n != "no-reset"]
    if "no-reset" in run.notes:
        notes.append("VmHWM could not be reset: peak RSS is the process's lifetime peak")
    if notes:
        out += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(out) + "\n"


def scan_logs(paths: list[Path]) -> list[str]:
    """Error-looking lines in cachesrv's logs (counts, and the first few)."""
    found: dict[str, int] = {}
    rx = re.compile(r"Traceback|ERROR|CRITICAL|WARNING|Exception")
    for p in paths:
        try:
            with p.open("rb") as f:
                for raw in f:
                    line = raw.decode("utf-8", "replace").rstrip()
                    if rx.search(line):
                        key = re.sub(r"^\S+ \S+ ", "", line)[:200]
                        found[key] = found.get(key, 0) + 1
        except OSError:
            continue
    return [f"cachesrv log: {n} x `{k}`" for k, n in sorted(found.items(), key=lambda kv: -kv[1])]


def machine_facts(args: argparse.Namespace, run_netns: bool) -> dict[str, str]:
    def cmd(argv: list[str]) -> str:
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        except OSError:
            return "not found"
        return (p.stdout + p.stderr).strip().splitlines()[0] if (p.stdout + p.stderr) else "?"

    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    py = cmd([args.python, "-c", (
        "import sys, aiohttp\n"
        "try:\n import uvloop; u = uvloop.__version__\n"
        "except ImportError:\n u = 'not installed'\n"
        "print(sys.version.split()[0], aiohttp.__version__, u)")])  # fmt: skip
    pyv, aiov, uvv = ([*py.split(), "?", "?", "?"])[:3]
    head = cmd(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = cmd(["git", "-C", str(REPO), "status", "--porcelain", "--", "cachesrv"])
    return {
        "CPU": model,
        "cores": str(os.cpu_count()),
        "kernel": platform.release(),
        "python (cachesrv)": pyv,
        "aiohttp": aiov,
        "uvloop": uvv,
        "nginx": cmd(["nginx", "-v"]).replace("nginx version: ", ""),
        "apt-cacher-ng": cmd(["dpkg-query", "-W", "-f", "${Version}", "apt-cacher-ng"]),
        "wrk": cmd(["wrk", "--version"]).split(" [")[0],
        "cachesrv tree": head
        + (" + uncommitted changes in cachesrv/" if dirty and dirty != "?" else ""),  # fmt: skip
        "network": (
            f"private namespace, lo MTU {loopback_mtu()}"
            if run_netns
            else f"host loopback, MTU {loopback_mtu()}"
        ),  # fmt: skip
    }


def remove_stale_work_dirs() -> None:
    """Work dirs of runs that were killed (SIGKILL leaves no time to clean up)."""
    for d in OUT.glob("work-*"):
        try:
            pid = int((d / "pid").read_text())
            os.kill(pid, 0)
            alive = Path(f"/proc/{pid}/cmdline").read_bytes().find(b"run.py") >= 0
        except (OSError, ValueError):
            alive = False
        if not alive:
            log(f"removing {d} (left by a run that was killed)")
            shutil.rmtree(d, ignore_errors=True)


# -- main ---------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    in_netns = os.environ.get(NETNS_ENV) == "1"
    if args.netns and not in_netns:
        reexec_in_netns(argv)
    if in_netns:
        setup_loopback(args.mtu)
    for tool in ("nginx", "wrk", "taskset", *(["apt-cacher-ng"] if "apt-cacher-ng" in
                                               args.targets else [])):  # fmt: skip
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            sys.exit(f"{tool} not found: `apt-get install -y nginx wrk apt-cacher-ng` first")
    os.environ["PATH"] += os.pathsep + "/usr/sbin:/sbin"
    procs.bound_run(args.max_minutes)

    ncpu = os.cpu_count() or 1
    server_cpu, load_cpu, all_cpus = ("0", "1", "0,1") if ncpu >= 2 else (None, None, None)
    if load_cpu:
        os.sched_setaffinity(0, {int(load_cpu)})
    if args.nice:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)  # inherited by all we start
    t_start = time.monotonic()
    spec = corpus_mod.QUICK if args.quick else corpus_mod.FULL
    root = args.corpus_dir or OUT / "corpus" / ("quick" if args.quick else "full")
    corpus = corpus_mod.ensure(root.resolve(), spec, log)
    name_scenarios(spec, args.crowd)
    OUT.mkdir(parents=True, exist_ok=True)
    remove_stale_work_dirs()
    work = Path(tempfile.mkdtemp(prefix="work-", dir=OUT))
    (work / "pid").write_text(str(os.getpid()))
    pg = procs.Processes()
    command = "python3 bench/run.py" + "".join(" " + shlex.quote(a) for a in argv)
    log(f"{command}: work dir {work}, netns={in_netns}, lo MTU {loopback_mtu()}")
    rc = 0
    try:
        up_log = work / "upstream-access.log"
        upstream = servers.start_nginx(
            pg, "upstream", root=corpus.root, workdir=work, cpus=load_cpu, access_log=up_log
        )
        run = Run(args, corpus, work, pg, upstream, servers.AccessLog(up_log),
                  server_cpu, load_cpu, all_cpus)  # fmt: skip
        run.wrk_one, run.wrk_many = wrk.scripts(work)
        if "cachesrv" in args.targets:
            run.workers_supported = servers.cachesrv_workers_option(args.python, REPO)
        for rep in range(args.reps):
            run.run_rep(rep)
        run.notes += scan_logs(run.cachesrv_logs)
        text = report(run, machine_facts(args, in_netns), command, time.monotonic() - t_start)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        (args.out.with_suffix(".json")).write_text(
            json.dumps(
                {f"{s} | {m}": v for (s, m), v in run.res.values.items()}, indent=1, default=dict
            )
        )
        print(text)
        log(f"written {args.out}")
        rc = 1 if run.fatal else 0
    except Interrupted as exc:
        log(f"stopped by {exc}; cleaning up")
        rc = 130
    finally:
        procs.end_run(pg, work, keep=args.keep)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
