"""Run the real npm against a loopback registry, shielded from the machine's config.

npm reads its configuration from ``npm_config_*`` variables (any case), the user file
(``~/.npmrc``; on this machine it sets ``omit-lockfile-registry-resolved=true``, which
drops ``resolved`` from lockfiles), the global file (``$PREFIX/etc/npmrc``: here a
``cafile``) and the project's ``.npmrc``; proxies also come from ``HTTP(S)_PROXY``. So
the environment itself must be clean: no inherited ``npm_config_*`` or proxy variable, a
private ``HOME``, empty user and global config files, a private cache, and the registry
given explicitly.

By default the environment also *traps* any non-loopback access: npm's ``proxy`` and
``https-proxy`` point to a closed loopback port and ``noproxy`` exempts only loopback
hosts, so an npm that tried to reach the outside world fails at once instead of
succeeding silently. (npm 11 sends *every* request, http ones too, through
``https-proxy`` when it is set, else ``proxy``: npm-registry-fetch passes
``httpsProxy || proxy``; an empty ``noproxy`` falls back to ``NO_PROXY``.)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.fakes.pipclient import run_client

# Port 9 (discard) on loopback: nothing listens, so a proxied request is refused at once.
TRAP_PROXY = "http://127.0.0.1:9"
LOOPBACK_HOSTS = "127.0.0.1,localhost,::1"
_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy")


def npm_binary() -> str | None:
    """The ``npm`` on ``PATH``, or None."""
    return shutil.which("npm")


def _is_shielded(name: str) -> bool:
    lower = name.lower()
    return (
        lower.startswith(("npm_config_", "npm_package_", "npm_lifecycle_"))
        or lower in _PROXY_VARS
        or lower in ("node_options", "node_path", "npm_token")
    )


def npm_env(
    tmp_path: Path, registry: str, *, cache: Path | None = None, trap_proxy: bool = True
) -> dict[str, str]:
    """Environment for the real npm that ignores machine config; files live in ``tmp_path``.

    ``os.environ`` minus every ``npm_config_*`` and proxy variable (and ``NODE_OPTIONS``),
    plus a private ``HOME`` (``tmp_path/npm-home``), ``npm_config_cache`` (``cache``, by
    default ``tmp_path/npm-cache``), empty ``npm_config_userconfig`` and
    ``npm_config_globalconfig`` files, ``npm_config_registry=registry``, no update
    notifier, audit, fund, progress or colour, and no fetch retries (a failure shows at
    once). With ``trap_proxy`` (default) npm's proxies point to a closed loopback port and
    ``noproxy`` lists only loopback hosts.
    """
    tmp_path = Path(tmp_path)
    home = tmp_path / "npm-home"
    home.mkdir(parents=True, exist_ok=True)
    userconfig, globalconfig = tmp_path / "npmrc-user", tmp_path / "npmrc-global"
    userconfig.write_text("")
    globalconfig.write_text("")
    env = {k: v for k, v in os.environ.items() if not _is_shielded(k)}
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_CACHE_HOME=str(home / ".cache"),
        npm_config_cache=str(cache or tmp_path / "npm-cache"),
        npm_config_userconfig=str(userconfig),
        npm_config_globalconfig=str(globalconfig),
        npm_config_registry=registry.rstrip("/") + "/",
        npm_config_update_notifier="false",
        npm_config_audit="false",
        npm_config_fund="false",
        npm_config_progress="false",
        npm_config_color="false",
        npm_config_fetch_retries="0",
        npm_config_fetch_timeout="30000",
        npm_config_yes="false",
    )
    if trap_proxy:
        env.update(
            npm_config_proxy=TRAP_PROXY,
            npm_config_https_proxy=TRAP_PROXY,
            npm_config_noproxy=LOOPBACK_HOSTS,
        )
    return env


def run_npm(
    args: Sequence[str],
    cwd: Path,
    env: Mapping[str, str],
    *,
    timeout: float = 60,
    check: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run ``npm <args>`` in ``cwd`` with ``env`` (see :func:`npm_env`), output captured
    as text, stdin closed. Raises ``ClientFailed`` on a non-zero exit when ``check``,
    ``subprocess.TimeoutExpired`` after ``timeout`` seconds."""
    npm = npm_binary()
    if npm is None:
        raise FileNotFoundError("npm is not installed")
    cmd = [npm, *args]
    return run_client(cmd, env, check, timeout, cwd)


def project(
    directory: Path,
    dependencies: Mapping[str, str],
    *,
    name: str = "app",
    version: str = "1.0.0",
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``directory/package.json`` (a private project ``name`` with ``dependencies``
    and ``extra`` fields), creating the directory; return the file."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {
        "name": name,
        "version": version,
        "private": True,
        "dependencies": dict(dependencies),
        **(extra or {}),
    }
    path = directory / "package.json"
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path
