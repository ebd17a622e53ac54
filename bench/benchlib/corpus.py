"""The benchmark corpus: seeded, deterministic files under Debian pool paths.

Each file's bytes come from SHAKE-256 of (seed, path): a 1 MiB base block, then
for each further MiB the same block rotated by a file-specific step with the block
number in its first 8 bytes. Every file differs from every other (a store that
deduplicates by content stores each one), nothing compresses, and generation runs at
disk speed. A manifest (sizes and sha256) lets a later run reuse the files.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

MiB = 1 << 20
KiB = 1 << 10
BLOCK = MiB


@dataclass(frozen=True)
class Spec:
    """How many files of which size; the seed makes the content."""

    big_count: int
    big_size: int
    mid_count: int
    mid_size: int
    small_count: int
    small_size: int
    seed: str = "cachesrv-bench-1"


FULL = Spec(1, 512 * MiB, 20, 20 * MiB, 2000, 16 * KiB)
QUICK = Spec(1, 64 * MiB, 4, 4 * MiB, 300, 16 * KiB)


@dataclass(frozen=True)
class File:
    path: str  # relative, e.g. pool/main/s/s0001/s0001_1.0_all.deb
    size: int
    sha256: str
    kind: str  # big | mid | small


@dataclass
class Corpus:
    root: Path
    spec: Spec
    files: list[File]

    def of(self, kind: str) -> list[File]:
        return [f for f in self.files if f.kind == kind]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def pool_path(letter: str, n: int) -> str:
    name = f"{letter}{n:04d}"
    return f"pool/main/{letter}/{name}/{name}_1.0_all.deb"


def _plan(spec: Spec) -> list[tuple[str, int, str]]:
    plan = [(pool_path("b", i + 1), spec.big_size, "big") for i in range(spec.big_count)]
    plan += [(pool_path("m", i + 1), spec.mid_size, "mid") for i in range(spec.mid_count)]
    plan += [(pool_path("s", i + 1), spec.small_size, "small") for i in range(spec.small_count)]
    return plan


def write_file(path: Path, rel: str, size: int, seed: str) -> str:
    """Write `size` seeded bytes for `rel` to `path` (atomically); return their sha256."""
    base = hashlib.shake_256(f"{seed}\0{rel}".encode()).digest(min(size, BLOCK))
    step = 1 + int.from_bytes(base[:4], "little") % (len(base) - 1 or 1)
    h = hashlib.sha256()
    tmp = path.with_name(path.name + ".part")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tmp.open("wb") as f:
        written = 0
        i = 0
        while written < size:
            k = (i * step) % len(base)
            block = i.to_bytes(8, "little") + base[k:] + base[:k]
            block = block[: min(len(base), size - written)]
            f.write(block)
            h.update(block)
            written += len(block)
            i += 1
    os.replace(tmp, path)
    return h.hexdigest()


def ensure(root: Path, spec: Spec, log: Callable[[str], object] = print) -> Corpus:
    """The corpus under `root`, generated unless a matching manifest says it is there."""
    manifest = root / "manifest.json"
    plan = _plan(spec)
    if manifest.exists():
        try:
            data = json.loads(manifest.read_text())
            files = [File(**f) for f in data["files"]]
            if data["spec"] == asdict(spec) and all(
                (root / f.path).is_file() and (root / f.path).stat().st_size == f.size
                for f in files
            ):
                return Corpus(root, spec, files)
        except (OSError, ValueError, KeyError, TypeError):
            pass
    total = sum(size for _, size, _ in plan)
    log(f"generating corpus in {root}: {len(plan)} files, {total / MiB:.0f} MiB ...")
    root.mkdir(parents=True, exist_ok=True)
    manifest.unlink(missing_ok=True)
    files = [
        File(rel, size, write_file(root / rel, rel, size, spec.seed), kind)
        for rel, size, kind in plan
    ]
    manifest.write_text(
        json.dumps({"spec": asdict(spec), "files": [asdict(f) for f in files]}, indent=0)
    )
    return Corpus(root, spec, files)
