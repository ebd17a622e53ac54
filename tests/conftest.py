"""Factory fixtures shared by the suite.

- `write_config`: a TOML config naming fake upstreams on 127.0.0.1.
- `upstream`: a FakeUpstream (real aiohttp server in a thread) over a temp dir.
- `cachesrv`: starts the real `cachesrv serve` as a subprocess (what users run),
  waits for its "serving" line (no sleeps), stops it with SIGTERM or SIGKILL.
- `app_client`: the app in-process behind aiohttp's test client (fast tests).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cachesrv.config import Config, load_config
from tests.fakes.upstream import FakeUpstream

REPO = Path(__file__).resolve().parent.parent
CACHESRV = [sys.executable, "-m", "cachesrv"]


Upstreams = dict[str, tuple[str, str] | dict[str, object]]


def config_text(upstreams: Upstreams, **server: object) -> str:
    """TOML for `upstreams` ({name: (kind, url)} or {name: {key: value}}) and `server` keys."""
    lines = ["[server]"]
    for k, v in server.items():
        lines.append(f"{k} = {json.dumps(v)}")
    for name, spec in upstreams.items():
        table = {"kind": spec[0], "url": spec[1]} if isinstance(spec, tuple) else spec
        lines.append(f"[upstreams.{name}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    def make(upstreams: Upstreams, **server: object) -> Path:
        path = tmp_path / "cachesrv.toml"
        path.write_text(config_text(upstreams, **server))
        return path

    return make


@pytest.fixture
def load(tmp_path: Path) -> Callable[..., Config]:
    """A Config for in-process apps: upstreams + a private store."""

    def make(upstreams: Upstreams, **server: object) -> Config:
        path = tmp_path / "inproc.toml"
        path.write_text(config_text(upstreams, **server))
        return load_config(path, store=tmp_path / "store")

    return make


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[FakeUpstream]:
    root = tmp_path / "upstream"
    root.mkdir()
    with FakeUpstream(root) as up:
        yield up


class CachesrvProcess:
    """A real `cachesrv serve` subprocess on 127.0.0.1 (port chosen by the kernel)."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.args = args
        self.env = env
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.log: list[str] = []
        self._reader: threading.Thread | None = None

    def start(self, timeout: float = 30) -> CachesrvProcess:
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONPATH", str(REPO))
        self.proc = subprocess.Popen(
            [*CACHESRV, "serve", "--listen", "127.0.0.1:0", *self.args],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env=env,
            start_new_session=True,  # its own process group: stop() reaches any workers
        )
        ready = threading.Event()

        def read() -> None:
            assert self.proc is not None and self.proc.stderr is not None
            for line in self.proc.stderr:
                self.log.append(line)
                m = re.search(r"serving (http://\S+?)/? ", line)
                if m and not self.url:
                    self.url = m.group(1).rstrip("/")
                    ready.set()
            ready.set()

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        if not ready.wait(timeout) or not self.url:
            self.stop()
            raise RuntimeError("cachesrv did not start:\n" + "".join(self.log))
        return self

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # nothing of the group outlives it
        if self._reader is not None:
            self._reader.join(timeout=30)
        if self.proc.stderr is not None and not (self._reader and self._reader.is_alive()):
            self.proc.stderr.close()
        return rc

    def output(self) -> str:
        return "".join(self.log)


@pytest.fixture
def cachesrv() -> Iterator[Callable[..., CachesrvProcess]]:
    """Start `cachesrv serve ARGS...`; every started server is stopped at teardown."""
    started: list[CachesrvProcess] = []

    def start(*args: str | Path, env: dict[str, str] | None = None) -> CachesrvProcess:
        proc = CachesrvProcess([str(a) for a in args], env).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop(signal.SIGKILL if proc.proc and proc.proc.poll() is None else signal.SIGTERM)


def run_cli(
    *args: str | Path, check: bool = True, **kw: object
) -> subprocess.CompletedProcess[str]:
    """Run the `cachesrv` command line as a user would."""
    env = dict(os.environ)
    env.setdefault("PYTHONPATH", str(REPO))
    result = subprocess.run(
        [*CACHESRV, *map(str, args)], capture_output=True, text=True, env=env, timeout=300, **kw
    )  # type: ignore[call-overload]
    if check and result.returncode != 0:
        raise AssertionError(
            f"cachesrv {' '.join(map(str, args))} -> {result.returncode}\n"
            f"{result.stdout}\n{result.stderr}"
        )
    return result  # type: ignore[no-any-return]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "e2e" in item.nodeid:
            item.add_marker(pytest.mark.e2e)
