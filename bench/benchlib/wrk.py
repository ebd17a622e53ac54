"""wrk runs: bounded (-d), one thread pinned to the load CPU, exact numbers from Lua.

The `done` hook prints one JSON line with wrk's own totals and latency percentiles
(microseconds), so nothing is parsed from wrk's rounded, human-readable summary.
With a paths file, `request` cycles through the paths (one pre-formatted request
per path; every connection takes the next one).
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

DONE = r"""
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH {\"requests\": %.0f, \"bytes\": %.0f, \"duration_us\": %.0f, " ..
    "\"connect\": %.0f, \"read\": %.0f, \"write\": %.0f, \"status\": %.0f, " ..
    "\"timeout\": %.0f, \"p50_us\": %.0f, \"p99_us\": %.0f, \"max_us\": %.0f}\n",
    summary.requests, summary.bytes, summary.duration, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(99), latency.max))
end
"""

PATHS = r"""
local reqs, n, i = {}, 0, 0
function init(args)
  for line in io.lines(args[1]) do
    n = n + 1
    reqs[n] = wrk.format("GET", line)
  end
end
function request()
  i = i % n + 1
  return reqs[i]
end
"""


@dataclass
class WrkResult:
    requests: int
    bytes: int
    seconds: float
    errors: dict[str, int]
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def mbps(self) -> float:
        return self.bytes / self.seconds / 1e6

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def scripts(workdir: Path) -> tuple[Path, Path]:
    """(script for one URL, script for a paths file) written into `workdir`."""
    one = workdir / "wrk-one.lua"
    many = workdir / "wrk-paths.lua"
    one.write_text(DONE)
    many.write_text(PATHS + DONE)
    return one, many


def run(
    url: str,
    *,
    connections: int,
    seconds: float,
    script: Path,
    paths_file: Path | None = None,
    cpus: str | None = None,
    timeout_s: int = 30,
) -> WrkResult:
    argv = [
        "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s",
        f"--timeout={timeout_s}s", "--latency", "-s", str(script), url,
    ]  # fmt: skip
    if paths_file is not None:
        argv += ["--", str(paths_file)]
    if cpus:
        argv = ["taskset", "-c", cpus, *argv]
    out = subprocess.run(
        argv, capture_output=True, text=True, timeout=seconds + timeout_s + 60, check=False
    )
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCH ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout[-2000:]}{out.stderr}")
    d = json.loads(line[6:])
    errors = {k: int(d[k]) for k in ("connect", "read", "write", "status", "timeout")}
    return WrkResult(
        int(d["requests"]),
        int(d["bytes"]),
        d["duration_us"] / 1e6,
        errors,
        d["p50_us"] / 1e3,
        d["p99_us"] / 1e3,
    )
