"""Processes a bench run starts: started pinned, measured from /proc, always stopped.

Every process is started in its own session (so one killpg stops it and its
workers) with PR_SET_PDEATHSIG, so that even a SIGKILLed harness leaves nothing
behind. `Processes.stop_all()` runs in the harness's `finally`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

PR_SET_PDEATHSIG = 1
CLK_TCK = os.sysconf("SC_CLK_TCK")
_libc = ctypes.CDLL(None, use_errno=True)


def in_child() -> None:
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            with self.log.open("rb") as f:
                f.seek(max(0, self.log.stat().st_size - 8192))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class Processes:
    """The registry of everything this run started."""

    def __init__(self) -> None:
        self.procs: list[Proc] = []

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        log: Path,
        cpus: str | None = None,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> Proc:
        if cpus:
            argv = ["taskset", "-c", cpus, *argv]
        with log.open("ab") as out:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=env,
                start_new_session=True,
                preexec_fn=in_child,  # no client threads run while we spawn
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc, timeout: float = 20) -> None:
        if proc.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.popen.wait(10)
        # Workers that outlived their leader are still in its process group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            with contextlib.suppress(Exception):  # keep stopping the others
                self.stop(proc, timeout=10)


# -- a bounded run: signals, a deadline, clean-up --------------------------------


class Interrupted(BaseException):
    """A signal (Ctrl-C, SIGTERM, SIGHUP, the deadline): past every `except Exception`."""


def _on_signal(signum: int, _frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


def bound_run(max_minutes: float) -> None:
    """Make SIGTERM, SIGINT and SIGHUP raise `Interrupted`, and so does a deadline."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGALRM):
        signal.signal(sig, _on_signal)
    signal.alarm(max(1, int(max_minutes * 60)))


def end_run(pg: Processes, work: Path, *, keep: bool) -> None:
    """Stop the deadline and every process started, then remove `work` unless kept."""
    signal.alarm(0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    pg.stop_all()
    if keep:
        log(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- ports -------------------------------------------------------------------------


def free_port() -> int:
    """A port on 127.0.0.1 nobody listens on now, for servers that cannot bind port 0.

    Taken below the kernel's ephemeral range (so no client connection holds it) and
    below 32768: apt-cacher-ng 3.7.4 fails to bind higher ports ("Error resolving
    address for binding").
    """
    for _ in range(1000):
        port = random.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-32000 on 127.0.0.1")


def wait_port(port: int, proc: Proc, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited at start-up:\n{proc.log_tail()}")
        with socket.socket() as s:
            s.settimeout(1)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{proc.name} did not listen on port {port}:\n{proc.log_tail()}")


def wait_log(proc: Proc, pattern: str, timeout: float = 60) -> re.Match[str]:
    """Wait for `pattern` in the process's log file (e.g. cachesrv's serving line)."""
    rx = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            with proc.log.open("rb") as f:
                m = rx.search(f.read(1 << 20).decode("utf-8", "replace"))
            if m:
                return m
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited at start-up:\n{proc.log_tail()}")
        time.sleep(0.05)
    raise RuntimeError(f"{proc.name} did not announce itself:\n{proc.log_tail()}")


# -- /proc -------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()  # fields from 3 (state) on


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants alive now."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            ppid = int(_stat_fields(int(entry.name))[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        if Path(f"/proc/{p}").exists():
            out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of `pids` (all their threads)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            f = _stat_fields(pid)
            total += int(f[11]) + int(f[12])
    return total / CLK_TCK


def reset_peak_rss(pids: list[int]) -> bool:
    """Reset VmHWM (`echo 5 > clear_refs`, Linux >= 4.0); False where not allowed."""
    ok = True
    for pid in pids:
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            ok = False
    return ok


def peak_rss_kib(pids: list[int]) -> list[int]:
    """VmHWM of each of `pids` in KiB."""
    out = []
    for pid in pids:
        with contextlib.suppress(OSError):
            m = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
            if m:
                out.append(int(m.group(1)))
    return out


def children_cpu() -> float:
    """CPU seconds of this process's children that have been waited for (wrk, say)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def steal_ticks() -> int:
    """Clock ticks the hypervisor did not run this VM's CPUs, all CPUs, so far."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu "):
            f = line.split()
            return int(f[8]) if len(f) > 8 else 0
    return 0


class Steal:
    """Steal time over a block, in CPUs (1.0: one CPU's worth of time taken away)."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.ticks0 = steal_ticks()
        self.cpus = 0.0

    def stop(self) -> None:
        wall = time.monotonic() - self.t0
        self.cpus = (steal_ticks() - self.ticks0) / CLK_TCK / wall
