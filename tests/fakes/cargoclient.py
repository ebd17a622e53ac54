"""Run the real ``cargo`` against a loopback sparse registry, shielded from the machine.

``cargo`` is looked up on ``PATH`` and then in ``~/.cargo/bin`` (where rustup puts it);
sparse registries need cargo 1.68 or newer, so :func:`cargo_or_skip` skips a test when
cargo is missing or older, saying why.

:func:`cargo_env` is the environment for every run: ``os.environ`` minus every ``CARGO_*``
variable (a developer's ``CARGO_HOME``, ``CARGO_TARGET_DIR``, ``CARGO_NET_OFFLINE``,
registry tokens...), the compiler wrappers and flags (``RUSTC_WRAPPER`` could be sccache,
which talks to the network), and every proxy variable; plus a private ``CARGO_HOME`` and
``CARGO_TARGET_DIR`` inside the test's directory, ``CARGO_NET_RETRY=0`` (a failure shows
at once, not after cargo's back-off), ``CARGO_HTTP_TIMEOUT=10``, the sparse protocol for
crates.io, no colours and no progress bars. By default any non-loopback access is
*trapped*: libcurl's proxy variables point to a closed loopback port and ``NO_PROXY``
exempts only loopback hosts, so cargo trying to reach the real crates.io fails at once
(see ``tests/fakes/pipclient.py``, which does the same for pip).

rustup: ``~/.cargo/bin/cargo`` is usually rustup's proxy, which finds its toolchains
through ``RUSTUP_HOME`` (default ``~/.rustup``), not through ``CARGO_HOME``. The
environment pins ``RUSTUP_HOME`` to the one the caller's environment would use, so a
private ``CARGO_HOME`` (or ``HOME``) does not hide the toolchains; ``RUSTUP_TOOLCHAIN``
and the other ``RUSTUP_*`` variables are kept as they are, and ``PATH`` gains the
directory holding the cargo found here if it lacked it.

:func:`write_mirror_config` writes ``$CARGO_HOME/config.toml`` replacing crates.io with
the fake registry (``[source.crates-io] replace-with = "mirror"``, ``[source.mirror]
registry = "sparse+http://127.0.0.1:<port>/index/"``): cargo 1.95 accepts a plain-HTTP
sparse URL on 127.0.0.1 without a warning or any extra setting (observed).

Cargo also reads ``.cargo/config.toml`` in *every ancestor* of its working directory, and
nothing in the environment turns that off; :func:`run_cargo` refuses to run when such a
file exists above ``cwd`` (outside the private ``CARGO_HOME``), since it could point
cargo elsewhere.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.fakes.pipclient import LOOPBACK_HOSTS, TRAP_PROXY, run_client

#: Sparse registries (``sparse+http(s)://``) were stabilised in cargo 1.68.
MIN_SPARSE_VERSION = (1, 68, 0)
#: The name the source replacement gives the fake registry (cargo prints it).
MIRROR = "mirror"

_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy")
# Things that change what cargo runs or fetches; CARGO_* is dropped wholesale.
_TOOL_VARS = (
    "RUSTC",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTDOC",
    "RUSTFLAGS",
    "RUSTDOCFLAGS",
)


class CargoUnavailable(RuntimeError):
    """No usable cargo on this machine (missing, broken, or too old for sparse)."""


def _real_home() -> Path:
    return Path(os.environ.get("HOME") or Path.home())


@functools.cache
def cargo_binary() -> Path | None:
    """``cargo`` on ``PATH``, else ``~/.cargo/bin/cargo``; None if neither exists."""
    found = shutil.which("cargo")
    if found:
        return Path(found)
    fallback = _real_home() / ".cargo" / "bin" / "cargo"
    return fallback if os.access(fallback, os.X_OK) else None


@functools.cache
def cargo_version(binary: Path) -> tuple[int, int, int]:
    """``(major, minor, patch)`` from ``cargo --version`` (e.g. ``cargo 1.95.0 (...)``)."""
    proc = subprocess.run(
        [str(binary), "--version"],
        env=_shielded(dict(os.environ)),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )
    match = re.match(r"cargo (\d+)\.(\d+)\.(\d+)", proc.stdout)
    if proc.returncode != 0 or match is None:
        raise CargoUnavailable(
            f"{binary} --version failed (exit {proc.returncode}): "
            f"{(proc.stdout + proc.stderr).strip()[-500:]}"
        )
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch


def require_cargo(minimum: tuple[int, int, int] = MIN_SPARSE_VERSION) -> Path:
    """The cargo executable, or :class:`CargoUnavailable` saying why it cannot be used."""
    binary = cargo_binary()
    if binary is None:
        raise CargoUnavailable("cargo not found on PATH nor in ~/.cargo/bin")
    version = cargo_version(binary)
    if version < minimum:
        have = ".".join(map(str, version))
        need = ".".join(map(str, minimum))
        raise CargoUnavailable(f"{binary} is cargo {have}; sparse registries need >= {need}")
    return binary


def cargo_or_skip(minimum: tuple[int, int, int] = MIN_SPARSE_VERSION) -> Path:
    """:func:`require_cargo` for tests: skips the test, with the reason, when unusable."""
    import pytest

    try:
        return require_cargo(minimum)
    except CargoUnavailable as exc:
        pytest.skip(str(exc))


def _shielded(env: dict[str, str]) -> dict[str, str]:
    """``env`` without CARGO_*, compiler wrappers/flags and proxies; RUSTUP_HOME pinned."""
    out = {
        k: v
        for k, v in env.items()
        if not k.upper().startswith("CARGO_")
        and k.upper() not in _TOOL_VARS
        and k.lower() not in _PROXY_VARS
    }
    out.setdefault("RUSTUP_HOME", str(_real_home() / ".rustup"))
    return out


def cargo_env(tmp: Path, *, trap_proxy: bool = True) -> dict[str, str]:
    """The environment for running cargo in a test (see the module doc).

    ``CARGO_HOME`` is ``tmp/cargo-home`` and ``CARGO_TARGET_DIR`` ``tmp/cargo-target``
    (both created); override ``CARGO_TARGET_DIR`` to share build output between tests.
    """
    env = _shielded(dict(os.environ))
    home = tmp / "cargo-home"
    target = tmp / "cargo-target"
    home.mkdir(parents=True, exist_ok=True)
    target.mkdir(parents=True, exist_ok=True)
    binary = cargo_binary()
    path = env.get("PATH", os.defpath)
    if binary is not None and str(binary.parent) not in path.split(os.pathsep):
        path = os.pathsep.join([path, str(binary.parent)])
    env.update(
        PATH=path,
        CARGO_HOME=str(home),
        CARGO_TARGET_DIR=str(target),
        CARGO_NET_RETRY="0",
        CARGO_HTTP_TIMEOUT="10",
        CARGO_REGISTRIES_CRATES_IO_PROTOCOL="sparse",
        CARGO_TERM_COLOR="never",
        CARGO_TERM_PROGRESS_WHEN="never",
        CARGO_INCREMENTAL="0",
    )
    if trap_proxy:
        for var in ("http_proxy", "https_proxy", "all_proxy"):
            env[var] = env[var.upper()] = TRAP_PROXY
        env["no_proxy"] = env["NO_PROXY"] = LOOPBACK_HOSTS
    return env


def write_mirror_config(env: Mapping[str, str], index_url: str, *, name: str = MIRROR) -> Path:
    """Write ``$CARGO_HOME/config.toml`` replacing crates.io with the sparse index at
    ``index_url`` (``http://127.0.0.1:<port>/index/``; ``sparse+`` is added if missing).
    Returns the file written (any previous one is replaced)."""
    url = index_url if index_url.startswith("sparse+") else "sparse+" + index_url
    if not url.endswith("/"):
        url += "/"
    path = Path(env["CARGO_HOME"]) / "config.toml"
    path.write_text(
        "[source.crates-io]\n"
        f'replace-with = "{name}"\n\n'
        f"[source.{name}]\n"
        f'registry = "{url}"\n\n'
        "[net]\nretry = 0\n"
    )
    return path


def ancestor_configs(cwd: Path, env: Mapping[str, str]) -> list[Path]:
    """Cargo config files cargo would read from ``cwd``'s ancestors, outside CARGO_HOME."""
    home = Path(env.get("CARGO_HOME", "")).resolve()
    found = []
    for directory in [cwd.resolve(), *cwd.resolve().parents]:
        dot = directory / ".cargo"
        if dot.resolve() == home:
            continue
        for name in ("config", "config.toml"):
            if (dot / name).is_file():
                found.append(dot / name)
    return found


def run_cargo(
    args: Sequence[str],
    cwd: Path,
    env: Mapping[str, str],
    *,
    check: bool = False,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run ``cargo <args>`` in ``cwd`` with ``env`` (from :func:`cargo_env`), output captured.

    Raises :class:`CargoUnavailable` if there is no usable cargo, ``RuntimeError`` if a
    ``.cargo/config.toml`` above ``cwd`` could interfere, ``subprocess.TimeoutExpired``
    after ``timeout`` seconds, and ``ClientFailed`` on a non-zero exit when ``check``.
    """
    binary = require_cargo()
    stray = ancestor_configs(cwd, env)
    if stray:
        raise RuntimeError(f"cargo would also read {', '.join(map(str, stray))}")
    cmd = [str(binary), *args]
    return run_client(cmd, env, check, timeout, cwd)


def rust_ident(crate: str) -> str:
    """The name a crate has in Rust code (``-`` becomes ``_``)."""
    return crate.replace("-", "_")


def write_bin_crate(directory: Path, deps: Mapping[str, str], *, name: str = "app") -> Path:
    """A binary crate in ``directory`` depending on ``deps`` ({crate: version req}).

    Its ``main`` prints ``<crate>::describe()`` of every dependency, one a line (crates
    made by ``tests.fakes.cargoreg.make_crate`` have that function). The manifest has an
    empty ``[workspace]`` so no enclosing workspace claims it. Returns ``directory``.
    """
    (directory / "src").mkdir(parents=True, exist_ok=True)
    dep_lines = "".join(f'{dep} = "{req}"\n' for dep, req in deps.items())
    (directory / "Cargo.toml").write_text(
        "[package]\n"
        f'name = "{name}"\n'
        'version = "0.1.0"\n'
        'edition = "2021"\n'
        "publish = false\n\n"
        "[workspace]\n\n"
        f"[dependencies]\n{dep_lines}"
    )
    calls = "".join(f'    println!("{{}}", {rust_ident(dep)}::describe());\n' for dep in deps)
    (directory / "src" / "main.rs").write_text(f"fn main() {{\n{calls}}}\n")
    return directory
