#!/usr/bin/env python3
"""One big file over HTTPS with curl: direct, and through cachesrv's CONNECT interception.

Usage: .venv/bin/python bench/https.py [--size-mib 100] [--reps 3]

Makes a throwaway CA and a certificate for 127.0.0.1 (`cryptography`), serves a
seeded, incompressible file over TLS with nginx (an aiohttp TLS server when there is
no nginx, said in the output), and times real `curl` downloads of it (body to
/dev/null, `-w '%{time_total} %{size_download}'`):

- direct: `curl --cacert upstream-CA https://127.0.0.1:UP/FILE`, no proxy;
- cold: `https_proxy=http://127.0.0.1:SRV curl --cacert <store>/tls/ca.pem ...` through
  a `cachesrv serve` with a fresh store: CONNECT, TLS from cachesrv's local CA, fetched
  upstream over verified TLS (`[tls] upstream_ca`) and recorded;
- warm: the same again, now a hit from the store inside the tunnel;
- plain: `curl http://127.0.0.1:SRV/HTTPS///127.0.0.1:UP/FILE`, the same entry served
  without TLS on the client side.

Before the timed reps one unmeasured pass of every phase writes the body to a file
and checks its sha256. The upstream's access log shows what cachesrv fetched: one GET
per cold run, none in the warm and plain runs. Prints a markdown table: medians over
the reps with (min-max), MB/s (10^6 B/s) and the ratio to direct taken within each
rep. Only 127.0.0.1 is contacted; everything started is stopped and the work dir
removed at the end (`--keep` keeps it).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import ipaddress
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchlib import corpus, procs, servers
from benchlib.report import spread, table

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
MiB = 1 << 20
WORK_PREFIX = "cachesrv-https-bench-"
# An archive name: generic upstreams treat it as immutable, so a warm hit never
# revalidates with the upstream.
FILE = "bench.tar.gz"

DIRECT, COLD, WARM, PLAIN = "direct", "cold", "warm", "plain"
PLAIN_COLD = "plain-cold"
PHASES = {
    DIRECT: "direct: curl -> TLS upstream",
    PLAIN_COLD: "cachesrv cold, plain http (/HTTPS///...): fetch over TLS, record",
    COLD: "cachesrv cold: CONNECT, fetch over TLS, record",
    WARM: "cachesrv warm: hit inside the CONNECT tunnel",
    PLAIN: "cachesrv warm, plain http (/HTTPS///...)",
}


log = procs.log
Interrupted = procs.Interrupted


class Failed(Exception):
    """A wrong answer: a failed download, a wrong body, the upstream reached on a hit."""


# -- certificates ------------------------------------------------------------------


def make_upstream_tls(d: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a leaf for 127.0.0.1 signed by it: (ca.pem, leaf.pem, leaf.key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    later = now + dt.timedelta(days=2)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cachesrv bench upstream CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(later)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(later)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    d.mkdir(parents=True, exist_ok=True)
    ca_pem, leaf_pem, leaf_key = d / "ca.pem", d / "leaf.pem", d / "leaf.key"
    ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    leaf_pem.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    leaf_key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    leaf_key.chmod(0o600)
    return ca_pem, leaf_pem, leaf_key


# -- the upstream --------------------------------------------------------------------


def serve_upstream(root: Path, cert: Path, key: Path, access_log: Path) -> None:
    """The fallback upstream (run as a child of this script): aiohttp over TLS on
    127.0.0.1, port chosen by the kernel, with an access log like the bench's nginx."""
    import asyncio
    import ssl

    from aiohttp import web
    from aiohttp.abc import AbstractAccessLogger

    out = access_log.open("a", buffering=1)

    class AccessLog(AbstractAccessLogger):
        def log(self, request: web.BaseRequest, response: web.StreamResponse, _t: float) -> None:
            agent = request.headers.get("User-Agent", "")
            sent = response.body_length
            out.write(f'{request.method} {request.raw_path} {response.status} {sent} "{agent}"\n')

    async def main() -> None:
        app = web.Application()
        app.router.add_static("/", root)
        runner = web.AppRunner(app, access_log_class=AccessLog)
        await runner.setup()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # noqa: SLF001
        print(f"listening on 127.0.0.1:{port}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


@dataclass
class Upstream:
    server: servers.Server
    log: servers.AccessLog
    what: str  # for the output

    @property
    def port(self) -> int:
        return self.server.port


def start_upstream(
    pg: procs.Processes, work: Path, root: Path, cert: Path, key: Path, choice: str
) -> Upstream:
    access = servers.AccessLog(work / "upstream-access.log")
    nginx = shutil.which("nginx")
    if choice == "nginx" and nginx is None:
        raise SystemExit("--upstream nginx: nginx not found (apt-get install nginx)")
    if nginx is not None and choice != "aiohttp":
        s = servers.start_nginx(
            pg, "upstream-nginx", root=root, workdir=work, cpus=None,
            access_log=access.path, tls=(cert, key),
        )  # fmt: skip
        version = subprocess.run(
            [nginx, "-v"], capture_output=True, text=True, timeout=30, check=False
        ).stderr.strip()
        return Upstream(s, access, f"nginx ({version.split('/')[-1]}, 1 worker, TLS)")
    d = work / "upstream-aiohttp"
    d.mkdir()
    argv = [sys.executable, str(Path(__file__).resolve()), "--serve-upstream",
            str(root), str(cert), str(key), str(access.path)]  # fmt: skip
    proc = pg.start("upstream-aiohttp", argv, log=d / "stderr.log", cwd=REPO)
    m = procs.wait_log(proc, r"listening on 127\.0\.0\.1:(\d+)")
    why = "chosen with --upstream aiohttp" if choice == "aiohttp" else (
        "FALLBACK: nginx not found; apt-get install nginx for the nginx upstream")  # fmt: skip
    return Upstream(servers.Server("upstream-aiohttp", proc, int(m[1]), "/"), access,
                    f"aiohttp FileResponse over TLS ({why})")  # fmt: skip


# -- cachesrv ----------------------------------------------------------------------

CACHESRV_CONF = """\
[server]
listen = "127.0.0.1:0"
store = "{store}"

[upstreams.files]
kind = "generic"
url = "https://127.0.0.1:{upstream_port}"

[tls]
upstream_ca = "{upstream_ca}"
"""


def start_cachesrv(
    pg: procs.Processes, exe: str, work: Path, n: int, upstream_port: int, upstream_ca: Path
) -> tuple[servers.Server, Path]:
    """`cachesrv serve --config C` over a fresh store; (server, store)."""
    d = work / f"cachesrv-{n:02d}"
    store = d / "store"
    d.mkdir()
    conf = d / "cachesrv.toml"
    conf.write_text(CACHESRV_CONF.format(store=store, upstream_port=upstream_port,
                                         upstream_ca=upstream_ca))  # fmt: skip
    env = clean_env()
    env.pop("CACHESRV_STORE", None)
    proc = pg.start("cachesrv", [exe, "serve", "--config", str(conf)], log=d / "serve.log",
                    cwd=REPO, env=env)  # fmt: skip
    m = procs.wait_log(proc, r"serving http://127\.0\.0\.1:(\d+)/? ")
    return servers.Server("cachesrv", proc, int(m[1]), "/"), store


def clean_env() -> dict[str, str]:
    """This environment without proxy settings (no_proxy would also bypass -x)."""
    return {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}


# -- curl --------------------------------------------------------------------------


@dataclass
class Fetch:
    seconds: float
    size: int
    server_cpu: float  # cachesrv's CPU seconds over the download; nan without cachesrv


def curl(
    url: str,
    *,
    cacert: Path | None,
    proxy_port: int | None,
    out: Path | None,
    max_time: float,
    watch: servers.Server | None = None,
) -> Fetch:
    """One download with curl; raises Failed unless it is a complete 2xx."""
    argv = ["curl", "-sS", "--fail", "--max-time", f"{max_time:.0f}", "-o", str(out or os.devnull),
            "-w", "%{time_total} %{size_download}"]  # fmt: skip
    if cacert is not None:
        argv += ["--cacert", str(cacert)]
    env = clean_env()
    if proxy_port is not None:
        env["https_proxy"] = f"http://127.0.0.1:{proxy_port}"
    argv.append(url)
    cpu0 = procs.cpu_seconds(watch.pids()) if watch else float("nan")
    r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=max_time + 30)
    cpu = procs.cpu_seconds(watch.pids()) - cpu0 if watch else float("nan")
    if r.returncode != 0:
        raise Failed(f"curl {url} exited {r.returncode}: {r.stderr.strip()[-300:]}")
    m = re.fullmatch(r"\s*([\d.]+) (\d+)\s*", r.stdout)
    if not m:
        raise Failed(f"curl {url}: unexpected -w output {r.stdout[-200:]!r}")
    return Fetch(float(m[1]), int(m[2]), cpu)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return h.hexdigest()


# -- the run -----------------------------------------------------------------------


@dataclass
class Bench:
    args: argparse.Namespace
    work: Path
    pg: procs.Processes
    upstream: Upstream
    upstream_ca: Path
    size: int
    sha256: str
    store: Path = Path()
    starts: int = 0
    seconds: dict[str, dict[int, float]] = field(default_factory=dict)
    cpu: dict[str, dict[int, float]] = field(default_factory=dict)
    upstream_gets: dict[str, list[int]] = field(default_factory=dict)
    checks: list[str] = field(default_factory=list)

    def one(self, phase: str, rep: int | None, server: servers.Server | None) -> None:
        """One download of `phase`; rep None: the unmeasured pass, body to a file, sha256."""
        up = self.upstream.port
        url, cacert, proxy = f"https://127.0.0.1:{up}/{FILE}", self.upstream_ca, None
        if phase in (COLD, WARM):
            assert server is not None
            cacert, proxy = self.store / "tls" / "ca.pem", server.port
        elif phase in (PLAIN, PLAIN_COLD):
            assert server is not None
            url, cacert = f"http://127.0.0.1:{server.port}/HTTPS///127.0.0.1:{up}/{FILE}", None
        body = self.work / f"body-{phase}" if rep is None else None
        mark = self.upstream.log.mark()
        try:
            f = curl(url, cacert=cacert, proxy_port=proxy, out=body,
                     max_time=self.args.max_seconds, watch=server)  # fmt: skip
            if f.size != self.size:
                raise Failed(f"{phase}: {f.size} bytes, want {self.size}")
            if body is not None:
                got = sha256_of(body)
                body.unlink()
                if got != self.sha256:
                    raise Failed(
                        f"{phase}: WRONG BODY (sha256 {got[:12]}, want {self.sha256[:12]})"
                    )
                self.checks.append(f"{phase}: sha256 ok")
        finally:
            gets = [e for e in self.upstream.log.since(mark) if e[0] == "GET"]
            self.upstream_gets.setdefault(phase, []).append(len(gets))
        want = 0 if phase in (WARM, PLAIN) else 1
        if len(gets) != want:
            raise Failed(f"{phase}: the upstream saw {len(gets)} GET(s), want {want}")
        tag = "check" if rep is None else f"rep {rep + 1}"
        mbps = f.size / f.seconds / 1e6
        log(f"  {tag:6} {phase:7} {f.seconds:7.3f} s  {mbps:8.1f} MB/s")
        if rep is not None:
            self.seconds.setdefault(phase, {})[rep] = f.seconds
            if server is not None:
                self.cpu.setdefault(phase, {})[rep] = f.server_cpu / f.seconds

    def rep(self, rep: int | None) -> None:
        self.one(DIRECT, rep, None)
        # A fresh store for each cold phase: plain http first (the cost of recording
        # without TLS to the client), then the tunnel, then the hits.
        for phases in ((PLAIN_COLD,), (COLD, WARM, PLAIN)):
            self.with_server(rep, phases)

    def with_server(self, rep: int | None, phases: tuple[str, ...]) -> None:
        server, self.store = start_cachesrv(
            self.pg, self.args.cachesrv, self.work, self.starts, self.upstream.port,
            self.upstream_ca,
        )  # fmt: skip
        self.starts += 1
        try:
            for phase in phases:
                self.one(phase, rep, server)
        finally:
            self.pg.stop(server.proc)  # SIGTERM to its process group, SIGKILL if it hangs
            rc = server.proc.popen.returncode
            if rc not in (0, -signal.SIGTERM):
                self.checks.append(f"cachesrv exited {rc} on SIGTERM")
            shutil.rmtree(self.store.parent, ignore_errors=True)

    def report(self) -> str:
        rows = []
        direct = self.seconds.get(DIRECT, {})
        for phase, title in PHASES.items():
            secs = self.seconds.get(phase, {})
            mbps = [self.size / s / 1e6 for s in secs.values()]
            ratios = [direct[r] / s for r, s in secs.items() if r in direct]
            cpu = [100 * c for c in self.cpu.get(phase, {}).values()]
            gets = self.upstream_gets.get(phase, [])[1:]  # the timed reps
            rows.append([
                title,
                spread(list(secs.values()), ".3f"),
                spread(mbps, ".0f"),
                "1" if phase == DIRECT else spread(ratios, ".2f"),
                spread(cpu, ".0f") if cpu else "-",
                f"{sum(gets)}" if gets else "-",
            ])  # fmt: skip
        header = ["phase", "curl time_total s", "MB/s", "MB/s / direct's", "cachesrv CPU %",
                  "upstream GETs"]  # fmt: skip
        return table(header, rows)


def facts(args: argparse.Namespace, upstream: Upstream, size: int) -> list[str]:
    curl_v = subprocess.run(["curl", "--version"], capture_output=True, text=True, timeout=30,
                            check=False).stdout.splitlines()  # fmt: skip
    first = curl_v[0] if curl_v else "curl"
    client = " ".join(first.split()[:2] + re.findall(r"OpenSSL/\S+", first))
    return [
        f"- file: {size / MiB:.0f} MiB ({size:,} bytes, seeded, incompressible), `/{FILE}`",
        f"- upstream: {upstream.what}, https://127.0.0.1:{upstream.port}",
        f"- client: {client}, a new process and connection per download, body to /dev/null",
        f"- cachesrv: `{args.cachesrv} serve --config C`, fresh store each rep, generic "
        "upstream, `[tls] upstream_ca` = the throwaway CA",
        f"- machine: {os.cpu_count()} CPUs, {platform.platform()}, Python "
        f"{platform.python_version()}",
        f"- reps: {args.reps}, median (min-max); the ratio to direct is taken within each "
        "rep; one unmeasured pass first checks every phase's body by sha256",
        "- cachesrv CPU %: its user + system time over curl's time_total; upstream GETs: "
        "what the upstream's access log shows over the timed reps",
    ]


def remove_stale_work() -> None:
    """Work dirs of earlier runs that were killed before they could clean up."""
    for d in Path(tempfile.gettempdir()).glob(WORK_PREFIX + "*"):
        m = re.match(re.escape(WORK_PREFIX) + r"(\d+)-", d.name)
        if m and not Path(f"/proc/{m[1]}").exists():
            shutil.rmtree(d, ignore_errors=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="One big file over HTTPS: direct vs through cachesrv (see bench/README.md)."
    )
    ap.add_argument("--size-mib", type=int, default=100, help="file size (100)")
    ap.add_argument("--reps", type=int, default=3, help="timed reps (3)")
    ap.add_argument(
        "--upstream",
        choices=("auto", "nginx", "aiohttp"),
        default="auto",
        help="TLS upstream: nginx when found (auto), or the aiohttp fallback",
    )
    ap.add_argument("--cachesrv", help="cachesrv executable (default: .venv/bin/cachesrv)")
    ap.add_argument("--max-seconds", type=float, default=300, help="curl --max-time (300)")
    ap.add_argument("--max-minutes", type=float, default=20, help="hard stop for the run (20)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    ap.add_argument("--serve-upstream", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.reps < 1 or args.size_mib < 1:
        ap.error("--reps and --size-mib must be at least 1")
    venv = REPO / ".venv" / "bin" / "cachesrv"
    args.cachesrv = args.cachesrv or (str(venv) if venv.exists() else shutil.which("cachesrv"))
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.serve_upstream:
        root, cert, key, access = map(Path, args.serve_upstream)
        serve_upstream(root, cert, key, access)
        return 0
    if not args.cachesrv:
        sys.exit("no cachesrv executable: create .venv (pip install -e .) or pass --cachesrv")
    if shutil.which("curl") is None:
        sys.exit("curl not found: apt-get install curl")
    t_start = time.monotonic()
    procs.bound_run(args.max_minutes)
    remove_stale_work()
    work = Path(tempfile.mkdtemp(prefix=f"{WORK_PREFIX}{os.getpid()}-"))
    pg = procs.Processes()
    rc = 1
    try:
        size = args.size_mib * MiB
        root = work / "www"
        log(f"work dir {work}; generating {args.size_mib} MiB ...")
        sha = corpus.write_file(root / FILE, FILE, size, "cachesrv-https-bench-1")
        ca, cert, key = make_upstream_tls(work / "upstream-tls")
        upstream = start_upstream(pg, work, root, cert, key, args.upstream)
        log(f"upstream: {upstream.what} on port {upstream.port}")
        bench = Bench(args, work, pg, upstream, ca, size, sha)
        try:
            log("unmeasured pass: every phase once, body to a file, sha256 checked")
            bench.rep(None)
            for rep in range(args.reps):
                bench.rep(rep)
            failure = ""
        except Failed as exc:
            failure = str(exc)
            log(f"FAILED: {failure}")
        elapsed = time.monotonic() - t_start
        out = [f"## HTTPS through cachesrv: {args.size_mib} MiB with curl", "",
               *facts(args, upstream, size), "", bench.report(), ""]  # fmt: skip
        out.append("Checks: " + ("; ".join(bench.checks) or "none ran"))
        if failure:
            out.append(f"**FAILED**: {failure}")
        out.append(f"Run time: {elapsed:.0f} s")
        print("\n".join(out), flush=True)
        rc = 1 if failure else 0
    except Interrupted as exc:
        log(f"stopped by {exc}; cleaning up")
        rc = 130
    finally:
        procs.end_run(pg, work, keep=args.keep)
    return rc


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main(sys.argv[1:]))
