"""The soak's figures: the RSS/fd time series, its linear fit, failures by cause,
cachesrv's log records by count."""

from __future__ import annotations

import contextlib
import re
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .soakclients import Failure


@dataclass(frozen=True)
class Sample:
    t: float  # seconds since the load started
    server: int  # which start of cachesrv (1 = the first)
    rss_kib: int | None  # VmRSS summed over the server's processes; None while it is down
    fds: int | None  # entries of /proc/<pid>/fd, summed likewise
    rate: float  # requests finished per second since the previous sample


@dataclass(frozen=True)
class Window:
    """A span during which failures are expected: a server kill or an upstream restart
    (from the signal until the new process serves, plus a second)."""

    what: str
    start: float
    end: float


@dataclass(frozen=True)
class Fit:
    slope: float  # units per minute
    n: int
    minutes: float

    @property
    def growth(self) -> float:
        """What the fit grew across its window."""
        return self.slope * self.minutes


def fit(points: list[tuple[float, float]]) -> Fit | None:
    """Least-squares line through (seconds, value); None under 5 points."""
    if len(points) < 5:
        return None
    xs = [x / 60 for x, _ in points]
    ys = [y for _, y in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return Fit(slope, len(points), xs[-1] - xs[0])


def spread(values: list[float], fmt: str = ".1f") -> str:
    if not values:
        return "-"
    return (
        f"min {min(values):{fmt}} / median {statistics.median(values):{fmt}} / "
        f"max {max(values):{fmt}}"
    )


def series_table(samples: list[Sample], windows: list[Window], rows: int = 30) -> list[str]:
    """The samples in at most `rows` equal time buckets: medians, and what happened."""
    if not samples:
        return ["(no samples)"]
    end = samples[-1].t
    width = max(end / rows, 1e-9)
    buckets: dict[int, list[Sample]] = {}
    for s in samples:
        buckets.setdefault(min(int(s.t / width), rows - 1), []).append(s)
    out = [
        "| t (s) | server start | RSS MiB | fds | req/s | events |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for i in sorted(buckets):
        b = buckets[i]
        lo, hi = i * width, (i + 1) * width
        rss = [s.rss_kib / 1024 for s in b if s.rss_kib is not None]
        fds = [s.fds for s in b if s.fds is not None]
        events = ", ".join(sorted({w.what for w in windows if lo <= w.start < hi}))
        rate = statistics.fmean(s.rate for s in b)
        starts = ",".join(sorted({str(s.server) for s in b if s.rss_kib is not None})) or "-"
        rss_cell = f"{statistics.median(rss):.1f}" if rss else "down"
        fds_cell = f"{statistics.median(fds):.0f} ({min(fds)}-{max(fds)})" if fds else "down"
        out.append(
            f"| {lo:.0f}-{hi:.0f} | {starts} | {rss_cell} | {fds_cell} | {rate:.0f} | {events} |"
        )
    return out


def failures_by_cause(
    failures: list[Failure], windows: list[Window], origin: float
) -> list[tuple[str, str, int]]:
    """(cause, when, count), most frequent first. `when` is the window a failure's
    request overlapped (server kill before upstream restart), or `steady`. Windows are
    in seconds since `origin` (monotonic), failures in monotonic time."""
    counts: Counter[tuple[str, str]] = Counter()
    for f in failures:
        when = "steady"
        t0, t1 = f.t0 - origin, f.t1 - origin
        for what in ("server kill", "upstream restart"):
            if any(w.what == what and t0 <= w.end and t1 >= w.start for w in windows):
                when = f"during {what}"
                break
        counts[(f.cause, when)] += 1
    return [(cause, when, n) for (cause, when), n in counts.most_common()]


_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (\w+) (\S+): (.*)$")


def scan_logs(paths: list[Path]) -> dict[str, list[tuple[str, int]]]:
    """cachesrv's log records of level WARNING and above, by level, then by message
    (URLs, ports and digests blanked; a traceback's last line appended), with counts."""
    found: dict[str, dict[str, int]] = {}

    def add(level: str, text: str, tail: str) -> None:
        text = re.sub(r"https?://127\.0\.0\.1:\d+/\S*", "URL", text)
        text = re.sub(r"\b[0-9a-f]{64}\b", "HEX", text)
        text = re.sub(r"'127\.0\.0\.1', \d+", "'127.0.0.1', PORT", text)
        key = text[:150] + (f" -> {tail[:120]}" if tail else "")
        found.setdefault(level, {}).setdefault(key, 0)
        found[level][key] += 1

    for p in paths:
        record: tuple[str, str] | None = None
        tail = ""
        with contextlib.suppress(OSError), p.open("rb") as f:
            for raw in f:
                line = raw.decode("utf-8", "replace").rstrip()
                m = _RECORD.match(line)
                if m:
                    if record:
                        add(*record, tail)
                    record, tail = None, ""
                    if m[1] in ("WARNING", "ERROR", "CRITICAL"):
                        record = (m[1], f"{m[2]}: {m[3]}")
                elif record and line and not line.startswith((" ", "Traceback")):
                    tail = line  # the exception that ends a traceback
        if record:
            add(*record, tail)
    return {level: sorted(msgs.items(), key=lambda kv: -kv[1]) for level, msgs in found.items()}
