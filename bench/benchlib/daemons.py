"""Processes a bench starts again and again, from asyncio (the soak's upstream and server).

A `Daemon` is one argv (same ports, same store) started, stopped with a signal (SIGKILL
for a crash) and started again; each start logs to its own `<name>-NN.log` and counts
as started once its "ready" line appears there. Processes come from `procs.Processes`
(own session, PR_SET_PDEATHSIG, stopped at the end of the run whatever ends it), and are
started from the event loop's thread, which lives as long as the run. Waiting never
blocks the loop: the log is polled, exits are waited for in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
from pathlib import Path

from . import procs


async def wait_line(proc: procs.Proc, pattern: str, within: float = 60) -> re.Match[str]:
    """Wait for `pattern` in the process's log (its "ready" line)."""
    rx = re.compile(pattern)
    try:
        async with asyncio.timeout(within):
            while True:
                with contextlib.suppress(OSError):
                    m = rx.search(proc.log.read_text("utf-8", "replace"))
                    if m:
                        return m
                if not proc.alive():
                    raise RuntimeError(f"{proc.name} exited at start-up:\n{proc.log_tail()}")
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise RuntimeError(
            f"{proc.name} did not start in {within:.0f} s:\n{proc.log_tail()}"
        ) from None


async def end(pg: procs.Processes, proc: procs.Proc, sig: int, within: float = 30) -> int:
    """Send `sig` to the process group; SIGKILL after `within` seconds; its exit status."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        await asyncio.to_thread(proc.popen.wait, within)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # and whatever of its group is left
    rc = await asyncio.to_thread(proc.popen.wait, 10)
    if proc in pg.procs:
        pg.procs.remove(proc)
    return rc


class Daemon:
    """A process started again and again with the same argv (same ports, same store)."""

    def __init__(
        self,
        pg: procs.Processes,
        name: str,
        argv: list[str],
        *,
        logs: Path,
        ready: str,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.pg, self.name, self.argv, self.logs, self.ready = pg, name, argv, logs, ready
        self.cwd, self.env = cwd, env
        self.starts = 0
        self.proc: procs.Proc | None = None

    async def start(self) -> None:
        for attempt in range(5):
            self.starts += 1
            log_path = self.logs / f"{self.name}-{self.starts:02d}.log"
            proc = self.pg.start(f"{self.name}-{self.starts}", self.argv, log=log_path,
                                 cwd=self.cwd, env=self.env)  # fmt: skip
            try:
                await wait_line(proc, self.ready)
            except RuntimeError:
                await end(self.pg, proc, signal.SIGKILL)
                if attempt == 4 or "address already in use" not in proc.log_tail().lower():
                    raise
                await asyncio.sleep(1)
                continue
            self.proc = proc
            return

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        proc, self.proc = self.proc, None
        return await end(self.pg, proc, sig) if proc is not None else 0

    def pids(self) -> list[int]:
        return procs.tree(self.proc.pid) if self.proc is not None and self.proc.alive() else []

    def logs_written(self) -> list[Path]:
        return sorted(self.logs.glob(f"{self.name}-*.log"))


def measure(pids: list[int]) -> tuple[int | None, int | None]:
    """(VmRSS KiB, open descriptors), summed over `pids`; (None, None) without any."""
    rss = fds = 0
    seen = False
    for pid in pids:
        with contextlib.suppress(OSError):
            m = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
            n = len(os.listdir(f"/proc/{pid}/fd"))
            rss += int(m.group(1)) if m else 0
            fds += n
            seen = True
    return (rss, fds) if seen else (None, None)
