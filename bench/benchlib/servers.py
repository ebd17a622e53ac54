"""The servers under test and the upstream, each with a private config on 127.0.0.1.

- nginx: `daemon off`, its own prefix, pid file, temp and log paths; an access log
  only for the upstream (the log proves what the caches fetched).
- apt-cacher-ng: its own config dir (`-c`), cache and log dirs, `ForeGround`, one
  `Remap-bench: /bench ; http://127.0.0.1:UP/` line; `Offlinemode=1` for warm runs.
- cachesrv: `python -m cachesrv serve` with an apt upstream named `debian`.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from . import procs


@dataclass
class Server:
    """A running target: where to send requests (`port`, `prefix`) and what to measure."""

    name: str
    proc: procs.Proc
    port: int
    prefix: str  # URL path before the corpus path, e.g. "/debian/"
    notes: list[str] = field(default_factory=list)

    def pids(self) -> list[int]:
        return procs.tree(self.proc.pid)

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{self.prefix}{path}"


# -- nginx ------------------------------------------------------------------------

NGINX_CONF = """\
{user}worker_processes {workers};
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    log_format bench '$request_method $request_uri $status $body_bytes_sent "$http_user_agent"';
    access_log {access_log};
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    default_type application/octet-stream;
    types {{ application/vnd.debian.binary-package deb; }}
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    server {{
        listen 127.0.0.1:{port}{ssl} backlog=4096{reuseport};
        root {root};{tls}
    }}
}}
"""


def start_nginx(
    pg: procs.Processes,
    name: str,
    *,
    root: Path,
    workdir: Path,
    cpus: str | None,
    workers: int = 1,
    access_log: Path | None = None,
    tls: tuple[Path, Path] | None = None,
) -> Server:
    """nginx serving `root` on 127.0.0.1; over TLS with `tls` = (cert chain, key) PEMs."""
    d = workdir / name
    (d / "tmp").mkdir(parents=True, exist_ok=True)
    for attempt in range(5):
        port = procs.free_port()
        conf = NGINX_CONF.format(
            user="user root root;\n" if os.geteuid() == 0 else "",
            workers=workers,
            dir=d,
            access_log=f"{access_log} bench" if access_log else "off",
            port=port,
            root=root,
            # Several workers: one listening socket each, so the kernel spreads the
            # connections (with one shared socket, one worker takes nearly all of wrk's).
            reuseport=" reuseport" if workers > 1 else "",
            ssl=" ssl" if tls else "",
            tls=(
                f"\n        ssl_certificate {tls[0]};\n        ssl_certificate_key {tls[1]};"
                if tls
                else ""
            ),
        )
        (d / "nginx.conf").write_text(conf)
        proc = pg.start(
            name,
            ["nginx", "-e", str(d / "error.log"), "-p", str(d), "-c", str(d / "nginx.conf")],
            log=d / "stderr.log",
            cpus=cpus,
        )
        try:
            procs.wait_port(port, proc)
        except RuntimeError:
            pg.stop(proc)
            if attempt == 4:
                raise
            continue
        return Server(name, proc, port, "/")
    raise AssertionError("unreachable")


class AccessLog:
    """The upstream's access log, read from a mark: what the caches fetched since."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def mark(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def since(self, mark: int) -> list[tuple[str, str, int, int, str]]:
        """(method, uri, status, body bytes, user agent) for each request after `mark`."""
        if not self.path.exists():
            return []
        with self.path.open("rb") as f:
            f.seek(mark)
            text = f.read().decode("utf-8", "replace")
        out = []
        for line in text.splitlines():
            m = re.match(r'(\S+) (\S+) (\d+) (\d+) "(.*)"$', line)
            if m:
                out.append((m[1], m[2], int(m[3]), int(m[4]), m[5]))
        return out


# -- apt-cacher-ng --------------------------------------------------------------------

ACNG_CONF = """\
CacheDir: {dir}/cache
LogDir: {dir}/log
SupportDir: /usr/lib/apt-cacher-ng
Port: {port}
{bind}ForeGround: 1
PidFile: {dir}/pid
SocketPath: {dir}/socket
Remap-bench: /bench ; http://127.0.0.1:{upstream_port}/
"""


def start_acng(
    pg: procs.Processes,
    *,
    workdir: Path,
    upstream_port: int,
    offline: bool,
    cpus: str | None,
    bind_any: bool = False,
) -> Server:
    """apt-cacher-ng over `workdir` (its cache stays there across restarts).

    `bind_any`: no BindAddress. In a namespace that has only loopback, acng cannot
    resolve "127.0.0.1" to bind to (getaddrinfo's AI_ADDRCONFIG ignores loopback
    addresses), so there it listens on all addresses: that is, on loopback alone.
    """
    d = workdir / "apt-cacher-ng"
    for sub in ("conf", "cache", "log"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    for attempt in range(3):
        port = procs.free_port()
        (d / "conf" / "acng.conf").write_text(
            ACNG_CONF.format(
                dir=d,
                port=port,
                upstream_port=upstream_port,
                bind="" if bind_any else "BindAddress: 127.0.0.1\n",
            )
        )
        argv = ["apt-cacher-ng", "-c", str(d / "conf"), f"Offlinemode={int(offline)}"]
        proc = pg.start("apt-cacher-ng", argv, log=d / "stderr.log", cpus=cpus)
        try:
            procs.wait_port(port, proc, timeout=15)
        except RuntimeError:
            pg.stop(proc)
            if attempt == 2:
                raise
            continue
        return Server("apt-cacher-ng", proc, port, "/bench/")
    raise AssertionError("unreachable")


# -- cachesrv -------------------------------------------------------------------------

CACHESRV_CONF = """\
[upstreams.debian]
kind = "apt"
url = "http://127.0.0.1:{upstream_port}"
"""


def cachesrv_workers_option(python: str, repo: Path) -> bool:
    """Whether this cachesrv's `serve --help` offers `--workers`."""
    out = subprocess.run(
        [python, "-m", "cachesrv", "serve", "--help"],
        capture_output=True,
        text=True,
        cwd=repo,
        env=cachesrv_env(repo),
        timeout=60,
        check=False,
    )
    return "--workers" in out.stdout


def cachesrv_env(repo: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(repo)
    env.pop("CACHESRV_STORE", None)
    return env


def start_cachesrv(
    pg: procs.Processes,
    *,
    python: str,
    repo: Path,
    workdir: Path,
    store: Path,
    upstream_port: int,
    mode: str,
    cpus: str | None,
    workers: int | None = None,
) -> Server:
    d = workdir / "cachesrv"
    d.mkdir(parents=True, exist_ok=True)
    conf = d / "cachesrv.toml"
    conf.write_text(CACHESRV_CONF.format(upstream_port=upstream_port))
    # Several workers may each bind the port themselves: give them a fixed one.
    listen = f"127.0.0.1:{procs.free_port() if workers and workers > 1 else 0}"
    argv = [python, "-m", "cachesrv", "serve", "--config", str(conf), "--store", str(store)]
    argv += ["--listen", listen, "--mode", mode]
    if workers is not None:
        argv += ["--workers", str(workers)]
    log = d / f"serve-{len(list(d.glob('serve-*.log'))):02d}-{mode}-w{workers or 1}.log"
    proc = pg.start("cachesrv", argv, log=log, cpus=cpus, cwd=repo, env=cachesrv_env(repo))
    m = procs.wait_log(proc, r"serving http://127\.0\.0\.1:(\d+)/? ")
    server = Server("cachesrv", proc, int(m.group(1)), "/debian/")
    procs.wait_port(server.port, proc)
    return server
