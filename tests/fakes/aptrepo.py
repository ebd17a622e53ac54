"""Build a real, signed apt repository on disk for tests.

Layout written by :func:`build_apt_repo` under ``dest``::

    dest/
      archive/                      <- AptRepo.root: serve THIS with FakeUpstream
        pool/main/h/hello/hello_1.0_all.deb
        dists/<suite>/
          InRelease  Release  Release.gpg
          main/binary-all/Packages{,.gz,.xz}         (the packages; all are Architecture: all)
          main/binary-all/by-hash/SHA256/<hex>       (copies, as Debian mirrors have them)
          main/binary-amd64/Packages{,.gz,.xz}       (empty: apt wants the native arch too)
          main/binary-amd64/by-hash/SHA256/<hex>
      keyring.gpg                   <- AptRepo.keyring: binary public key for [signed-by=...]
      signing-key.gpg               secret key (unprotected), kept to re-sign on add_packages()
      build/                        scratch: package trees, apt-ftparchive configs and cache

The archive root is ``root`` itself (no ``debian/`` prefix), so with the upstream serving
``root`` at ``URL`` the sources line is ``deb [signed-by=KEYRING] URL SUITE main``;
:meth:`AptRepo.sources_line` writes it. ``root`` holds only public files, so serving it
exposes neither the secret key nor the scratch folder.

The Release file looks like Debian's: ``MD5Sum`` + ``SHA256`` sections, ``Acquire-By-Hash:
yes``, ``Valid-Until`` a few days ahead (``valid_days``; negative makes it already expired),
signed with a throwaway ed25519 key into both ``InRelease`` (clearsigned) and ``Release.gpg``
(armoured detached signature).

apt-ftparchive quirks handled here:

* by-hash copies are written by ``apt-ftparchive release`` (not by ``generate``) and only
  when ``APT::FTPArchive::DoByHash`` is set in the *apt* configuration (``-c``/``-o``); in
  the ``generate`` config file it is silently ignored. That same option emits
  ``Acquire-By-Hash: yes``. We still check that the by-hash files exist afterwards.
* ``release`` hashes every ``Release``/``InRelease`` it finds under the directory, so the
  old ones are deleted first and the new Release is written outside ``dists/`` then moved.
* ``generate`` puts ``Architecture: all`` packages only into ``binary-all``, so
  ``binary-amd64/Packages`` is empty. apt wants the native architecture listed, but it never
  requests an index whose uncompressed size in the Release is 0: ``apt-get update``
  fetches ``InRelease`` and ``binary-all/by-hash/SHA256/<hex>`` only.
* ``add_packages`` re-publishing within the same second would be invisible to
  ``If-Modified-Since`` (1 s resolution): the new index files get a later mtime.
* SHA512 is disabled (Debian publishes MD5Sum + SHA256 only), so apt's strongest hash is
  SHA256 and it fetches ``by-hash/SHA256/<hex>``.
"""

from __future__ import annotations

import functools
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeAlias

#: Fixed build timestamp: dpkg-deb clamps file mtimes to it, making .debs reproducible.
SOURCE_DATE_EPOCH = 1700000000
#: Payloads larger than this are stored uncompressed (-Znone) to keep builds fast.
_COMPRESS_LIMIT = 1 << 20


@dataclass(frozen=True)
class AptPackage:
    """A package to build: ``size`` extra bytes of deterministic pseudo-random content.

    ``version`` may carry an epoch (``"1:2.0"``); the pool file name then drops it, as
    Debian's does (``name_2.0_all.deb``), while ``apt-get download`` saves the file as
    ``name_1%3a2.0_all.deb``.
    """

    name: str
    version: str
    size: int = 0

    @property
    def upstream_version(self) -> str:
        """The version without its epoch (what goes into file names)."""
        return self.version.split(":", 1)[1] if ":" in self.version else self.version

    @property
    def pool_dir(self) -> str:
        """``pool/main/h/hello`` style folder (``lib*`` packages use four letters)."""
        prefix = self.name[:4] if self.name.startswith("lib") else self.name[0]
        return f"{prefix}/{self.name}"

    @property
    def filename(self) -> str:
        """The pool file name, ``name_<version without epoch>_all.deb``."""
        return f"{self.name}_{self.upstream_version}_all.deb"


#: What build_apt_repo/add_packages accept per package.
PackageSpec: TypeAlias = AptPackage | tuple[str, str] | tuple[str, str, int]


@dataclass(frozen=True)
class AptRepo:
    """A built repository; see the module docstring for the layout.

    ``debs`` maps each package name to its .deb inside ``root`` (the latest version added
    when a name was added twice); ``versions`` maps it to that version string.
    """

    root: Path
    suite: str
    component: str
    keyring: Path
    debs: dict[str, Path]
    versions: dict[str, str] = field(default_factory=dict)
    architectures: tuple[str, ...] = ("all", "amd64")
    dest: Path = Path()
    valid_days: float = 3.0

    def sources_line(self, url: str) -> str:
        """The one-line sources.list entry for this repo served at ``url``."""
        return f"deb [signed-by={self.keyring}] {url.rstrip('/')} {self.suite} {self.component}"

    @property
    def dist_dir(self) -> Path:
        """``root/dists/<suite>``: where Release, InRelease and Release.gpg are."""
        return self.root / "dists" / self.suite

    def url_path(self, name: str) -> str:
        """URL path of package ``name``'s .deb relative to the archive root (``/pool/...``)."""
        return "/" + self.debs[name].relative_to(self.root).as_posix()

    def download_name(self, name: str) -> str:
        """File name ``apt-get download name`` saves (the epoch's ':' becomes ``%3a``)."""
        return f"{name}_{self.versions[name].replace(':', '%3a')}_all.deb"


def build_apt_repo(
    dest: Path,
    packages: Sequence[PackageSpec],
    suite: str = "stable",
    *,
    component: str = "main",
    architectures: Sequence[str] | None = None,
    valid_days: float = 3.0,
) -> AptRepo:
    """Build and sign a repository under ``dest`` holding ``packages``.

    ``packages`` items are ``(name, version)``, ``(name, version, size)`` or
    :class:`AptPackage`; ``size`` adds that many bytes of package-specific content.
    ``architectures`` defaults to ``all`` + ``amd64`` + the machine's native architecture.
    """
    dest = Path(dest).resolve()
    root = dest / "archive"
    if root.exists():
        raise FileExistsError(f"{root} exists; use add_packages() to change a repo")
    for sub in (root, dest / "build"):
        sub.mkdir(parents=True)
    archs = tuple(architectures) if architectures else _default_architectures()
    keyring = dest / "keyring.gpg"
    _generate_key(dest / "signing-key.gpg", keyring)
    repo = AptRepo(
        root=root,
        suite=suite,
        component=component,
        keyring=keyring,
        debs={},
        versions={},
        architectures=archs,
        dest=dest,
        valid_days=valid_days,
    )
    return add_packages(repo, packages)


def add_packages(
    repo: AptRepo,
    packages: Sequence[PackageSpec],
    *,
    valid_days: float | None = None,
) -> AptRepo:
    """Add ``packages`` to ``repo``, regenerate the indices, re-sign; return the new AptRepo.

    Old by-hash files stay (apt-ftparchive keeps a few generations), as on a real mirror
    that publishes a new Release. An empty ``packages`` just re-publishes (new Date, new
    signatures): handy to make an upstream ``InRelease`` change.
    """
    specs = [_as_spec(p) for p in packages]
    debs, versions = dict(repo.debs), dict(repo.versions)
    build = repo.dest / "build"
    for spec in specs:
        deb = repo.root / "pool" / repo.component / spec.pool_dir / spec.filename
        _build_deb(spec, build / "pkgs" / f"{spec.name}_{spec.upstream_version}", deb)
        debs[spec.name], versions[spec.name] = deb, spec.version
    new = AptRepo(
        root=repo.root,
        suite=repo.suite,
        component=repo.component,
        keyring=repo.keyring,
        debs=debs,
        versions=versions,
        architectures=repo.architectures,
        dest=repo.dest,
        valid_days=repo.valid_days if valid_days is None else valid_days,
    )
    previous = _index_files(new)
    last_published = max((int(f.stat().st_mtime) for f in previous), default=0)
    _generate_indices(new)
    _write_release(new)
    _sign(new)
    _bump_mtimes(new, last_published)
    return new


def _index_files(repo: AptRepo) -> list[Path]:
    """Release, InRelease, Release.gpg and the Packages files (not the by-hash copies)."""
    if not repo.dist_dir.is_dir():
        return []
    return [p for p in repo.dist_dir.rglob("*") if p.is_file() and "by-hash" not in p.parts]


def _bump_mtimes(repo: AptRepo, last_published: int) -> None:
    """Make a re-publish visible to If-Modified-Since revalidation.

    HTTP dates have 1 s resolution and apt revalidates InRelease with If-Modified-Since:
    a repo re-published within the same second as before would be answered 304 and apt
    (or a cache) would keep the old indices. So the new index files get an mtime at least
    one whole second after the previous publication.
    """
    if last_published == 0:
        return
    files = _index_files(repo)
    newest = max(int(f.stat().st_mtime) for f in files)
    if newest > last_published:
        return
    stamp = last_published + 1
    for f in files:
        os.utime(f, (stamp, stamp))


# -- packages ----------------------------------------------------------------------------


def _as_spec(item: PackageSpec) -> AptPackage:
    if isinstance(item, AptPackage):
        return item
    return AptPackage(*item)


def _payload(spec: AptPackage) -> bytes:
    """Deterministic, package-specific bytes: same (name, version, size), same content."""
    rng = random.Random(f"{spec.name}={spec.version}")
    return rng.randbytes(spec.size)


def _build_deb(spec: AptPackage, tree: Path, out: Path) -> None:
    if tree.exists():
        shutil.rmtree(tree)
    (tree / "DEBIAN").mkdir(parents=True)
    doc = tree / "usr" / "share" / "doc" / spec.name
    doc.mkdir(parents=True)
    (doc / "README").write_text(f"{spec.name} {spec.version}: a cachesrv test package\n")
    if spec.size:
        data = tree / "usr" / "share" / spec.name
        data.mkdir(parents=True)
        (data / "payload.bin").write_bytes(_payload(spec))
    (tree / "DEBIAN" / "control").write_text(
        f"Package: {spec.name}\n"
        f"Version: {spec.version}\n"
        "Architecture: all\n"
        "Maintainer: cachesrv tests <tests@cachesrv.invalid>\n"
        "Section: misc\n"
        "Priority: optional\n"
        f"Description: cachesrv test package {spec.name}\n"
        " Built by tests/fakes/aptrepo.py.\n"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    compress = ["-Zgzip", "-z1"] if spec.size <= _COMPRESS_LIMIT else ["-Znone"]
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(SOURCE_DATE_EPOCH)}
    _run(["dpkg-deb", "--root-owner-group", *compress, "--build", str(tree), str(out)], env=env)


# -- indices -----------------------------------------------------------------------------


def _ftparchive_conf(repo: AptRepo) -> Path:
    """The *apt* configuration for apt-ftparchive (hashes, by-hash, Release fields)."""
    conf = repo.dest / "build" / "ftparchive.conf"
    archs = " ".join(repo.architectures)
    conf.write_text(
        'APT::FTPArchive::DoByHash "true";\n'
        'APT::FTPArchive::MD5 "true";\n'
        'APT::FTPArchive::SHA1 "false";\n'
        'APT::FTPArchive::SHA256 "true";\n'
        'APT::FTPArchive::SHA512 "false";\n'
        "APT::FTPArchive::Release {\n"
        '  Origin "cachesrv-test";\n'
        '  Label "cachesrv-test";\n'
        f'  Suite "{repo.suite}";\n'
        f'  Codename "{repo.suite}";\n'
        f'  Architectures "{archs}";\n'
        f'  Components "{repo.component}";\n'
        '  Description "cachesrv test archive";\n'
        f'  ValidTime "{int(repo.valid_days * 86400)}";\n'
        '  MD5 "true"; SHA1 "false"; SHA256 "true"; SHA512 "false";\n'
        "};\n"
    )
    return conf


def _generate_indices(repo: AptRepo) -> None:
    build = repo.dest / "build"
    (build / "db").mkdir(exist_ok=True)
    for arch in repo.architectures:
        (repo.dist_dir / repo.component / f"binary-{arch}").mkdir(parents=True, exist_ok=True)
    gen = build / "generate.conf"
    gen.write_text(
        f'Dir {{ ArchiveDir "{repo.root}"; CacheDir "{build / "db"}"; }};\n'
        'Default { Packages::Compress ". gzip xz"; };\n'
        "TreeDefault {\n"
        '  Directory "pool/$(SECTION)";\n'
        '  Packages "$(DIST)/$(SECTION)/binary-$(ARCH)/Packages";\n'
        '  Contents " ";\n'  # no Contents-* files
        "};\n"
        f'Tree "dists/{repo.suite}" {{\n'
        f'  Sections "{repo.component}";\n'
        f'  Architectures "{" ".join(repo.architectures)}";\n'
        "};\n"
    )
    _run(["apt-ftparchive", "-q", "-c", str(_ftparchive_conf(repo)), "generate", str(gen)])


def _write_release(repo: AptRepo) -> None:
    dist = repo.dist_dir
    for name in ("Release", "InRelease", "Release.gpg"):
        (dist / name).unlink(missing_ok=True)
    conf = _ftparchive_conf(repo)
    release = _run(
        ["apt-ftparchive", "-c", str(conf), "release", f"dists/{repo.suite}"], cwd=repo.root
    ).stdout
    tmp = repo.dest / "build" / "Release"
    tmp.write_text(release)
    tmp.replace(dist / "Release")
    _ensure_by_hash(repo, release)


def _ensure_by_hash(repo: AptRepo, release: str) -> None:
    """Check every SHA256-listed index has its by-hash copy; write missing ones."""
    in_sha256 = False
    for line in release.splitlines():
        if not line.startswith(" "):
            in_sha256 = line.strip() == "SHA256:"
            continue
        if not in_sha256:
            continue
        digest, _size, rel = line.split()
        src = repo.dist_dir / rel
        by_hash = src.parent / "by-hash" / "SHA256" / digest
        if not by_hash.is_file():
            by_hash.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, by_hash)


# -- signing -----------------------------------------------------------------------------


# gpg signs through gpg-agent, which daemonises (double fork): once killed, its orphan is
# a zombie of PID 1, and some container inits never reap. So every gpg session runs under
# this small wrapper, a child subreaper: the orphaned agent becomes *its* child, and it
# kills and reaps the agent before exiting. stdin: JSON list of gpg argument lists.
_GPG_SESSION = r"""
import ctypes, json, os, signal, subprocess, sys

ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
home = sys.argv[1]
rc = 0
try:
    for args in json.load(sys.stdin):
        cmd = ["gpg", "--homedir", home, "--batch", "--no-tty", "--quiet", *args]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(f"{cmd} failed ({proc.returncode}):\n{proc.stderr}")
            rc = 1
            break
finally:
    subprocess.run(["gpgconf", "--homedir", home, "--kill", "all"], capture_output=True)
    signal.alarm(10)  # the agent exits right after --kill; never wait forever
    while True:
        try:
            os.wait()
        except ChildProcessError:
            break
sys.exit(rc)
"""


def _gpg_session(*commands: Sequence[str], files: Mapping[str, str] | None = None) -> None:
    """Run gpg ``commands`` in a throwaway GNUPGHOME, then kill and reap its gpg-agent.

    ``files`` are written into the home first (name -> text); ``{home}`` in an argument is
    replaced by the home's path. The home is a short mkdtemp() path, not the test's
    tmp_path: gpg-agent's socket lives there and a Unix socket path must fit in 108 bytes.
    """
    home = Path(tempfile.mkdtemp(prefix="aptrepo-gpg-"))
    try:
        for name, text in (files or {}).items():
            (home / name).write_text(text)
        argv = [[a.replace("{home}", str(home)) for a in cmd] for cmd in commands]
        _run([sys.executable, "-c", _GPG_SESSION, str(home)], stdin=json.dumps(argv))
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _generate_key(secret_out: Path, keyring_out: Path) -> None:
    params = (
        "%no-protection\n"  # no passphrase: nothing may prompt
        "Key-Type: eddsa\n"  # ed25519: generated in milliseconds, no entropy wait
        "Key-Curve: ed25519\n"
        "Key-Usage: sign\n"
        "Name-Real: cachesrv test archive\n"
        "Name-Email: archive@cachesrv.invalid\n"
        "Expire-Date: 0\n"
        "%commit\n"
    )
    _gpg_session(
        ["--gen-key", "{home}/params"],
        ["--yes", "--output", str(keyring_out), "--export"],  # binary: what signed-by wants
        ["--yes", "--output", str(secret_out), "--export-secret-keys"],
        files={"params": params},
    )
    secret_out.chmod(0o600)
    keyring_out.chmod(0o644)


def _sign(repo: AptRepo) -> None:
    """Sign Release into InRelease (clearsigned) and Release.gpg (armoured, detached)."""
    release = str(repo.dist_dir / "Release")
    common = ["--yes", "--digest-algo", "SHA256"]
    _gpg_session(
        ["--import", str(repo.dest / "signing-key.gpg")],
        [*common, "--clearsign", "--output", str(repo.dist_dir / "InRelease"), release],
        [*common, "--armor", "--detach-sign", "--output", release + ".gpg", release],
    )


# -- helpers -----------------------------------------------------------------------------


@functools.cache
def native_architecture() -> str:
    """dpkg's native architecture (``amd64`` on the usual CI machines)."""
    return _run(["dpkg", "--print-architecture"]).stdout.strip()


def _default_architectures() -> tuple[str, ...]:
    return tuple(dict.fromkeys(("all", "amd64", native_architecture())))


def _run(
    cmd: Sequence[str],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        list(cmd), cwd=cwd, env=env, input=stdin, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc
