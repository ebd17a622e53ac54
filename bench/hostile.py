#!/usr/bin/env python3
"""Hostile upstreams, measured: time to the answer and cachesrv's peak memory.

    .venv/bin/python bench/hostile.py [--keep]

A real `cachesrv serve` (one process) in front of an aiohttp upstream on 127.0.0.1
that serves, each in turn:
- a simple-index page of 100 MB with a million links, with and without a
  Content-Length (refused past `[fetch] max_document`, never parsed);
- a page of 30 MB just under that limit, with 300,000 links: accepted, parsed and
  rewritten: the worst a page can cost;
- a drip feed (one byte every 0.1 s) with `min_rate` 1 KiB/s over a 5 s window
  (the default window is 60 s; the shorter one keeps the run short);
- a body that never ends against `max_body = "64MiB"`.
For each: the status the client got, the seconds it took, cachesrv's peak RSS
(VmHWM, reset before each case), and whether anything was recorded. Loopback only;
bounded (10 minutes); every process and temp dir is removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import procs  # noqa: E402
from benchlib.servers import cachesrv_env  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
LINK = b'<a href="../../files/x-1.0-py3-none-any.whl#sha256=' + b"0" * 64 + b'">x</a>\n'


def page_handler(size: int, declared: bool) -> Callable[[web.Request], object]:
    count = size // len(LINK) // 1000 * 1000  # whole blocks of 1,000 links

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/html"})
        if declared:
            resp.content_length = count * len(LINK)
        await resp.prepare(request)
        block = LINK * 1000
        for _ in range(count // 1000):
            await resp.write(block)
        await resp.write_eof()
        return resp

    return handler


async def drip(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse()
    await resp.prepare(request)
    while True:
        await resp.write(b"z")
        await asyncio.sleep(0.1)


async def endless(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse()
    await resp.prepare(request)
    chunk = b"x" * 65536
    while True:
        await resp.write(chunk)


class Upstream:
    """The hostile upstream, in a thread with its own loop."""

    def __init__(self) -> None:
        self.port = procs.free_port()
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_get("/simple/big/", page_handler(100 * 1024 * 1024, True))
        app.router.add_get("/simple/big-undeclared/", page_handler(100 * 1024 * 1024, False))
        app.router.add_get("/simple/near-limit/", page_handler(30 * 1024 * 1024, True))
        app.router.add_get("/files/drip.tar.gz", drip)
        app.router.add_get("/files/endless.tar.gz", endless)
        runner = web.AppRunner(app, access_log=None)
        self.loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", self.port)
        self.loop.run_until_complete(site.start())
        self.ready.set()
        self.loop.run_forever()

    def start(self) -> None:
        self.thread.start()
        self.ready.wait(30)


CONFIG = """\
[fetch]
min_rate = "1KiB"
rate_window = 5

[upstreams.pypi]
kind = "pypi"
url = "http://127.0.0.1:{port}/simple"

[upstreams.files]
kind = "generic"
url = "http://127.0.0.1:{port}/files"
max_body = "64MiB"
"""


def ask(url: str) -> tuple[str, float]:
    started = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=300) as resp:
            resp.read()
            status = str(resp.status)
    except urllib.error.HTTPError as exc:
        status = str(exc.code)
    except (OSError, http.client.HTTPException) as exc:  # cut after the headers went out
        status = f"cut ({type(exc).__name__})"
    return status, time.monotonic() - started


def entries(base: str) -> int:
    with urllib.request.urlopen(f"{base}/_cachesrv/api/v1/entries", timeout=30) as resp:
        return resp.read().count(b'"key"')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = parser.parse_args()
    procs.bound_run(10)
    work = Path(tempfile.mkdtemp(prefix="cachesrv-hostile-"))
    pg = procs.Processes()
    try:
        upstream = Upstream()
        upstream.start()
        conf = work / "cachesrv.toml"
        conf.write_text(CONFIG.format(port=upstream.port))
        port = procs.free_port()
        argv = [sys.executable, "-m", "cachesrv", "serve", "--config", str(conf)]
        argv += ["--store", str(work / "store"), "--listen", f"127.0.0.1:{port}"]
        server = pg.start(
            "cachesrv", argv, log=work / "serve.log", cwd=REPO, env=cachesrv_env(REPO)
        )
        procs.wait_port(port, server)
        base = f"http://127.0.0.1:{port}"
        cases = [
            ("100 MB page, 1M links (declared)", "/pypi/simple/big/"),
            ("100 MB page, 1M links (no length)", "/pypi/simple/big-undeclared/"),
            ("30 MB page, 300k links (accepted)", "/pypi/simple/near-limit/"),
            ("drip feed, 10 B/s (5 s window)", "/files/drip.tar.gz"),
            ("endless body (max_body 64 MiB)", "/files/endless.tar.gz"),
        ]
        ask(f"{base}/_cachesrv/api/v1/stats")
        idle = procs.peak_rss_kib(procs.tree(server.pid))
        print(f"cachesrv idle RSS: {sum(idle) / 1024:.0f} MiB")
        print(f"{'case':<38} {'answer':>14} {'seconds':>8} {'peak RSS MiB':>13} {'entries':>8}")
        for name, path in cases:
            pids = procs.tree(server.pid)
            procs.reset_peak_rss(pids)
            status, took = ask(base + path)
            peak = sum(procs.peak_rss_kib(pids)) / 1024
            print(f"{name:<38} {status:>14} {took:>8.1f} {peak:>13.0f} {entries(base):>8}")
        return 0
    except procs.Interrupted:
        return 130
    finally:
        with contextlib.suppress(Exception):
            procs.end_run(pg, work, keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
