"""Run the real ``go`` command against a loopback GOPROXY, shielded from the machine.

``go`` reads its settings from ``GO*`` variables, from ``$GOENV`` (default
``$XDG_CONFIG_HOME/go/env``, written by ``go env -w``), and ``$HOME/.netrc`` for
credentials; it keeps downloads in ``$GOMODCACHE`` (default ``$GOPATH/pkg/mod``) and
build results in ``$GOCACHE``. :func:`go_env` drops every inherited ``GO*``/``CGO_*``
and proxy variable and sets all of those to private places, so a test sees neither the
machine's configuration nor its caches, and reaches nothing but the proxy it names:

* ``GOPROXY=<url>`` alone (no ``,direct``: go never falls back to VCS), ``GOSUMDB=off``,
  ``GONOSUMDB``/``GOPRIVATE``/``GONOPROXY``/``GOINSECURE`` unset, ``GOVCS=*:off``;
* ``GOENV=off``, ``GOWORK=off``, ``GOFLAGS=-mod=mod``, ``GO111MODULE=on``,
  ``GOTOOLCHAIN=local`` (a no-op for go 1.19, which predates toolchain switching),
  ``CGO_ENABLED=0`` (no C compiler involved);
* with ``trap_proxy`` (default) ``http_proxy``/``https_proxy`` point to a closed loopback
  port and ``no_proxy`` names loopback only: go never proxies loopback addresses, so the
  fake is reached directly, while anything else (a sumdb, a VCS host) fails at once
  without even a DNS lookup.

``GOCACHE`` may be shared between tests (``gocache=``): build results are keyed by
content, and sharing one makes builds after the first take well under a second.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import struct
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Final

from tests.fakes.pipclient import run_client

#: The ``go`` on PATH (Debian's golang-go: /usr/bin/go), None when absent.
GO: Final = shutil.which("go")
TRAP_PROXY: Final = "http://127.0.0.1:9"
LOOPBACK_HOSTS: Final = "127.0.0.1,localhost,::1,[::1]"
_PROXY_VARS: Final = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy")


def _inherited(name: str) -> bool:
    upper = name.upper()
    return not (upper.startswith(("GO", "CGO_")) or name.lower() in _PROXY_VARS)


def go_env(
    tmp_path: Path, goproxy: str, *, gocache: Path | None = None, trap_proxy: bool = True
) -> dict[str, str]:
    """An environment running ``go`` against ``goproxy`` only, all state under ``tmp_path``.

    ``HOME``, ``XDG_*``, ``GOPATH`` and ``GOMODCACHE`` live in ``tmp_path``; ``GOCACHE``
    too unless ``gocache`` names a (shared) one. See the module docstring.
    """
    home = tmp_path / "gohome"
    for sub in ("config", "cache", "data"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    gopath = tmp_path / "gopath"
    cache = gocache if gocache is not None else tmp_path / "gocache"
    cache.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if _inherited(k)}
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / "config"),
        XDG_CACHE_HOME=str(home / "cache"),
        XDG_DATA_HOME=str(home / "data"),
        GOPATH=str(gopath),
        GOMODCACHE=str(gopath / "pkg" / "mod"),
        GOCACHE=str(cache),
        GOENV="off",
        GOWORK="off",
        GOFLAGS="-mod=mod",
        GOPROXY=goproxy,
        GOSUMDB="off",
        GOVCS="*:off",
        GOTOOLCHAIN="local",
        GO111MODULE="on",
        CGO_ENABLED="0",
    )
    if trap_proxy:
        for var in ("http_proxy", "https_proxy", "all_proxy"):
            env[var] = env[var.upper()] = TRAP_PROXY
        env["no_proxy"] = env["NO_PROXY"] = LOOPBACK_HOSTS
    return env


def run_go(
    args: Iterable[str],
    cwd: Path,
    env: Mapping[str, str],
    *,
    check: bool = True,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run ``go ARGS`` in ``cwd`` with ``env``; output captured; ClientFailed if ``check``."""
    if GO is None:
        raise FileNotFoundError("go is not installed")
    cmd = [GO, *args]
    return run_client(cmd, env, check, timeout, cwd)


def sumdb_key(name: str) -> str:
    """A well-formed ``GOSUMDB`` verifier key for a checksum database called ``name``.

    The format of ``golang.org/x/mod/sumdb/note``: ``<name>+<hash>+<base64(0x01 ||
    Ed25519 public key)>``, the hash being the first 4 bytes (hex) of ``sha256(name "\\n"
    key)``. The public key is made up: nothing can sign for it.
    """
    key = b"\x01" + hashlib.sha256(b"cachesrv tests: " + name.encode()).digest()
    (khash,) = struct.unpack(">I", hashlib.sha256(name.encode() + b"\n" + key).digest()[:4])
    return f"{name}+{khash:08x}+{base64.b64encode(key).decode()}"


def write_main_module(
    directory: Path,
    requires: Mapping[str, str],
    imports: Mapping[str, str],
    *,
    module: str = "example.test/main",
) -> Path:
    """Write a main module (``go.mod`` with ``go 1.19`` and ``main.go``) in ``directory``.

    ``requires``: ``{module path: version}`` for go.mod's ``require``; ``imports``:
    ``{package import path: exported function}``, each function ``func() string``;
    ``main`` prints what each returns, one line each, in the given order. Returns
    ``directory``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    gomod = f"module {module}\n\ngo 1.19\n"
    if requires:
        lines = "".join(f"\t{mod} {ver}\n" for mod, ver in requires.items())
        gomod += f"\nrequire (\n{lines})\n"
    (directory / "go.mod").write_text(gomod)
    aliases = {pkg: f"dep{i}" for i, pkg in enumerate(imports)}
    import_lines = "".join(f'\t{aliases[pkg]} "{pkg}"\n' for pkg in imports)
    calls = "".join(f"\tfmt.Println({aliases[pkg]}.{fn}())\n" for pkg, fn in imports.items())
    (directory / "main.go").write_text(
        f'package main\n\nimport (\n\t"fmt"\n\n{import_lines})\n\nfunc main() {{\n{calls}}}\n'
    )
    return directory
