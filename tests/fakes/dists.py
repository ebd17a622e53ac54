"""Real distribution files for tests: tiny ones built here, real ones from a local cache.

``build_wheel`` and ``build_sdist`` write small but valid distributions in-process
(deterministic bytes: same arguments, same sha256), so tests can make as many projects and
versions as they need without a network or a subprocess.

``fetch_real_dists`` hands out real wheels (``requests`` and its dependencies, ``six``,
``setuptools``, ``wheel``) from a cache directory that ``tests/fetch-test-dists.sh`` fills
*during setup*, with pip as an ordinary package client. Tests never download: when the cache
lacks what a test needs, ``real_dists_or_skip`` skips it and says which command fills it.

Cache layout (``$CACHESRV_TEST_DISTS``, default ``<repo>/.cache/test-dists``)::

    files/<filename>                  every downloaded distribution file, once
    sets/<slug>-<tag>.json            per requirement and interpreter: the files pip chose
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CACHE_DIR = REPO_ROOT / ".cache" / "test-dists"
CACHE_ENV = "CACHESRV_TEST_DISTS"
FETCH_SCRIPT = "tests/fetch-test-dists.sh"

#: What the end-to-end tests use; ``tests/fetch-test-dists.sh`` downloads exactly these.
E2E_REQUIREMENTS: tuple[str, ...] = (
    "requests",
    "six==1.16.0",
    "six==1.17.0",
    "setuptools",
    "wheel",
)

# Fixed timestamps make the archives byte-for-byte reproducible.
_ZIP_DATE = (2020, 2, 2, 0, 0, 0)
_TAR_MTIME = 1580601600  # 2020-02-02T00:00:00Z


class DistsNotCached(LookupError):
    """The test-dists cache lacks what was asked for, and downloading was not allowed."""

    def __init__(self, requirement: str, cache_dir: Path) -> None:
        super().__init__(requirement, cache_dir)
        self.requirement = requirement
        self.cache_dir = cache_dir

    def __str__(self) -> str:
        return (
            f"real distributions for {self.requirement!r} are not in {self.cache_dir}: "
            f"run {FETCH_SCRIPT} (online, once) to fill it"
        )


def escape_name(name: str) -> str:
    """Project name as it appears in wheel and sdist file names (PEP 427/625)."""
    return re.sub(r"[-_.]+", "_", name).lower()


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode("ascii")


def _metadata(
    name: str,
    version: str,
    requires: Iterable[str],
    requires_python: str | None,
) -> str:
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {name}",
        f"Version: {version}",
        f"Summary: {name} {version}, a test distribution built by cachesrv's tests",
    ]
    if requires_python is not None:
        lines.append(f"Requires-Python: {requires_python}")
    lines.extend(f"Requires-Dist: {req}" for req in requires)
    return "\n".join(lines) + "\n\n"


def build_wheel(
    dest: Path,
    name: str,
    version: str,
    *,
    requires: Sequence[str] = (),
    requires_python: str | None = None,
) -> Path:
    """Write ``<name>-<version>-py3-none-any.whl`` into ``dest`` and return its path.

    The wheel holds one module package (``<escaped name>/__init__.py`` defining
    ``__version__``) and a complete ``.dist-info`` (METADATA, WHEEL, RECORD with hashes), so
    pip and uv install it. ``requires`` become ``Requires-Dist`` lines.
    """
    dest.mkdir(parents=True, exist_ok=True)
    esc = escape_name(name)
    dist_info = f"{esc}-{version}.dist-info"
    contents: list[tuple[str, bytes]] = [
        (f"{esc}/__init__.py", f'__version__ = "{version}"\n'.encode()),
        (f"{dist_info}/METADATA", _metadata(name, version, requires, requires_python).encode()),
        (
            f"{dist_info}/WHEEL",
            b"Wheel-Version: 1.0\nGenerator: cachesrv-tests\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n\n",
        ),
    ]
    record = "".join(f"{path},{_record_hash(data)},{len(data)}\n" for path, data in contents)
    record += f"{dist_info}/RECORD,,\n"
    contents.append((f"{dist_info}/RECORD", record.encode()))

    path = dest / f"{esc}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for arcname, data in contents:
            info = zipfile.ZipInfo(arcname, date_time=_ZIP_DATE)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return path


def _toml_list(items: Iterable[str]) -> str:
    # JSON strings of plain text are valid TOML basic strings.
    return "[" + ", ".join(json.dumps(item) for item in items) + "]"


def build_sdist(
    dest: Path,
    name: str,
    version: str,
    *,
    build_requires: Sequence[str] = ("setuptools", "wheel"),
    requires: Sequence[str] = (),
    requires_python: str | None = None,
) -> Path:
    """Write ``<name>-<version>.tar.gz`` into ``dest`` and return its path.

    A real source distribution: ``pyproject.toml`` with ``build_requires`` and the
    ``setuptools.build_meta`` backend, a ``[project]`` table, ``PKG-INFO`` and one package.
    Building it (pip's or uv's build isolation) needs ``build_requires`` from the index.
    """
    dest.mkdir(parents=True, exist_ok=True)
    esc = escape_name(name)
    top = f"{esc}-{version}"
    project = [
        "[build-system]",
        f"requires = {_toml_list(build_requires)}",
        'build-backend = "setuptools.build_meta"',
        "",
        "[project]",
        f"name = {json.dumps(name)}",
        f"version = {json.dumps(version)}",
        f"dependencies = {_toml_list(requires)}",
    ]
    if requires_python is not None:
        project.append(f"requires-python = {json.dumps(requires_python)}")
    contents: list[tuple[str, bytes]] = [
        (f"{top}/PKG-INFO", _metadata(name, version, requires, requires_python).encode()),
        (f"{top}/pyproject.toml", ("\n".join(project) + "\n").encode()),
        (f"{top}/{esc}/__init__.py", f'__version__ = "{version}"\n'.encode()),
    ]

    path = dest / f"{top}.tar.gz"
    with (
        path.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for arcname, data in contents:
            info = tarfile.TarInfo(arcname)
            info.size = len(data)
            info.mtime = _TAR_MTIME
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return path


# --- real distributions, cached --------------------------------------------------------


def cache_dir() -> Path:
    """The test-dists cache: ``$CACHESRV_TEST_DISTS`` or ``<repo>/.cache/test-dists``."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured) if configured else DEFAULT_CACHE_DIR


def _interpreter_tag() -> str:
    # pip picks wheels for the running interpreter (charset_normalizer has cp311 wheels),
    # so what was chosen for one interpreter says nothing about another.
    return f"py{sys.version_info.major}{sys.version_info.minor}-{platform.machine().lower()}"


def _set_file(cache: Path, requirement: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9.=_-]+", "_", requirement).strip("_") or "req"
    return cache / "sets" / f"{slug}-{_interpreter_tag()}.json"


def _cached_files(cache: Path, requirement: str) -> list[Path] | None:
    set_file = _set_file(cache, requirement)
    try:
        names = json.loads(set_file.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    files = [cache / "files" / name for name in names]
    return files if files and all(f.is_file() for f in files) else None


def _download(cache: Path, requirement: str) -> list[Path]:
    """Run ``pip download`` (the machine's default index, no config) for one requirement."""
    # Imported here: pipclient is only needed by the setup path, never by tests' lookups.
    from .pipclient import PYTHON, download_env

    files_dir = cache / "files"
    files_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cachesrv-dists-") as tmp_name:
        tmp = Path(tmp_name)
        out = tmp / "out"
        cmd = [
            str(PYTHON), "-m", "pip", "--isolated", "--disable-pip-version-check",
            "--no-input", "--no-cache-dir", "download", "--only-binary=:all:",
            "--dest", str(out), requirement,
        ]  # fmt: skip
        cert = os.environ.get("PIP_CERT")
        if cert:  # --isolated ignores PIP_CERT; a TLS-intercepting site still needs it.
            cmd[5:5] = ["--cert", cert]
        proc = subprocess.run(
            cmd, env=download_env(tmp), capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"pip download {requirement} failed ({proc.returncode}):\n"
                f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            )
        names = sorted(p.name for p in out.iterdir() if p.is_file())
        for name in names:
            os.replace(out / name, files_dir / name)
    set_file = _set_file(cache, requirement)
    set_file.parent.mkdir(parents=True, exist_ok=True)
    payload = {"requirement": requirement, "interpreter": _interpreter_tag(), "files": names}
    tmp_set = set_file.with_suffix(".tmp")
    tmp_set.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp_set, set_file)
    return [files_dir / name for name in names]


def fetch_real_dists(
    dest: Path,
    requirements: Sequence[str],
    *,
    allow_download: bool = False,
    cache: Path | None = None,
) -> list[Path]:
    """Copy the real distributions that satisfy ``requirements`` into ``dest``.

    Each requirement is resolved separately (so ``six==1.16.0`` and ``six==1.17.0`` can be
    asked together), wheels only, for the running interpreter. Files come from the cache;
    a requirement missing there is downloaded with ``pip download`` only when
    ``allow_download`` is true (setup: ``tests/fetch-test-dists.sh``), otherwise
    ``DistsNotCached`` is raised. Tests never pass ``allow_download``. Returns the paths in
    ``dest``, sorted, without duplicates.
    """
    cache = cache if cache is not None else cache_dir()
    found: dict[str, Path] = {}
    for requirement in requirements:
        files = _cached_files(cache, requirement)
        if files is None:
            if not allow_download:
                raise DistsNotCached(requirement, cache)
            files = _download(cache, requirement)
        for f in files:
            found[f.name] = f
    dest.mkdir(parents=True, exist_ok=True)
    out: list[Path] = []
    for name, src in sorted(found.items()):
        target = dest / name
        if not (target.is_file() and target.stat().st_size == src.stat().st_size):
            shutil.copyfile(src, target)
        out.append(target)
    return out


def real_dists_or_skip(dest: Path, requirements: Sequence[str]) -> list[Path]:
    """``fetch_real_dists`` for tests: skips the test when the cache lacks the files."""
    import pytest

    try:
        return fetch_real_dists(dest, requirements)
    except DistsNotCached as exc:
        pytest.skip(str(exc))


def _main(argv: Sequence[str]) -> int:
    """``python -m tests.fakes.dists fetch [REQ...]``: fill the cache (default: e2e set)."""
    if not argv or argv[0] != "fetch":
        print("usage: python -m tests.fakes.dists fetch [REQUIREMENT...]", file=sys.stderr)
        return 2
    requirements = list(argv[1:]) or list(E2E_REQUIREMENTS)
    cache = cache_dir()
    for requirement in requirements:
        cached = _cached_files(cache, requirement)
        state = "cached" if cached is not None else "downloaded"
        files = cached if cached is not None else _download(cache, requirement)
        print(f"{requirement}: {state}: {' '.join(f.name for f in files)}")
    print(f"test dists are in {cache}")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
