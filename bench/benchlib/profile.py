"""py-spy over the server while wrk loads it (`--profile`): collapsed stacks and a summary."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

from . import procs


def py_spy(python: str) -> str | None:
    """py-spy beside the cachesrv Python (the venv), or on PATH."""
    beside = Path(python).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def start(
    exe: str, pid: int, seconds: float, out: Path, cpus: str | None
) -> subprocess.Popen[bytes]:
    argv = [exe, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
            "--rate", "250", "--nonblocking", "--subprocesses", "--format", "raw",
            "--output", str(out)]  # fmt: skip
    if cpus:
        argv = ["taskset", "-c", cpus, *argv]
    return subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=procs.in_child
    )


#: Frames every sample of the main thread shares (start-up, the event loop's entry).
SCAFFOLD = re.compile(
    r"^process \d+:|<frozen runpy>|typer/|click/|cachesrv/cli[/.]|cachesrv/__main__\.py|"
    r"asyncio/runners\.py|uvloop/__init__\.py|cachesrv/web/serve\.py|^<module>"
)


def _function(frame: str) -> str:
    """'f (path/file.py:123)' -> 'f (path/file.py)': lines of one function together."""
    return re.sub(r":\d+\)$", ")", frame)


def summary(collapsed: Path, top: int = 25) -> str:
    """Markdown: the functions with the most samples on top of the stack (self) and
    anywhere in it (total, start-up frames left out), from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_function(f) for f in stack.split(";") if not f.startswith("process ")]
        if not frames:
            continue
        samples += n
        own[frames[-1]] += n
        for f in set(frames):
            if not SCAFFOLD.search(f):
                total[f] += n
    if not samples:
        return "(no samples)\n"
    out = [f"{samples} samples. Self (top of stack):", "", "| % | frame |", "|---|---|"]
    out += [f"| {100 * n / samples:.1f} | `{f}` |" for f, n in own.most_common(top)]
    out += ["", "Total (anywhere in the stack):", "", "| % | frame |", "|---|---|"]
    out += [f"| {100 * n / samples:.1f} | `{f}` |" for f, n in total.most_common(top)]
    return "\n".join(out) + "\n"
