#!/usr/bin/env python3
"""Peak RSS of `cachesrv serve` while it records, then serves, one big file.

Usage: .venv/bin/python bench/memory.py [--size-mib 1024] [--clients 1]

Starts an upstream (aiohttp FileResponse over a generated file) and a real
`cachesrv serve` on 127.0.0.1, downloads the file through cachesrv (miss: recorded
while streamed), then again (hit: sendfile), checks both bodies by sha256, and
prints the server's peak RSS (VmHWM from /proc). Target: under 100 MiB.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web


def make_file(path: Path, size: int) -> str:
    """Write `size` pseudo-random bytes (seeded, fast) and return their sha256."""
    h = hashlib.sha256()
    block = hashlib.sha512(b"cachesrv-bench").digest() * (1 << 14)  # 1 MiB
    with path.open("wb") as f:
        written = 0
        i = 0
        while written < size:
            chunk = (i.to_bytes(8, "little") + block)[: min(len(block), size - written)]
            f.write(chunk)
            h.update(chunk)
            written += len(chunk)
            i += 1
    return h.hexdigest()


async def download(url: str) -> tuple[str, int, float]:
    h = hashlib.sha256()
    n = 0
    t0 = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
    async with aiohttp.ClientSession(timeout=timeout) as s, s.get(url) as r:
        r.raise_for_status()
        async for chunk in r.content.iter_chunked(1 << 20):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n, time.monotonic() - t0


def vm_hwm_kib(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    m = re.search(r"VmHWM:\s+(\d+) kB", text)
    return int(m.group(1)) if m else -1


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--clients", type=int, default=1, help="concurrent clients per phase")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="cachesrv-bench-") as tmp:
        work = Path(tmp)
        (work / "up").mkdir()
        big = work / "up" / "big.tar.gz"
        print(f"generating {args.size_mib} MiB ...", flush=True)
        want = make_file(big, args.size_mib << 20)

        app = web.Application()
        app.router.add_static("/", work / "up")
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        (work / "c.toml").write_text(
            f'[upstreams.files]\nkind = "generic"\nurl = "http://127.0.0.1:{port}"\n'
        )
        proc = subprocess.Popen(  # noqa: ASYNC220 - started once, read line by line
            [sys.executable, "-m", "cachesrv", "serve", "--config", str(work / "c.toml"),
             "--store", str(work / "store"), "--listen", "127.0.0.1:0"],
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert proc.stderr is not None
        url = ""
        for line in proc.stderr:
            m = re.search(r"serving (http://\S+?)/? ", line)
            if m:
                url = m.group(1)
                break
        if not url:
            print("server did not start", file=sys.stderr)
            return 1
        try:
            base = vm_hwm_kib(proc.pid)
            for phase in ("miss (record)", "hit (serve)"):
                results = await asyncio.gather(
                    *(download(f"{url}/files/big.tar.gz") for _ in range(args.clients))
                )
                for digest, n, secs in results:
                    ok = "ok" if digest == want else "WRONG BODY"
                    print(f"{phase:14} {n / 2**20:8.0f} MiB in {secs:6.2f}s "
                          f"({n / 2**20 / secs:7.1f} MiB/s) sha256 {ok}")  # fmt: skip
            peak = vm_hwm_kib(proc.pid)
        finally:
            proc.terminate()
            proc.wait(30)
            await runner.cleanup()
        print(f"server RSS after start-up: {base / 1024:.1f} MiB")
        print(f"server peak RSS:           {peak / 1024:.1f} MiB (target < 100 MiB)")
        return 0 if peak < 100 * 1024 else 2


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
