"""`cachesrv wrap`: run a build with every client pointed at the cache (SPEC "Commands").

1. The server: `--server URL` (or `$CACHESRV_URL`) names a running one; otherwise a
   private `cachesrv serve --listen 127.0.0.1:0` runs over the store for the life of
   the build, in the mode asked. It is a subprocess, not a thread: it is exactly the
   server users run (store clean-up, logging, shutdown on SIGTERM); its event loop,
   SQLite connections and worker threads stay out of the process that forks the
   build; and it runs in a session of its own, so the Ctrl-C meant for the build does
   not stop the server while the build is still asking it for things. Its address
   comes from its "serving http://..." line (it binds port 0: no port is guessed).
2. The build's environment (wrapenv.py) routes pip, uv, apt, snap tooling and plain
   HTTP downloads through the server, with the seed in every URL.
3. `--isolate`: before anything starts, this process moves into a new network
   namespace with only loopback up; the server and the build inherit it, so the
   build reaches the cache and nothing else. As root this is `unshare(CLONE_NEWNET)`;
   otherwise a user namespace maps the caller's own uid and gid (the build keeps its
   identity) and owns the network namespace.
4. The build's exit status is the wrapper's (128+N when killed by signal N). SIGTERM,
   SIGHUP and SIGINT are passed on to the build; a Ctrl-C from the terminal already
   reached it (same process group), so SIGINT is passed on only when it did not come
   from there (uv's `run` does the same).
5. Afterwards one line on stderr: hits, newly recorded, offline misses (and the
   command that lists them), the seed and its size, from the server's stats API.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import errno
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from .config import Config, split_listen
from .errors import ConfigError, WrapError
from .tls.ca import LocalCA
from .wrapenv import (
    SEED_NAME,
    Server,
    cargo_registry,
    client_env,
    shell_lines,
    wrap_variables,
    write_apt_config,
    write_cargo_home,
    write_tls_trust,
)

_SERVING = re.compile(r"cachesrv: serving (http://\S+?)/? ")
_API = "/_cachesrv/api/v1/"
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass(frozen=True)
class WrapOptions:
    command: tuple[str, ...] = ()
    server: str | None = None
    offline: bool = False
    isolate: bool = False
    seed: str | None = None
    strict: bool = False
    #: `--config FILE` / `--store DIR` as given, repeated in the hint for `cachesrv misses`.
    store_args: tuple[str, ...] = ()


def check_options(opts: WrapOptions) -> None:
    """Refuse combinations that cannot do what they say, before anything starts."""
    if opts.seed is not None and not SEED_NAME.fullmatch(opts.seed):
        raise ConfigError(
            f"--seed: {opts.seed!r} is not a seed name (letters, digits, '.', '_', '-')"
        )
    if opts.isolate and not opts.offline:
        raise ConfigError(
            "--isolate needs --offline: an isolated build reaches only the cache, "
            "so the cache must not need the network either"
        )
    if opts.isolate and opts.server:
        raise ConfigError(
            "--isolate runs its own offline server inside the build's network namespace; "
            "drop --server"
        )
    if opts.strict and not opts.offline:
        raise ConfigError("--strict applies to offline serving: add --offline")
    if opts.strict and opts.seed is None:
        raise ConfigError("--strict serves one seed only: add --seed NAME")
    if opts.strict and opts.server:
        raise ConfigError(
            "--strict configures the private server; a running server is strict if started "
            "so (cachesrv serve --mode offline --strict): drop --server or --strict"
        )


def run_wrap(config: Config, opts: WrapOptions) -> int:
    """Run `opts.command` wrapped; return the exit status the wrapper exits with."""
    check_options(opts)
    if not opts.command:
        raise ConfigError("no command to run: cachesrv wrap [OPTIONS] -- COMMAND...")
    exe = opts.command[0]
    if shutil.which(exe) is None and not ("/" in exe and os.path.exists(exe)):
        # Before any server starts. (An existing file that cannot run fails below: 126.)
        print(f"cachesrv wrap: cannot run {exe}: not found", file=sys.stderr)
        return 127
    # $CACHESRV_URL stands for --server, except where only a private server will do.
    private_only = opts.isolate or opts.strict
    url = opts.server or (None if private_only else os.environ.get("CACHESRV_URL") or None)
    external = Server.parse(url) if url else None
    started = time.time()
    if opts.isolate:
        enter_network_namespace()
    with (
        _Forwarder() as signals,
        tempfile.TemporaryDirectory(prefix="cachesrv-wrap-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        private = None
        if external is None:
            private = stack.enter_context(PrivateServer(config, opts))
            server = Server.parse(private.url)
        else:
            server = external
        before = _api(server, "stats")
        server_offline = before.get("mode") == "offline"
        if opts.offline and not server_offline:
            raise WrapError(
                f"--offline: the server at {server.url} is online; start it with "
                "--mode offline (or switch it: POST /_cachesrv/api/v1/mode), or drop --offline"
            )
        tls = write_tls_trust(Path(tmp), ca_pem=_ca_pem(server), env=os.environ)
        apt = write_apt_config(
            Path(tmp),
            env=os.environ,
            proxy=server.proxy(opts.seed),
            offline=server_offline,
            ca_bundle=tls.bundle,
        )
        cargo = write_cargo_home(
            Path(tmp),
            env=os.environ,
            registry=cargo_registry(server, seed=opts.seed, config=config),
        )
        variables = wrap_variables(
            server, seed=opts.seed, config=config, apt_config=apt, tls=tls, cargo_home=cargo
        )
        if signals.pending:
            return 128 + signals.pending[0]
        status = signals.run(list(opts.command), client_env(os.environ, variables))
        if signals.child is None:
            return status  # the command could not be started: nothing to sum up
        after = _api(server, "stats", quiet=True)
        seeds = _api(server, "seeds", quiet=True) if opts.seed else None
        if private is not None:
            if private.died():
                print(
                    f"cachesrv wrap: the private server died: {private.last_words()}",
                    file=sys.stderr,
                )
            private.stop()
        line = summary(
            status,
            before=before,
            after=after,
            seed=opts.seed,
            seeds=seeds,
            misses_hint=_misses_hint(started, opts, private is None),
        )
        print(line, file=sys.stderr, flush=True)
        return status


def print_env(config: Config, opts: WrapOptions) -> str:
    """Shell lines (`unset`, `export`) that point clients at the server, for `eval`.

    Without `--server` or `$CACHESRV_URL` they name the server the config describes
    (`server.listen`, what `cachesrv serve` binds). The apt configuration is written
    under `$XDG_CACHE_HOME/cachesrv/wrap/`, since it must outlive this command.
    """
    check_options(opts)
    if opts.isolate:
        raise ConfigError(
            "--print-env cannot isolate the shell that reads it: run the build under "
            "cachesrv wrap --offline --isolate -- COMMAND"
        )
    if opts.strict:
        raise ConfigError(
            "--strict configures a private server; with --print-env start the server "
            "as cachesrv serve --mode offline --strict"
        )
    given = opts.server or os.environ.get("CACHESRV_URL")
    server = Server.parse(given or _listen_url(config.server.listen))
    proxy = server.proxy(opts.seed)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    key = "\0".join((proxy, str(opts.offline), os.environ.get("APT_CONFIG", "")))
    workdir = cache / "cachesrv" / "wrap" / hashlib.sha256(key.encode()).hexdigest()[:16]
    workdir.mkdir(parents=True, exist_ok=True)
    # The server's CA: asked of the server named, else the one `serve` makes over this store.
    note = None
    try:
        ca_pem = _ca_pem(server) if given else LocalCA.ensure(config.ca_dir).pem()
    except WrapError as exc:
        ca_pem, note = None, f"# no https interception: {exc}"
    tls = write_tls_trust(workdir, ca_pem=ca_pem, env=os.environ) if ca_pem else None
    apt = write_apt_config(
        workdir,
        env=os.environ,
        proxy=proxy,
        offline=opts.offline,
        ca_bundle=tls.bundle if tls else None,
    )
    cargo = write_cargo_home(
        workdir, env=os.environ, registry=cargo_registry(server, seed=opts.seed, config=config)
    )
    variables = wrap_variables(
        server, seed=opts.seed, config=config, apt_config=apt, tls=tls, cargo_home=cargo
    )
    head = [f"# cachesrv wrap --print-env: clients through {server.url}"]
    if opts.seed:
        head.append(f"# recorded in seed {opts.seed}")
    if note:
        head.append(note)
    return "\n".join(head + shell_lines(variables)) + "\n"


def summary(
    status: int,
    *,
    before: dict[str, Any],
    after: dict[str, Any] | None,
    seed: str | None,
    seeds: list[dict[str, Any]] | None,
    misses_hint: str,
) -> str:
    """`cachesrv wrap: exit 0; 12 hits, 5 newly recorded, 0 offline misses; seed b1 (17 entries)`"""
    head = f"cachesrv wrap: exit {status}"
    if after is None:
        return f"{head}; no statistics: the server did not answer"

    def delta(*outcomes: str) -> int:
        got = after.get("requests", {})
        was = before.get("requests", {})
        return sum(int(got.get(o, 0)) - int(was.get(o, 0)) for o in outcomes)

    hits = delta("hit", "revalidated", "stale")
    recorded = delta("recorded")
    misses = delta("offline_miss")
    failed = delta("refused", "upstream_error", "passthrough")
    parts = [
        _count(hits, "hit", "hits"),
        f"{recorded} newly recorded",
        _count(misses, "offline miss", "offline misses"),
    ]
    if misses:
        parts[-1] += f" (list them: {misses_hint})"
    if failed:
        parts.append(f"{failed} refused or failed upstream")
    text = f"{head}; {', '.join(parts)}"
    if seed:
        entries = next((int(s["entries"]) for s in seeds or [] if s.get("name") == seed), 0)
        text += f"; seed {seed} ({entries} entries)"
    return text


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _misses_hint(started: float, opts: WrapOptions, remote: bool) -> str:
    since = dt.datetime.fromtimestamp(int(started)).isoformat()
    cmd = shlex.join(["cachesrv", "misses", "--since", since, *opts.store_args])
    return f"{cmd} on the server's host" if remote else cmd


def _listen_url(listen: str) -> str:
    host, port = split_listen(listen)
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _api(server: Server, what: str, *, quiet: bool = False) -> Any:
    """GET one of the server's read-only API pages, bypassing any proxy setting."""
    try:
        return json.loads(_get(server, _API + what))
    except (OSError, ValueError) as exc:
        if quiet:
            return None
        why = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise WrapError(f"cannot reach the cache server at {server.url}: {why}") from None


def _ca_pem(server: Server) -> bytes:
    """The certificate of the server's local CA, which the build must trust."""
    try:
        pem = _get(server, "/_cachesrv/ca.pem")
    except OSError as exc:
        why = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise WrapError(
            f"cannot get the CA certificate of the cache server at {server.url}: {why}"
        ) from None
    if b"BEGIN CERTIFICATE" not in pem:
        raise WrapError(f"{server.url}/_cachesrv/ca.pem is not a PEM certificate")
    return pem


def _get(server: Server, path: str) -> bytes:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(server.url + path, timeout=30) as resp:
        data: bytes = resp.read()
    return data


# -- the private server -------------------------------------------------------------


class PrivateServer:
    """`cachesrv serve` on a free loopback port, for the life of a `with` block."""

    def __init__(self, config: Config, opts: WrapOptions, *, timeout: float = 120.0) -> None:
        self.url = ""
        self.tail: deque[str] = deque(maxlen=40)
        mode = "offline" if opts.offline else "online"
        self.cmd = [sys.executable, "-m", "cachesrv", "serve", "--listen", "127.0.0.1:0"]
        self.cmd += ["--store", str(config.store), "--mode", mode, "--log-format", "text"]
        # It records this user's own build: whatever host the build reaches (SPEC).
        self.cmd.append("--any-host")
        if config.source:
            self.cmd += ["--config", config.source]
        if opts.strict:
            self.cmd.append("--strict")
        self.timeout = timeout
        self.proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def __enter__(self) -> PrivateServer:
        env = dict(os.environ)
        # The same cachesrv as this wrapper, however it was found.
        package_root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (package_root, env.get("PYTHONPATH"))))
        self.proc = subprocess.Popen(
            self.cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
        ready = threading.Event()
        self._reader = threading.Thread(
            target=self._read, args=(ready,), name="cachesrv-wrap-server-log", daemon=True
        )
        self._reader.start()
        if not ready.wait(self.timeout) or not self.url:
            self.stop()
            raise WrapError(f"the private cachesrv server did not start: {self.last_words()}")
        return self

    def last_words(self) -> str:
        """The server's last line of output, for an error message."""
        lines = [line.strip() for line in self.tail if line.strip()]
        return lines[-1].removeprefix("cachesrv: error: ") if lines else "(no output)"

    def died(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def _read(self, ready: threading.Event) -> None:
        # Drained for the server's whole life: a full pipe would block its logging.
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.tail.append(line)
            m = _SERVING.search(line)
            if m and not self.url:
                self.url = m.group(1).rstrip("/")
                ready.set()
        ready.set()

    def stop(self) -> None:
        """SIGTERM (the server finishes what it serves and closes the store), then wait."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- the build ----------------------------------------------------------------------


class _Forwarder:
    """Runs the build, passing termination signals on to it (see the module doc)."""

    def __init__(self) -> None:
        self.child: subprocess.Popen[bytes] | None = None
        self.pending: list[int] = []
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _Forwarder:
        for sig in _FORWARDED:
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        child = self.child
        if child is None:
            self.pending.append(signum)
        elif not (signum == signal.SIGINT and _terminal_sent_it()):
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signum)

    def run(self, command: list[str], env: dict[str, str]) -> int:
        """The build's exit status (128+N if killed by signal N; 127 or 126, as a shell
        says, when it cannot be started)."""
        try:
            self.child = subprocess.Popen(command, env=env)
        except OSError as exc:
            print(f"cachesrv wrap: cannot run {command[0]}: {exc.strerror}", file=sys.stderr)
            return 127 if isinstance(exc, FileNotFoundError) else 126
        for signum in self.pending:  # arrived while the build was being started
            self._handle(signum, None)
        status = self.child.wait()  # handlers run in between (PEP 475 retries the wait)
        return 128 - status if status < 0 else status


def _terminal_sent_it() -> bool:
    """Whether a SIGINT most likely came from the terminal: then the build, in our
    foreground process group, got it too and must not get it twice."""
    try:
        return os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp()
    except OSError:
        return False


# -- isolation ----------------------------------------------------------------------

_CLONE_NEWNET = 0x40000000
_CLONE_NEWUSER = 0x10000000
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_IFREQ = "16sH22x"  # struct ifreq: the name, then ifr_flags in the union (40 bytes)


def enter_network_namespace() -> None:
    """Move this process (and all it starts) into a new network namespace with only
    loopback, up. Must run before any thread starts (a user namespace requires it)."""
    uid, gid = os.geteuid(), os.getegid()
    libc = ctypes.CDLL(None, use_errno=True)
    if uid == 0 and libc.unshare(_CLONE_NEWNET) == 0:
        _loopback_up()
        return
    if libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET) != 0:
        raise WrapError(isolation_advice(ctypes.get_errno()))
    # Map our own ids, so the build runs as who started it (files it writes are ours).
    for name, text in (
        ("setgroups", "deny"),
        ("uid_map", f"{uid} {uid} 1"),
        ("gid_map", f"{gid} {gid} 1"),
    ):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)
    _loopback_up()


def isolation_advice(err: int) -> str:
    """The one-line error for a kernel that refuses the namespace, and what to do."""
    why = os.strerror(err) if err else "refused"
    if err == errno.EINVAL:
        why += " (a user namespace needs a single-threaded process)"
    return (
        f"--isolate: cannot create a network namespace: {why}. Run as root, or allow "
        "unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1; on Ubuntu "
        "kernel.apparmor_restrict_unprivileged_userns=0); in a container, grant CAP_SYS_ADMIN "
        "or run it with --privileged. Without --isolate, --offline still serves only the "
        "store, but the build itself could reach the network"
    )


def _loopback_up() -> None:
    """`ip link set lo up`, without needing iproute2."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            got = fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, struct.pack(_IFREQ, b"lo", 0))
            flags = struct.unpack(_IFREQ, got)[1]
            fcntl.ioctl(s.fileno(), _SIOCSIFFLAGS, struct.pack(_IFREQ, b"lo", flags | _IFF_UP))
    except OSError as exc:
        raise WrapError(f"--isolate: cannot bring up loopback: {exc.strerror}") from None
