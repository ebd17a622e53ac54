"""What the soak's upstream serves: real-shaped files, and the true sha256 of each.

Built once per run under `root` (served as is by `soakup.SoakUpstream`):

    debian/            a signed apt archive (tests/fakes/aptrepo.py: dpkg-deb,
                       apt-ftparchive and gpg, no root needed): dists/stable/InRelease,
                       Release, Release.gpg, main/binary-*/Packages{,.gz,.xz} and their
                       by-hash/SHA256/<hex> copies, pool/main/.../*.deb
    pypi/simple/       index.html (the project list) and <project>/index.html +
                       index.json (PEP 503 / PEP 691 pages whose links carry #sha256= and
                       the PEP 658 metadata hash, pointing at the files host)
    files/packages/    wheels (a payload of assorted sizes), their .metadata, sdists
    tarballs/          *.tar.gz of assorted sizes (a few KiB to ~20 MiB), SHA256SUMS

`Corpus.truth` maps every URL path the upstream answers (`/debian/dists/...`) to the
file's size and sha256, taken from the bytes on disk after everything is written.
File contents are pseudo-random from a seed (nothing compresses), so bodies differ.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import html
import io
import json
import os
import random
import shutil
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.fakes import aptrepo
from tests.fakes.dists import build_sdist, escape_name

KiB, MiB = 1 << 10, 1 << 20
SUITE = "stable"
JSON_V1 = "application/vnd.pypi.simple.v1+json"
_ZIP_DATE = (2020, 2, 2, 0, 0, 0)


@dataclass(frozen=True)
class Scale:
    """How much to build. `small` fits a 2-minute test; `full` a 30-minute soak."""

    debs: tuple[int, ...]  # payload size of each package
    projects: int
    versions: int  # per project
    wheel_sizes: tuple[int, ...]  # cycled over the wheels
    tarballs: tuple[int, ...]  # payload size of each tarball


SMALL = Scale(
    debs=(1 * KiB, 3 * KiB, 8 * KiB, 20 * KiB, 60 * KiB, 200 * KiB, 700 * KiB, 2 * MiB) * 2,
    projects=4,
    versions=2,
    wheel_sizes=(2 * KiB, 30 * KiB, 300 * KiB, 1 * MiB),
    tarballs=(3 * KiB, 10 * KiB, 40 * KiB, 120 * KiB, 500 * KiB, 1 * MiB, 2 * MiB, 3 * MiB,
              4 * MiB, 6 * MiB, 8 * MiB, 10 * MiB, 20 * MiB),
)  # fmt: skip
FULL = Scale(
    debs=(1 * KiB, 2 * KiB, 5 * KiB, 12 * KiB, 30 * KiB, 80 * KiB, 250 * KiB, 900 * KiB,
          3 * MiB, 8 * MiB) * 4,
    projects=8,
    versions=3,
    wheel_sizes=(2 * KiB, 15 * KiB, 60 * KiB, 250 * KiB, 1 * MiB, 3 * MiB),
    tarballs=(2 * KiB, 5 * KiB, 12 * KiB, 30 * KiB, 70 * KiB, 150 * KiB, 400 * KiB,
              1 * MiB, 3 * MiB, 7 * MiB, 12 * MiB, 20 * MiB) * 2,
)  # fmt: skip
SCALES = {"small": SMALL, "full": FULL}


@dataclass(frozen=True)
class TrueFile:
    path: str  # URL path on the upstream, "/debian/pool/main/..."
    disk: Path
    size: int
    sha256: str


@dataclass(frozen=True)
class Dist:
    """A file a project page lists (wheel or sdist), as the page declares it."""

    project: str  # normalized
    filename: str
    path: str  # upstream path, "/files/packages/<project>/<filename>"
    sha256: str
    metadata_sha256: str | None  # of `path + ".metadata"`, wheels only


@dataclass
class Corpus:
    root: Path
    files_port: int  # the pypi files host, 127.0.0.1:<files_port>
    truth: dict[str, TrueFile] = field(default_factory=dict)
    apt_indices: list[str] = field(default_factory=list)  # InRelease, Packages, ... (mutable)
    apt_by_hash: list[str] = field(default_factory=list)  # the by-hash copies apt fetches
    debs: list[str] = field(default_factory=list)
    projects: dict[str, list[Dist]] = field(default_factory=dict)
    tarballs: list[str] = field(default_factory=list)
    tarball_index: str = "/tarballs/SHA256SUMS"

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.truth.values())

    @property
    def largest(self) -> int:
        return max(f.size for f in self.truth.values())

    def page_path(self, project: str, fmt: str) -> str:
        return f"/pypi/simple/{project}/index.{fmt}"


def _payload(rng: random.Random, size: int) -> bytes:
    return rng.randbytes(size)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return h.hexdigest()


def build(root: Path, scale: Scale, files_port: int, seed: int,
          log: Callable[[str], object] = print) -> Corpus:  # fmt: skip
    """Write the whole corpus under `root` (which must not exist) and hash it."""
    root.mkdir(parents=True)
    rng = random.Random(f"cachesrv-soak-{seed}")
    corpus = Corpus(root, files_port)
    _build_apt(corpus, scale, root.parent / "aptbuild")
    _build_pypi(corpus, scale, rng)
    _build_tarballs(corpus, scale, rng)
    for disk in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = "/" + disk.relative_to(root).as_posix()
        corpus.truth[rel] = TrueFile(rel, disk, disk.stat().st_size, _sha256(disk))
    log(
        f"corpus: {len(corpus.truth)} files, {corpus.total_bytes / MiB:.0f} MiB "
        f"({len(corpus.debs)} debs, {sum(map(len, corpus.projects.values()))} dists in "
        f"{len(corpus.projects)} projects, {len(corpus.tarballs)} tarballs)"
    )
    return corpus


# -- apt -------------------------------------------------------------------------------


def _build_apt(corpus: Corpus, scale: Scale, build_dir: Path) -> None:
    for tool in ("dpkg-deb", "apt-ftparchive", "gpg"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: apt-get install dpkg-dev apt-utils gnupg")
    packages = [(f"soak{i:02d}", "1.0", size) for i, size in enumerate(scale.debs)]
    repo = aptrepo.build_apt_repo(build_dir, packages, SUITE, architectures=("all", "amd64"))
    archive = corpus.root / "debian"
    os.replace(repo.root, archive)  # only the public files are served
    shutil.rmtree(build_dir, ignore_errors=True)
    dist = f"/debian/dists/{SUITE}"
    corpus.apt_indices = [f"{dist}/InRelease", f"{dist}/Release", f"{dist}/Release.gpg"]
    release = (archive / "dists" / SUITE / "Release").read_text()
    in_sha256 = False
    for line in release.splitlines():
        if not line.startswith(" "):
            in_sha256 = line.strip() == "SHA256:"
            continue
        digest, size, rel = line.split()
        if not in_sha256 or int(size) == 0 or "/binary-all/" not in rel:
            continue
        corpus.apt_indices.append(f"{dist}/{rel}")
        folder = rel.rsplit("/", 1)[0]
        corpus.apt_by_hash.append(f"{dist}/{folder}/by-hash/SHA256/{digest}")
    corpus.debs = sorted(
        "/" + p.relative_to(corpus.root).as_posix() for p in (archive / "pool").rglob("*.deb")
    )


# -- pypi ------------------------------------------------------------------------------


def _wheel(dest: Path, name: str, version: str, payload: bytes) -> tuple[Path, bytes]:
    """A valid wheel holding `payload` as package data; (path, its METADATA)."""
    esc = escape_name(name)
    dist_info = f"{esc}-{version}.dist-info"
    metadata = (
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        f"Summary: {name} {version}, built by cachesrv's soak bench\n"
        "Requires-Python: >=3.8\n\n"
    ).encode()
    contents = [
        (f"{esc}/__init__.py", f'__version__ = "{version}"\n'.encode()),
        (f"{esc}/payload.bin", payload),
        (f"{dist_info}/METADATA", metadata),
        (f"{dist_info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: cachesrv-soak\n"
                               b"Root-Is-Purelib: true\nTag: py3-none-any\n\n"),
    ]  # fmt: skip
    record = io.StringIO()
    for arc, data in contents:
        b64 = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.write(f"{arc},sha256={b64},{len(data)}\n")
    record.write(f"{dist_info}/RECORD,,\n")
    contents.append((f"{dist_info}/RECORD", record.getvalue().encode()))
    path = dest / f"{esc}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for arc, data in contents:
            info = zipfile.ZipInfo(arc, date_time=_ZIP_DATE)
            info.external_attr = 0o644 << 16
            # The payload is random: storing it is as small as deflating it, and faster.
            random_data = arc.endswith(".bin")
            info.compress_type = zipfile.ZIP_STORED if random_data else zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return path, metadata


def _build_pypi(corpus: Corpus, scale: Scale, rng: random.Random) -> None:
    files_host = f"http://127.0.0.1:{corpus.files_port}"
    simple = corpus.root / "pypi" / "simple"
    sizes = iter(scale.wheel_sizes * (scale.projects * scale.versions))
    for p in range(scale.projects):
        project = f"soak-proj{p:02d}"
        folder = corpus.root / "files" / "packages" / project
        folder.mkdir(parents=True)
        dists: list[Dist] = []
        for v in range(scale.versions):
            version = f"1.{v}"
            whl, metadata = _wheel(folder, project, version, _payload(rng, next(sizes)))
            (folder / (whl.name + ".metadata")).write_bytes(metadata)
            sdist = build_sdist(folder, project, version)
            for f, meta in ((whl, hashlib.sha256(metadata).hexdigest()), (sdist, None)):
                path = f"/files/packages/{project}/{f.name}"
                dists.append(Dist(project, f.name, path, _sha256(f), meta))
        corpus.projects[project] = dists
        page = simple / project
        page.mkdir(parents=True)
        (page / "index.html").write_text(_html_page(project, dists, files_host))
        (page / "index.json").write_text(_json_page(project, dists, files_host))
    links = "".join(f'    <a href="{p}/">{p}</a>\n' for p in corpus.projects)
    (simple / "index.html").write_text(
        "<!DOCTYPE html>\n<html>\n  <head>\n"
        '    <meta name="pypi:repository-version" content="1.1">\n'
        f"    <title>Simple index</title>\n  </head>\n  <body>\n{links}  </body>\n</html>\n"
    )


def _html_page(project: str, dists: list[Dist], host: str) -> str:
    lines = []
    for d in dists:
        attrs = [f'href="{host}{d.path}#sha256={d.sha256}"', 'data-requires-python="&gt;=3.8"']
        if d.metadata_sha256:
            attrs.append(f'data-dist-info-metadata="sha256={d.metadata_sha256}"')
            attrs.append(f'data-core-metadata="sha256={d.metadata_sha256}"')
        lines.append(f"    <a {' '.join(attrs)}>{html.escape(d.filename)}</a><br />\n")
    title = f"Links for {project}"
    return (
        "<!DOCTYPE html>\n<html>\n  <head>\n"
        '    <meta name="pypi:repository-version" content="1.1">\n'
        f"    <title>{title}</title>\n  </head>\n  <body>\n    <h1>{title}</h1>\n"
        f"{''.join(lines)}  </body>\n</html>\n"
    )


def _json_page(project: str, dists: list[Dist], host: str) -> str:
    files = []
    for d in dists:
        meta: dict[str, str] | bool = {"sha256": d.metadata_sha256} if d.metadata_sha256 else False
        files.append({
            "filename": d.filename,
            "url": f"{host}{d.path}",
            "hashes": {"sha256": d.sha256},
            "requires-python": ">=3.8",
            "core-metadata": meta,
            "dist-info-metadata": meta,
            "yanked": False,
        })  # fmt: skip
    versions = sorted({d.filename.split("-")[1].removesuffix(".tar.gz") for d in dists})
    doc = {"meta": {"api-version": "1.1"}, "name": project, "versions": versions, "files": files}
    return json.dumps(doc, indent=1) + "\n"


# -- tarballs --------------------------------------------------------------------------


def _build_tarballs(corpus: Corpus, scale: Scale, rng: random.Random) -> None:
    folder = corpus.root / "tarballs"
    folder.mkdir()
    sums = []
    for i, size in enumerate(scale.tarballs):
        name = f"soak-src{i:02d}-1.{i % 5}"
        path = folder / f"{name}.tar.gz"
        data = _payload(rng, size)
        with path.open("wb") as raw, gzip.GzipFile(
            filename="", fileobj=raw, mode="wb", compresslevel=1, mtime=0
        ) as gz, tarfile.open(fileobj=gz, mode="w") as tar:  # fmt: skip
            info = tarfile.TarInfo(f"{name}/payload.bin")
            info.size, info.mtime, info.mode = len(data), 1580601600, 0o644
            tar.addfile(info, io.BytesIO(data))
        corpus.tarballs.append(f"/tarballs/{path.name}")
        sums.append(f"{_sha256(path)}  {path.name}\n")
    (folder / "SHA256SUMS").write_text("".join(sums))
