"""Seed bundles that have been damaged or made hostile (cachesrv/seed/: bundle.py,
reader.py, importer.py): `seed import` takes exactly what verifies, or refuses with a
SeedError, and never writes outside its store; the parsers of a bundle's metadata and
manifest lines raise only ValueError.

Each example copies one real exported bundle (several objects, one split in pieces, an
empty one, a duplicate body, a mutable entry in a seed, an SBOM), damages it in a few
random ways, and imports it into a new store with the Python API the CLI calls.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
import stat
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import blake3
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cachesrv.errors import SeedError
from cachesrv.fsck import fsck
from cachesrv.models import ArtifactKind, CacheKey, Digest, Entry
from cachesrv.seed import ExportOptions, export_bundle, import_bundle, parse_size, verify_bundle
from cachesrv.seed.bundle import MIN_SPLIT, entry_line, parse_entry, parse_metadata
from cachesrv.store import Store

#: Each example copies a bundle, opens a store and imports (about 30 ms, syncs included).
EXAMPLES = settings().max_examples
#: A reader blocked this long on a FIFO is taken to hang (the FIFO is then opened for
#: writing and closed, so it reads an end of file and the example can finish).
HANG = 1.0
#: JSON nested deeper than Python's recursion limit (json.loads: RecursionError).
DEEP = b"[" * 2000 + b"]" * 2000
#: Seconds an import of this small bundle may take, however hostile.
SLOW = 20.0

MANIFEST = "manifest.jsonl"
METADATA = "cachesrv-seed.json"
TOP_FILES = (MANIFEST, METADATA, "sbom.cdx.json", "cachesrv-seed.sig")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle exported from a real store, split at 64 KiB."""
    root = tmp_path_factory.mktemp("pristine")
    store = Store(root / "store")
    rng = random.Random(15)  # fixed bodies: the same object names in every run
    small = rng.randbytes(5_000)
    bodies = {
        "http://deb.example/debian/pool/main/h/hello/hello_1.0_amd64.deb": rng.randbytes(150_000),
        "http://files.example/a.tar.gz": small,
        "http://files.example/copy-of-a.tar.gz": small,
        "http://files.example/empty.tar.gz": b"",
        "http://deb.example/debian/dists/stable/InRelease": b"Origin: Debian\n",
    }
    for url, body in bodies.items():
        info = store.blobs.put_bytes(body)
        mutable = url.endswith("InRelease")
        store.index.put(
            Entry(
                CacheKey("debian" if "deb." in url else "files", url),
                info.digest,
                info.size,
                info.sha256,
                ArtifactKind.MUTABLE if mutable else ArtifactKind.IMMUTABLE,
                content_type="application/octet-stream",
                etag='"e1"' if mutable else None,
                recorded=1_700_000_000.0,
                validated=1_700_000_000.0,
            )
        )
        if "deb." in url:
            store.index.add_to_seed("build-1", url)
    export_bundle(store, root / "bundle", ExportOptions(split_size=MIN_SPLIT))
    store.close()
    return root / "bundle"


# -- damage ---------------------------------------------------------------------------

#: Values a hostile manifest or metadata may hold where a name, digest, size or text is
#: expected: traversal, absolute paths, names of other objects, wrong types.
HOSTILE_TEXT = (
    *("../x", "../../escape", "WORK/escape", "..", ".", "", "objects/../..", "x/../../y"),
    *("a" * 64, "A" * 64, "0" * 64, "f" * 63, "g" * 64, "\x00" * 64, "é" * 64),
    *("http://files.example/a.tar.gz", "http://x/\r\nSet-Cookie: a", "C:\\x", "~/.ssh"),
)
json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=6,
)
hostile = st.one_of(
    st.sampled_from(HOSTILE_TEXT),
    st.sampled_from((-1, 0, 1, 2**63, 10**18, 1.5, True, None, [], {})),
    json_value,
)
ENTRY_FIELDS = (
    *("key", "upstream", "digest", "size", "sha256", "kind", "content_type", "etag"),
    *("last_modified", "recorded", "validated", "seeds", "in_bundle", "path"),
)
META_FIELDS = (
    *("format", "version", "entries", "objects", "bytes", "split_size"),
    *("manifest_blake3", "sbom_blake3", "selection", "created"),
)


def _files(bundle: Path) -> list[Path]:
    """The object files of a bundle (plain files under objects/), in name order."""
    found = []
    for dirpath, _, filenames in os.walk(bundle / "objects"):
        found += [Path(dirpath) / n for n in filenames]
    return sorted(p for p in found if p.is_file() and not p.is_symlink())


def _pick(items: list[Path], i: int) -> Path | None:
    return items[i % len(items)] if items else None


def _lines(bundle: Path) -> list[dict[str, Any]] | None:
    """The manifest's entries, if it is still a file of JSON objects."""
    path = bundle / MANIFEST
    if not path.is_file():  # a FIFO (from an earlier damage) would block
        return None
    try:
        lines = [json.loads(x) for x in path.read_text().splitlines()]
    except (ValueError, RecursionError):
        return None
    return lines if all(isinstance(x, dict) for x in lines) else None


def _write_manifest(bundle: Path, data: bytes, resign: bool) -> None:
    path = bundle / MANIFEST
    if path.is_symlink() or (path.exists() and not path.is_file()):
        return
    path.write_bytes(data)
    if resign:  # so that only the edit is wrong, not the manifest's digest
        _edit_metadata(bundle, "manifest_blake3", blake3.blake3(data).hexdigest())


def _edit_metadata(bundle: Path, name: str, value: object) -> None:
    path = bundle / METADATA
    try:
        meta = json.loads(path.read_text()) if path.is_file() and not path.is_symlink() else None
    except (OSError, ValueError):
        return
    if isinstance(meta, dict):
        meta[name] = value
        path.write_text(json.dumps(meta))


# Each damage is a tuple: its name, then what it needs. Files are chosen by an index
# into a sorted list (modulo its length), so an example stays the same damage across
# runs (the pristine bundle's bodies are fixed).
index = st.integers(0, 20)
name_text = st.text(
    st.characters(codec="ascii", exclude_characters="/\x00"), min_size=1, max_size=8
)
resign = st.booleans()
damage = st.one_of(
    st.tuples(st.just("flip byte"), index, st.integers(0, 10**6), st.integers(1, 255)),
    st.tuples(st.just("truncate"), index, st.integers(0, 10**6)),
    st.tuples(st.just("append"), index, st.binary(min_size=1, max_size=10)),
    st.tuples(st.just("remove"), index),
    st.tuples(
        st.just("rename"),
        index,
        st.one_of(
            index,  # another object's name
            st.sampled_from(("a" * 64, "b" * 64 + ".part000", "+.part001")),
            name_text,
        ),
        st.booleans(),  # into another fanout directory
    ),
    st.tuples(st.just("symlink"), index),
    st.tuples(st.just("fifo"), index),
    st.tuples(
        st.just("stray"),
        index,
        st.sampled_from(("ab", "a" * 64, "zz", "objects", ".hidden", "manifest.jsonl")) | name_text,
        st.none() | st.binary(max_size=20),  # None: a directory
    ),
    st.tuples(
        st.just("edit entry"),
        index,
        st.sampled_from(ENTRY_FIELDS),
        hostile | st.just(...),  # the new value (...: that of the line below)
        index,  # another line
        st.booleans(),  # the field removed instead
        resign,
    ),
    st.tuples(
        st.just("reorder"), st.sampled_from(("duplicate", "drop", "swap")), index, index, resign
    ),
    st.tuples(
        st.just("raw manifest"),
        st.sampled_from(("replace", "cut", "extend")),
        st.binary(max_size=200),
        st.integers(0, 10**4),
        resign,
    ),
    st.tuples(
        st.just("edit metadata"),
        st.sampled_from(META_FIELDS),
        hostile | st.sampled_from((1, 2, 64 << 10, "cachesrv-seed")),
    ),
    st.tuples(st.just("raw metadata"), st.none() | st.binary(max_size=200)),
    st.tuples(
        st.just("signature"),
        json_value | st.just({"algorithm": "ed25519", "signature": "AAAA"}) | st.binary(),
    ),
)


def damage_bundle(work: Path, bundle: Path, how: tuple[Any, ...]) -> list[Path]:
    """Apply one damage; returns the FIFOs it made."""
    what, *args = how
    files = _files(bundle)
    if what in ("flip byte", "truncate", "append", "remove", "rename"):
        victim = _pick(files, args[0])
        if victim is None:
            return []
        data = victim.read_bytes()
        if what == "flip byte" and data:
            i = args[1] % len(data)
            victim.write_bytes(data[:i] + bytes([data[i] ^ args[2]]) + data[i + 1 :])
        elif what == "truncate":
            victim.write_bytes(data[: args[1] % (len(data) + 1)] if data else data)
        elif what == "append":
            victim.write_bytes(data + args[1])
        elif what == "remove":
            victim.unlink()
        elif what == "rename":
            target = args[1]
            name = _pick(files, target).name if isinstance(target, int) else target  # type: ignore[union-attr]
            where = bundle / "objects" / "ab" if args[2] else victim.parent
            if name not in (".", ".."):
                where.mkdir(exist_ok=True)
                os.replace(victim, where / name)
        return []
    if what in ("symlink", "fifo"):
        # An object, a fanout directory, objects/ or a top file: replaced by a link to a
        # copy outside the bundle (same bytes, only the link is wrong), or by a FIFO (a
        # reader that opens it without care blocks for ever).
        choices = [*files, *(bundle / n for n in TOP_FILES)]
        if what == "symlink":
            choices += [*sorted((bundle / "objects").glob("*")), bundle / "objects"]
        victim = _pick(choices, args[0])
        if victim is None or victim.is_symlink() or (what == "fifo" and victim.is_dir()):
            return []
        if what == "fifo":
            victim.unlink(missing_ok=True)
            os.mkfifo(victim)
            return [victim]
        outside = work / f"outside-{victim.name}"
        if victim.exists() and not outside.exists():
            shutil.move(victim, outside)
            victim.symlink_to(outside, target_is_directory=outside.is_dir())
        return []
    if what == "stray":
        dirs = [bundle, bundle / "objects", *sorted((bundle / "objects").glob("*"))]
        into = _pick([d for d in dirs if d.is_dir() and not d.is_symlink()], args[0])
        name, content = args[1], args[2]
        if into is None or name in (".", "..") or os.path.lexists(into / name):
            return []
        if content is None:
            (into / name).mkdir()
        else:
            (into / name).write_bytes(content)
        return []
    if what in ("edit entry", "reorder"):
        lines = _lines(bundle)
        if not lines:
            return []
        if what == "edit entry":
            i, name, value, other, remove, again = args
            line = lines[i % len(lines)]
            if value is ...:
                value = lines[other % len(lines)].get(name)
            if remove:
                line.pop(name, None)
            else:
                line[name] = value.replace("WORK", str(work)) if isinstance(value, str) else value
        else:
            how_, i, j, again = args
            i, j = i % len(lines), j % len(lines)
            if how_ == "duplicate":
                lines.insert(j, dict(lines[i]))
            elif how_ == "drop":
                del lines[i]
            else:
                lines[i]["digest"], lines[j]["digest"] = (
                    lines[j].get("digest"),
                    lines[i].get("digest"),
                )
        _write_manifest(bundle, "".join(json.dumps(x) + "\n" for x in lines).encode(), again)
        return []
    if what == "raw manifest":
        mode, data, n, again = args
        path = bundle / MANIFEST
        old = path.read_bytes() if path.is_file() and not path.is_symlink() else b""
        new = {"replace": data, "cut": old[: n % (len(old) + 1)], "extend": old + data}[mode]
        _write_manifest(bundle, new, again)
        return []
    if what == "edit metadata":
        _edit_metadata(bundle, args[0], args[1])
        return []
    path = bundle / (METADATA if what == "raw metadata" else "cachesrv-seed.sig")
    if path.is_symlink() or (path.exists() and not path.is_file()):
        return []
    if what == "raw metadata":
        path.unlink(missing_ok=True)
        if args[0] is not None:
            path.write_bytes(args[0])
    else:
        path.write_bytes(args[0] if isinstance(args[0], bytes) else json.dumps(args[0]).encode())
    return []


# -- watching --------------------------------------------------------------------------


def tree(root: Path, skip: Path) -> dict[str, str]:
    """Every path under `root` (but `skip`) with what it is: a file's sha256, a link's
    target, a directory, or another kind."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if here / d != skip]
        for name in dirnames + filenames:
            path = here / name
            st_ = path.lstat()
            if stat.S_ISLNK(st_.st_mode):
                what = f"link to {os.readlink(path)}"
            elif stat.S_ISREG(st_.st_mode):
                what = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                what = f"mode {stat.S_IFMT(st_.st_mode):o}"
            found[str(path.relative_to(root))] = what
    return found


class HangWatch:
    """After `HANG` seconds, opens each FIFO for writing and closes it: a reader blocked
    in open() or read() then sees an end of file. Any FIFO it could open was being
    read, which no reader of a bundle must do."""

    def __init__(self, fifos: list[Path]) -> None:
        self.fifos = fifos
        self.hung: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(HANG):
            for fifo in self.fifos:
                try:
                    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                except OSError as exc:
                    if exc.errno in (errno.ENXIO, errno.ENOENT):
                        continue  # nobody reading it
                    raise
                os.close(fd)
                self.hung.append(fifo.name)

    def __enter__(self) -> HangWatch:
        if self.fifos:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.fifos:
            self._thread.join()


def check_store(store: Store) -> None:
    """Every entry's blob is there and hashes to its name, with the size and sha256
    the index says; fsck finds nothing corrupt or missing."""
    for entry in store.index.entries():
        path = store.blobs.path(entry.digest)
        data = path.read_bytes()
        assert blake3.blake3(data).hexdigest() == entry.digest.hex, entry.key.url
        assert len(data) == entry.size, entry.key.url
        assert hashlib.sha256(data).hexdigest() == entry.sha256, entry.key.url
    report = fsck(store)
    assert not report.corrupt and not report.missing, report.summary()


@settings(max_examples=EXAMPLES)
@given(damages=st.lists(damage, min_size=1, max_size=3))
@example(damages=[("fifo", 1)])  # an object piece: read ahead
@example(damages=[("fifo", 8)])  # the SBOM
@example(damages=[("fifo", 9)])  # the signature
@example(damages=[("raw manifest", "replace", DEEP, 0, True)])
@example(damages=[("raw metadata", DEEP)])
@example(damages=[("signature", DEEP)])
@example(  # 10^18 bytes in pieces of one byte: read ahead name by name (400 s)
    damages=[("edit metadata", "split_size", 1), ("edit entry", 1, "size", 10**18, 0, False, True)]
)
def test_import_takes_what_verifies_or_refuses(
    pristine: Path, damages: list[tuple[Any, ...]]
) -> None:
    """A bundle damaged in 1-3 random ways (bytes of an object flipped, cut or added;
    objects removed or renamed; symlinks and FIFOs for files and directories; stray
    files; manifest entries and metadata fields set to hostile values (`../x`, absolute
    paths, other digests, wrong types), duplicated, dropped or re-signed; random
    manifest, metadata or signature bytes) is either imported exactly as `seed verify`
    reads it, or refused with a SeedError that lists problems, leaving the store as it
    was. Either way: no other exception, no read that blocks (a FIFO), no time spent on
    sizes the bundle only claims, nothing written outside the store (the bundle and
    everything beside it unchanged), and every blob in the store hashes to its name."""
    with tempfile.TemporaryDirectory(prefix="cachesrv-prop-") as tmp:
        damage_and_import(pristine, Path(tmp), damages)


def damage_and_import(pristine: Path, work: Path, damages: list[tuple[Any, ...]]) -> None:
    bundle = work / "bundle"
    shutil.copytree(pristine, bundle)
    fifos = [f for how in damages for f in damage_bundle(work, bundle, how)]
    store_root = work / "store"
    before = tree(work, skip=store_root)
    store = Store(store_root)
    try:
        with HangWatch(fifos) as watch:
            start = time.monotonic()
            try:
                report = import_bundle(store, bundle)
            except SeedError as exc:
                report = None
                assert exc.problems or "refused" in str(exc) or "cannot" in str(exc), exc
                assert store.index.entries() == [] and list(store.blobs.iter_digests()) == []
            took = time.monotonic() - start
            verified = _verifies(bundle)
        assert not watch.hung, f"a read blocked on the FIFO {watch.hung}"
        # A few hundred KiB: whatever sizes the manifest claims, that is quick.
        assert took < SLOW, f"import took {took:.0f} s"
        assert tree(work, skip=store_root) == before, "written outside the store"
        check_store(store)
        if report is not None:
            # Exactly what verifies: the same entries, blobs the bundle ships.
            assert verified is not None, "imported a bundle that seed verify refuses"
            got = sorted((e.key.url, e.digest.hex) for e in store.index.entries())
            assert got == sorted((e.key.url, e.digest.hex) for e in verified)
        else:
            assert verified is None, "refused a bundle that seed verify accepts"
    finally:
        store.close()


def _verifies(bundle: Path) -> list[Entry] | None:
    try:
        return verify_bundle(bundle).bundle.entries
    except SeedError:
        return None


# -- the parsers alone ------------------------------------------------------------------------


def _good_line() -> dict[str, Any]:
    entry = Entry(
        CacheKey("files", "http://files.example/a.tar.gz"),
        Digest("a" * 64),
        5,
        "b" * 64,
        ArtifactKind.IMMUTABLE,
        content_type="application/gzip",
        recorded=1.0,
        validated=1.0,
    )
    return json.loads(entry_line(entry, True))  # type: ignore[no-any-return]


GOOD_META = {
    "format": "cachesrv-seed",
    "version": 1,
    "entries": 1,
    "objects": 1,
    "bytes": 5,
    "split_size": None,
    "manifest_blake3": "c" * 64,
    "selection": {},
}


def near_valid(good: dict[str, Any], fields: tuple[str, ...]) -> st.SearchStrategy[bytes]:
    """A valid document with a few fields replaced, removed or added, as JSON bytes."""

    def edit(changes: list[tuple[str, object]]) -> bytes:
        doc = dict(good)
        for name, value in changes:
            if value is ...:
                doc.pop(name, None)
            else:
                doc[name] = value
        return json.dumps(doc).encode()

    field_name = st.sampled_from(fields) | st.text(max_size=5)
    return st.lists(st.tuples(field_name, hostile | st.just(...)), max_size=3).map(edit)


document = st.one_of(
    st.binary(max_size=300),
    json_value.map(lambda v: json.dumps(v).encode()),
    st.text(max_size=100).map(str.encode),
    st.integers(5, 2000).map(lambda n: b"[" * n + b"]" * n),  # nested up to DEEP
)


@settings(max_examples=settings().max_examples * 2)
@given(raw=st.one_of(document, near_valid(_good_line(), ENTRY_FIELDS)))
@example(raw=DEEP)
def test_manifest_lines_parse_or_raise_value_error(raw: bytes) -> None:
    """`parse_entry` on any bytes returns an entry whose digest and sha256 are 64
    lowercase hex characters and whose key is an http(s) URL, or raises ValueError."""
    try:
        entry, in_bundle = parse_entry(raw)
    except ValueError:
        return
    assert len(entry.digest.hex) == 64 and set(entry.digest.hex) <= set("0123456789abcdef")
    assert entry.key.url.startswith(("http://", "https://")) and isinstance(in_bundle, bool)


@settings(max_examples=settings().max_examples * 2)
@given(raw=st.one_of(document, near_valid(GOOD_META, META_FIELDS)))
@example(raw=DEEP)
def test_metadata_parses_or_raises_value_error(raw: bytes) -> None:
    """`parse_metadata` on any bytes returns counts that are non-negative integers and a
    split size that is None or positive, or raises ValueError (UnsupportedBundle is one)."""
    try:
        meta = parse_metadata(raw)
    except ValueError:
        return
    assert min(meta.entries, meta.objects, meta.bytes) >= 0
    assert meta.split_size is None or meta.split_size >= 1


@given(
    text=st.text(max_size=20)
    | st.builds(
        "{}{}{}".format,
        st.integers(0, 10**400).map(str),  # more digits than a float holds
        st.sampled_from(("", ".5", ".25")),
        st.sampled_from(("", "K", "MiB", "GB", " T", "t", "Gi")),
    )
)
@example(text="9" * 400)
def test_sizes_parse_or_raise_value_error(text: str) -> None:
    """`parse_size` (`--split-size`) returns a non-negative number of bytes or raises
    ValueError."""
    try:
        size = parse_size(text)
    except ValueError:
        return
    assert isinstance(size, int) and size >= 0
