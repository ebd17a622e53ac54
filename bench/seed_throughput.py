"""Seed bundle throughput: `seed export`, `seed verify` and `seed import` against `cp -r`.

Fills a temporary store with blobs of mixed sizes (a few big ones, many small
ones; 1 GiB by default), then times, on the same disk:

- `cp -r` of the store's `objects/` (and `cp -r` followed by `sync`, since the
  export fsyncs every file and cp does not),
- `seed export` of the whole store into a bundle,
- `seed verify` of that bundle,
- `seed import` of the bundle into an empty store,

and prints seconds and MB/s (10^6 bytes per second) for each. Use `--dir` to put
the work on the disk you care about (a USB stick for export, say), and
`--drop-caches` (root only) to start each step with a cold page cache.

    python bench/seed_throughput.py --size 1GiB --dir /var/tmp
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cachesrv.models import ArtifactKind, CacheKey, Entry  # noqa: E402
from cachesrv.seed import (  # noqa: E402
    ExportOptions,
    export_bundle,
    import_bundle,
    parse_size,
    verify_bundle,
)
from cachesrv.store import Store  # noqa: E402

MiB = 1 << 20


def blob_sizes(total: int, rng: random.Random) -> list[int]:
    """Half the bytes in four big blobs, the rest in small ones (1 KiB - 512 KiB,
    most of them small: a Debian pool or a wheelhouse looks like this)."""
    big = total // 2 // 4
    sizes = [big] * 4
    left = total - sum(sizes)
    while left > 0:
        n = min(left, int(min(512 * 1024, max(1024, rng.lognormvariate(10.5, 1.2)))))
        sizes.append(n)
        left -= n
    rng.shuffle(sizes)
    return sizes


def fill(store: Store, sizes: list[int], rng: random.Random) -> None:
    now = time.time()
    for i, size in enumerate(sizes):
        info = store.blobs.put_bytes(rng.randbytes(size))
        store.index.put(
            Entry(
                CacheKey("files", f"http://files.example/pool/{i:06d}.tar.gz"),
                info.digest,
                info.size,
                info.sha256,
                ArtifactKind.IMMUTABLE,
                recorded=now,
                validated=now,
            )
        )


def drop_caches() -> None:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as exc:
        sys.exit(f"--drop-caches: {exc.strerror} (needs root)")


def timed(label: str, nbytes: int, fn: Callable[[int], object], repeat: int, cold: bool) -> float:
    """Run `fn(attempt)` `repeat` times; print and return the median seconds."""
    runs = []
    for attempt in range(repeat):
        os.sync()  # whatever an earlier step left dirty is not this step's cost
        if cold:
            drop_caches()
        start = time.monotonic()
        fn(attempt)
        runs.append(time.monotonic() - start)
    seconds = statistics.median(runs)
    spread = f"  (runs: {', '.join(f'{r:.2f}' for r in runs)})" if repeat > 1 else ""
    print(f"  {label:<22} {seconds:7.2f} s {nbytes / 1e6 / seconds:8.1f} MB/s{spread}", flush=True)
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1GiB", help="total bytes of blobs (default 1GiB)")
    ap.add_argument("--dir", type=Path, default=None, help="work here (default: system temp)")
    ap.add_argument("--split-size", default=None, help="export with --split-size (e.g. 64MiB)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per step; the median counts")
    ap.add_argument("--seed", type=int, default=42, help="random seed for sizes and bytes")
    ap.add_argument("--drop-caches", action="store_true", help="cold page cache per run (root)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()

    total = parse_size(args.size)
    split = parse_size(args.split_size) if args.split_size else None
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="cachesrv-bench-", dir=args.dir))
    try:
        sizes = blob_sizes(total, rng)
        print(
            f"seed throughput: {len(sizes)} blobs, {total / MiB:.0f} MiB "
            f"(4 x {max(sizes) / MiB:.0f} MiB, median {sorted(sizes)[len(sizes) // 2]} B), "
            f"in {work}, {args.repeat} runs per step"
            + (", cold cache" if args.drop_caches else ", warm cache"),
            flush=True,
        )
        a = Store(work / "A")
        start = time.monotonic()
        fill(a, sizes, rng)
        a.index.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        print(f"  (filled store A in {time.monotonic() - start:.1f} s)", flush=True)

        def cp(n: int) -> None:
            subprocess.run(["cp", "-r", str(a.blobs.objects), str(work / f"cp{n}")], check=True)

        def cp_sync(n: int) -> None:
            cp(100 + n)
            os.sync()

        def export(n: int) -> None:
            export_bundle(a, work / f"bundle{n}", ExportOptions(split_size=split))

        def verify(n: int) -> None:
            verify_bundle(work / f"bundle{n}")

        def import_(n: int) -> None:
            b = Store(work / f"B{n}")
            try:
                import_bundle(b, work / f"bundle{n}")
                assert len(b.index.entries()) == len(sizes)
            finally:
                b.close()

        r, cold = args.repeat, args.drop_caches
        cp_plain = timed("cp -r objects/", total, cp, r, cold)
        cp_synced = timed("cp -r objects/ + sync", total, cp_sync, r, cold)
        steps = {
            "seed export": timed("seed export", total, export, r, cold),
            "seed verify": timed("seed verify", total, verify, r, cold),
            "seed import": timed("seed import", total, import_, r, cold),
        }
        a.close()
        print(
            "  time relative to cp -r (+ sync): "
            + ", ".join(f"{k} {v / cp_plain:.1f}x ({v / cp_synced:.1f}x)" for k, v in steps.items())
        )
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
