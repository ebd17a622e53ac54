"""Run the real pip and uv against a loopback index, shielded from the machine's config.

Machines here configure pip globally (``/etc/pip.conf``, ``/etc/xdg/pip/pip.conf``: extra
indexes, find-links, constraints) and through ``PIP_*`` variables. ``--isolated`` alone
does not skip the global files, and pip's build-isolation subprocess gets neither
``--isolated`` nor ``--no-cache-dir``; so the environment itself must be clean:
no ``PIP_*``/``UV_*``/proxy variables, ``PIP_CONFIG_FILE=/dev/null``, a private ``HOME``.

By default the environment also *traps* any non-loopback access: every proxy variable
points to a closed loopback port and ``NO_PROXY`` exempts only loopback hosts, so a client
that tried to reach the outside world fails at once instead of succeeding silently.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

#: The interpreter running the tests (the project venv's); pip runs as ``-m pip`` in it.
PYTHON = Path(sys.executable)

_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy")
# Port 9 (discard) on loopback: nothing listens, so a proxied request is refused at once.
TRAP_PROXY = "http://127.0.0.1:9"
LOOPBACK_HOSTS = "127.0.0.1,localhost,::1,[::1]"


class ClientFailed(subprocess.CalledProcessError):
    """A client run (pip, uv, npm, go, cargo) exited non-zero; ``str()`` shows the
    command's output tail."""

    def __str__(self) -> str:
        out = (self.stdout or "")[-4000:]
        err = (self.stderr or "")[-4000:]
        return f"{super().__str__()}\n--- stdout ---\n{out}\n--- stderr ---\n{err}"


def _is_shielded(name: str) -> bool:
    upper = name.upper()
    return (
        upper.startswith(("PIP_", "UV_"))
        or name.lower() in _PROXY_VARS
        or upper in ("PYTHONPATH", "PYTHONHOME", "PYTHONUSERBASE", "VIRTUAL_ENV")
    )


def _base_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not _is_shielded(k)}
    home = tmp / "home"
    for sub in ("config", "cache", "data", "state", "xdg-etc"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / "config"),
        XDG_CACHE_HOME=str(home / "cache"),
        XDG_DATA_HOME=str(home / "data"),
        XDG_STATE_HOME=str(home / "state"),
        # pip and uv read "site" config from $XDG_CONFIG_DIRS (default /etc/xdg).
        XDG_CONFIG_DIRS=str(home / "xdg-etc"),
        PIP_CONFIG_FILE=os.devnull,
        PIP_NO_CACHE_DIR="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_INPUT="1",
        PYTHONNOUSERSITE="1",
    )
    return env


def pip_env(tmp: Path, *, trap_proxy: bool = True) -> dict[str, str]:
    """Environment for pip/uv (and pip's build subprocesses) that ignores machine config.

    ``os.environ`` minus every ``PIP_*``, ``UV_*`` and proxy variable (and ``PYTHONPATH``,
    ``VIRTUAL_ENV``), plus ``PIP_CONFIG_FILE=/dev/null``, ``PIP_NO_CACHE_DIR=1``,
    ``PIP_DISABLE_PIP_VERSION_CHECK=1``, ``PIP_NO_INPUT=1``, and ``HOME``/``XDG_*`` inside
    ``tmp``. With ``trap_proxy`` (default) every proxy variable points to a closed
    loopback port and ``NO_PROXY`` lists only loopback hosts.
    """
    env = _base_env(tmp)
    if trap_proxy:
        for var in ("http_proxy", "https_proxy", "all_proxy"):
            env[var] = env[var.upper()] = TRAP_PROXY
        env["no_proxy"] = env["NO_PROXY"] = LOOPBACK_HOSTS
    return env


def download_env(tmp: Path) -> dict[str, str]:
    """Environment for *setup* downloads from the real index: like ``pip_env`` but keeps
    the machine's proxy variables (a site may need them to reach the registry)."""
    env = _base_env(tmp)
    env.update({k: v for k, v in os.environ.items() if k.lower() in _PROXY_VARS})
    return env


def run_client(
    cmd: list[str],
    env: Mapping[str, str],
    check: bool,
    timeout: float,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a client: output captured as text, stdin closed; ``ClientFailed`` on a
    non-zero exit when ``check``, ``subprocess.TimeoutExpired`` after ``timeout``."""
    proc = subprocess.run(
        cmd,
        cwd=cwd,
        env=dict(env),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise ClientFailed(proc.returncode, cmd, proc.stdout, proc.stderr)
    return proc


def pip(
    *args: str,
    index_url: str,
    tmp: Path,
    check: bool = True,
    timeout: float = 300,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``<python> -m pip <args> --index-url <index_url>`` with a shielded environment.

    ``args`` starts with the pip command (``download``, ``install``, ...), which must be
    one that takes ``--index-url``. Adds ``--isolated``, no cache, no version check,
    ``--retries 0`` (a failure shows at once) and ``--trusted-host`` for the index host.
    ``env`` entries are laid over ``pip_env(tmp)``. Returns the finished process (text
    output captured); raises ``ClientFailed`` on a non-zero exit when ``check``.
    """
    host = urlsplit(index_url).hostname or "127.0.0.1"
    cmd = [
        str(PYTHON), "-m", "pip", "--isolated", "--disable-pip-version-check",
        "--no-input", "--no-cache-dir", "--retries", "0", "--timeout", "60",
        *args,
        "--index-url", index_url, "--trusted-host", host,
    ]  # fmt: skip
    full_env = pip_env(tmp)
    full_env.update(env or {})
    return run_client(cmd, full_env, check, timeout)


def uv_binary() -> Path:
    """The ``uv`` executable installed in the test interpreter's environment."""
    sibling = PYTHON.parent / "uv"
    if sibling.is_file():
        return sibling
    try:
        from uv import find_uv_bin  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:
        raise FileNotFoundError(f"uv is not installed next to {PYTHON}: pip install uv") from exc
    return Path(find_uv_bin())


def uv_env(tmp: Path, index_url: str) -> dict[str, str]:
    """``pip_env`` plus uv's settings: the index, a private cache, no config, no downloads
    of Python, the test interpreter, the index host marked insecure-allowed."""
    env = pip_env(tmp)
    host = urlsplit(index_url).hostname or "127.0.0.1"
    env.update(
        UV_DEFAULT_INDEX=index_url,
        UV_CACHE_DIR=str(tmp / "uv-cache"),
        UV_NO_CONFIG="1",
        UV_PYTHON=str(PYTHON),
        UV_PYTHON_DOWNLOADS="never",
        UV_INSECURE_HOST=host,
        UV_NO_PROGRESS="1",
        UV_HTTP_TIMEOUT="60",
    )
    return env


def uv(
    *args: str,
    index_url: str,
    tmp: Path,
    check: bool = True,
    timeout: float = 300,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``uv <args>`` (e.g. ``"pip", "install", "--target", DIR, "six"``) against
    ``index_url`` with ``uv_env(tmp, index_url)``; ``env`` entries are laid over it.

    The cache is private to ``tmp`` (``UV_CACHE_DIR``), so a second run in the same
    ``tmp`` may reuse it; use a fresh ``tmp`` (or ``env={"UV_NO_CACHE": "1"}``) to make
    uv fetch everything again.
    """
    cmd = [str(uv_binary()), *args]
    full_env = uv_env(tmp, index_url)
    full_env.update(env or {})
    return run_client(cmd, full_env, check, timeout)
