"""Seed bundles through the store API: round trip, delta, split, resume, hostile bundles.

Stores are filled with the store API (fast); the command line is driven as a user
would (`run_cli`) where its output is the point. tests/test_seed_serve.py records
through a real server and serves the imported store offline.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import blake3
import pytest

from cachesrv.errors import SeedError
from cachesrv.models import ArtifactKind, CacheKey, Entry
from cachesrv.seed import (
    ExportOptions,
    export_bundle,
    import_bundle,
    importer,
    parse_size,
    verify_bundle,
    write_inventory,
)
from cachesrv.store import Store
from tests.conftest import run_cli

MiB = 1 << 20


# -- helpers ---------------------------------------------------------------------


def record(
    store: Store,
    url: str,
    body: bytes,
    *,
    kind: ArtifactKind = ArtifactKind.IMMUTABLE,
    recorded: float | None = None,
    seeds: tuple[str, ...] = (),
    etag: str | None = None,
) -> Entry:
    """Put an entry in a store as the proxy would after recording it."""
    info = store.blobs.put_bytes(body)
    when = time.time() if recorded is None else recorded
    entry = Entry(
        CacheKey("files", url),
        info.digest,
        info.size,
        info.sha256,
        kind,
        content_type="application/gzip",
        etag=etag,
        last_modified="Mon, 02 Nov 2026 10:00:00 GMT",
        recorded=when,
        validated=when,
    )
    store.index.put(entry)
    for s in seeds:
        store.index.add_to_seed(s, url)
    return entry


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[Callable[[str], Store]]:
    """Open stores under tmp_path by name; all are closed at teardown."""
    opened: list[Store] = []

    def make(name: str) -> Store:
        st = Store(tmp_path / name)
        opened.append(st)
        return st

    yield make
    for st in opened:
        st.close()


def snapshot(root: Path) -> dict[str, object]:
    """Every file of a store with its hash, and every row of its index."""
    files = {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith("index.sqlite")
    }
    db = sqlite3.connect(f"file:{root / 'index.sqlite'}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        rows = {t: sorted(map(repr, db.execute(f"SELECT * FROM {t}"))) for t in sorted(tables)}
    finally:
        db.close()
    return {"files": files, "rows": rows}


def seed_map(store: Store) -> dict[str, list[str]]:
    return {r["name"]: store.index.seed_keys(r["name"]) for r in store.index.seeds()}


def object_files(bundle: Path) -> list[Path]:
    return sorted(p for p in (bundle / "objects").rglob("*") if p.is_file())


def rewrite_manifest(bundle: Path, edit: Callable[[list[dict[str, object]]], None]) -> None:
    """Edit the manifest and re-sign it in the metadata, so only the edit is wrong."""
    manifest = bundle / "manifest.jsonl"
    lines = [json.loads(x) for x in manifest.read_text().splitlines()]
    edit(lines)
    data = "".join(json.dumps(x) + "\n" for x in lines).encode()
    manifest.write_bytes(data)
    edit_metadata(bundle, manifest_blake3=blake3.blake3(data).hexdigest())


def edit_metadata(bundle: Path, **changes: object) -> None:
    path = bundle / "cachesrv-seed.json"
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))


def fill_a(a: Store) -> dict[str, bytes]:
    """A small store: immutable files, a mutable one, a duplicate body, an empty one."""
    bodies = {
        "http://deb.example/debian/pool/main/h/hello/hello_1.0_amd64.deb": os.urandom(200_000),
        "http://deb.example/debian/pool/main/h/hello/hello_1.0.tar.gz": os.urandom(50_000),
        "http://files.example/empty.tar.gz": b"",
        "http://files.example/dup-of-tarball.tar.gz": b"",
    }
    bodies["http://files.example/dup-of-tarball.tar.gz"] = bodies[
        "http://deb.example/debian/pool/main/h/hello/hello_1.0.tar.gz"
    ]
    for url, body in bodies.items():
        record(a, url, body, seeds=("build-1",) if "hello" in url else ())
    url = "http://deb.example/debian/dists/stable/InRelease"
    bodies[url] = b"Origin: Debian\n"
    record(a, url, bodies[url], kind=ArtifactKind.MUTABLE, etag='"abc"', seeds=("build-1",))
    return bodies


# -- round trip ------------------------------------------------------------------


def test_export_import_round_trip_is_identical(
    tmp_path: Path, stores: Callable[[str], Store]
) -> None:
    a, b = stores("A"), stores("B")
    bodies = fill_a(a)
    bundle = tmp_path / "usb" / "seed"
    report = export_bundle(a, bundle, ExportOptions())
    assert (report.entries, report.objects, report.written) == (5, 4, 4)
    # Every name is plain lowercase hex and dots: safe on FAT32 and exFAT.
    for p in bundle.rglob("*"):
        assert re.fullmatch(r"[0-9a-z.-]{1,255}", p.name), p.name
    meta = json.loads((bundle / "cachesrv-seed.json").read_text())
    manifest = (bundle / "manifest.jsonl").read_bytes()
    assert meta["format"] == "cachesrv-seed" and meta["version"] == 1
    assert meta["entries"] == 5 and meta["objects"] == 4
    assert meta["bytes"] == 200_000 + 50_000 + 15 + 0
    assert meta["manifest_blake3"] == blake3.blake3(manifest).hexdigest()
    assert meta["source_host"] and meta["created"].endswith("Z")

    assert verify_bundle(bundle).summary().startswith("seed verify: OK: 5 entries, 4 objects")
    imported = import_bundle(b, bundle)
    assert len(imported.new) == 5 and imported.objects == 4 and imported.changed

    assert b.index.entries() == a.index.entries()
    assert seed_map(b) == seed_map(a) == {"build-1": sorted(k for k in bodies if "deb." in k)}
    for e in b.index.entries():
        assert b.blobs.path(e.digest).read_bytes() == bodies[e.key.url]
        assert b.index.blob(e.digest) == a.index.blob(e.digest)
    assert list(b.blobs.tmp.iterdir()) == []


def test_second_import_changes_nothing_and_says_so(
    tmp_path: Path, stores: Callable[[str], Store]
) -> None:
    a = stores("A")
    fill_a(a)
    bundle = tmp_path / "bundle"
    export_bundle(a, bundle, ExportOptions())
    run_cli("seed", "import", "--store", tmp_path / "B", bundle)
    before = snapshot(tmp_path / "B")
    again = run_cli("seed", "import", "--store", tmp_path / "B", bundle)
    assert "nothing to do" in again.stdout
    assert snapshot(tmp_path / "B") == before


def test_dry_run_reports_and_changes_nothing(
    tmp_path: Path, stores: Callable[[str], Store]
) -> None:
    a, b = stores("A"), stores("B")
    fill_a(a)
    record(b, "http://files.example/other.tar.gz", b"already here")
    bundle = tmp_path / "bundle"
    export_bundle(a, bundle, ExportOptions())
    before = snapshot(b.root)
    r = run_cli("seed", "import", "--dry-run", "--store", b.root, bundle)
    assert r.stdout.count("would add ") == 5
    assert "would link " in r.stdout and "would import 4 objects" in r.stdout
    assert snapshot(b.root) == before


def test_objects_already_in_the_store_are_not_copied_again(
    tmp_path: Path, stores: Callable[[str], Store]
) -> None:
    a, b = stores("A"), stores("B")
    bodies = fill_a(a)
    bundle = tmp_path / "bundle"
    export_bundle(a, bundle, ExportOptions())
    # An import interrupted after two blobs: they are in B, unindexed.
    b.blobs.put_bytes(bodies["http://deb.example/debian/pool/main/h/hello/hello_1.0_amd64.deb"])
    b.blobs.put_bytes(b"")
    report = import_bundle(b, bundle)
    assert (report.present, report.objects) == (2, 2)
    assert b.index.entries() == a.index.entries()


def test_import_resumes_from_staged_blobs_but_rechecks_them(
    tmp_path: Path, stores: Callable[[str], Store]
) -> None:
    """An interrupted import leaves verified blobs staged in tmp/ (seed-<digest>);
    the next one reuses them after re-hashing, and re-copies a staged file that
    does not hash right."""
    a, b = stores("A"), stores("B")
    good = record(a, "http://files.example/good.tar.gz", os.urandom(10_000))
    spoiled = record(a, "http://files.example/spoiled.tar.gz", os.urandom(10_000))
    bundle = tmp_path / "bundle"
    export_bundle(a, bundle, ExportOptions())
    (b.blobs.tmp / f"seed-{good.digest}").write_bytes(a.blobs.path(good.digest).read_bytes())
    (b.blobs.tmp / f"seed-{spoiled.digest}").write_bytes(os.urandom(10_000))
    # The bundle's copy of `good` is damaged: a reused staged blob is not read again.
    _flip_byte(bundle, bundle / "objects" / good.digest.fanout / good.digest.hex)
    report = import_bundle(b, bundle)
    assert report.objects == 2
    assert b.blobs.verify(good.digest) and b.blobs.verify(spoiled.digest)
    assert list(b.blobs.tmp.iterdir()) == []


def test_import_synced_in_many_batches_is_still_all_or_nothing(
    tmp_path: Path, stores: Callable[[str], Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Staged objects are synced and named seed-<digest> a batch at a time (here one
    object a batch); a bad object after good ones still leaves the store as it was."""
    monkeypatch.setattr(importer, "SYNC_BYTES", 1)
    a, b = stores("A"), stores("B")
    bodies = fill_a(a)
    bundle = tmp_path / "bundle"
    export_bundle(a, bundle, ExportOptions())
    # Objects are staged in digest order: spoil the last one that has a byte.
    last = [p for p in object_files(bundle) if p.stat().st_size][-1]
    _flip_byte(bundle, last)
    before = snapshot(b.root)
    with pytest.raises(SeedError, match="bad seed bundle"):
        import_bundle(b, bundle)
    assert snapshot(b.root) == before
    _flip_byte(bundle, last)
    import_bundle(b, bundle)
    assert b.index.entries() == a.index.entries()
    for e in b.index.entries():
        assert b.blobs.path(e.digest).read_bytes() == bodies[e.key.url]
    assert list(b.blobs.tmp.iterdir()) == []


# -- delta ---------------------------------------------------------------------------


def test_missing_from_exports_exactly_the_new_objects(
    tmp_path: Path, stores: Callable[[str], Store]
) -> None:
    a, b = stores("A"), stores("B")
    bodies = fill_a(a)
    export_bundle(a, tmp_path / "full", ExportOptions())
    import_bundle(b, tmp_path / "full")

    # More happens at A: two new files, a new URL for a body B has, a newer
    # InRelease, and an old entry joins a new seed.
    new1 = record(a, "http://files.example/new-1.tar.gz", os.urandom(70_000))
    new2 = record(a, "http://files.example/new-2.tar.gz", os.urandom(1000), seeds=("build-2",))
    record(a, "http://mirror.example/hello_1.0.tar.gz", bodies[next(iter(bodies))])
    release = record(
        a,
        "http://deb.example/debian/dists/stable/InRelease",
        b"Origin: Debian\nDate: later\n",
        kind=ArtifactKind.MUTABLE,
        seeds=("build-1",),
    )
    a.index.add_to_seed("build-2", "http://files.example/empty.tar.gz")

    inventory = tmp_path / "b-inventory.json"
    run_cli("seed", "inventory", "--store", b.root, "-o", inventory)
    delta = tmp_path / "delta"
    r = run_cli("seed", "export", "--store", a.root, "--missing-from", inventory, delta)
    assert "5 entries, 3 objects" in r.stdout
    shipped = {p.name for p in object_files(delta)}
    assert shipped == {new1.digest.hex, new2.digest.hex, release.digest.hex}
    assert json.loads((delta / "cachesrv-seed.json").read_text())["objects"] == 3

    report = import_bundle(b, delta)
    assert (len(report.new), len(report.updated), report.objects) == (3, 1, 3)
    assert b.index.entries() == a.index.entries()
    assert seed_map(b) == seed_map(a)
    # Now B lacks nothing: the next delta is empty.
    write_inventory(b, inventory)
    again = export_bundle(a, tmp_path / "delta2", ExportOptions(missing_from=inventory))
    assert (again.entries, again.objects) == (0, 0)


def test_since_exports_only_recent_entries(tmp_path: Path, stores: Callable[[str], Store]) -> None:
    a, b = stores("A"), stores("B")
    record(a, "http://files.example/old.tar.gz", b"old", recorded=time.time() - 10 * 86400)
    recent = record(a, "http://files.example/recent.tar.gz", b"recent")
    r = run_cli("seed", "export", "--store", a.root, "--since", "2d", tmp_path / "bundle")
    assert "1 entries, 1 objects" in r.stdout
    import_bundle(b, tmp_path / "bundle")
    assert b.index.entries() == [recent]


def test_seed_option_exports_named_seeds_only(
    tmp_path: Path, stores: Callable[[str], Store]
) -> None:
    a, b = stores("A"), stores("B")
    record(a, "http://files.example/a.tar.gz", b"a", seeds=("one", "two"))
    record(a, "http://files.example/b.tar.gz", b"b", seeds=("two",))
    record(a, "http://files.example/c.tar.gz", b"c")
    export_bundle(a, tmp_path / "one", ExportOptions(seeds=("one",)))
    import_bundle(b, tmp_path / "one")
    assert [e.key.url for e in b.index.entries()] == ["http://files.example/a.tar.gz"]
    # Only the chosen seed's memberships travel: B has no partial seed "two".
    assert seed_map(b) == {"one": ["http://files.example/a.tar.gz"]}
    both = export_bundle(a, tmp_path / "both", ExportOptions(seeds=("one", "two")))
    assert (both.entries, both.objects) == (2, 2)
    with pytest.raises(SeedError, match="no seed named 'three'"):
        export_bundle(a, tmp_path / "three", ExportOptions(seeds=("three",)))


# -- split ---------------------------------------------------------------------------


def test_split_1mib_round_trips_a_30mib_blob_byte_identical(
    tmp_path: Path, stores: Callable[[str], Store]
) -> None:
    a, b = stores("A"), stores("B")
    big = os.urandom(30 * MiB)
    entry = record(a, "http://files.example/big.tar.gz", big)
    exact = record(a, "http://files.example/exact.tar.gz", os.urandom(MiB))
    record(a, "http://files.example/over.tar.gz", os.urandom(MiB + 1))
    bundle = tmp_path / "bundle"
    run_cli("seed", "export", "--store", a.root, "--split-size", "1MiB", bundle)
    pieces = sorted((bundle / "objects" / entry.digest.fanout).glob(f"{entry.digest.hex}.part*"))
    assert [p.name[-3:] for p in pieces] == [f"{i:03d}" for i in range(30)]
    assert all(p.stat().st_size == MiB for p in pieces)
    # A blob of exactly the split size stays whole; one byte more makes two pieces.
    assert (bundle / "objects" / exact.digest.fanout / exact.digest.hex).is_file()
    assert len(object_files(bundle)) == 30 + 1 + 2
    import_bundle(b, bundle)
    got = b.blobs.path(entry.digest).read_bytes()
    assert hashlib.sha256(got).digest() == hashlib.sha256(big).digest()
    assert b.index.entries() == a.index.entries()


def test_parse_size() -> None:
    assert parse_size("1MiB") == MiB
    assert parse_size("500M") == 500 * MiB
    assert parse_size("4GiB") == 4 << 30
    assert parse_size("2GB") == 2_000_000_000
    assert parse_size("65536") == 65536
    assert parse_size("fat32") == (4 << 30) - 1
    with pytest.raises(ValueError, match="cannot read size"):
        parse_size("lots")


# -- resume ------------------------------------------------------------------------


def test_export_resumes_and_repairs_an_interrupted_bundle(
    tmp_path: Path, stores: Callable[[str], Store]
) -> None:
    a, b = stores("A"), stores("B")
    for i in range(6):
        record(a, f"http://files.example/f{i}.tar.gz", os.urandom(100_000 + i))
    bundle = tmp_path / "bundle"
    export_bundle(a, bundle, ExportOptions())
    # As an interrupted export (or a careless disk) leaves it: no metadata, one
    # object gone, one cut short, one with a flipped byte, a temp file.
    (bundle / "cachesrv-seed.json").unlink()
    objs = object_files(bundle)
    objs[0].unlink()
    with objs[1].open("r+b") as f:
        f.truncate(10)
    data = bytearray(objs[2].read_bytes())
    data[500] ^= 0xFF
    objs[2].write_bytes(bytes(data))
    (objs[3].parent / f".{objs[3].name}.tmp").write_bytes(b"partial")
    with pytest.raises(SeedError) as rejected:
        verify_bundle(bundle)
    assert any("cachesrv-seed.json is missing" in p for p in rejected.value.problems)

    again = export_bundle(a, bundle, ExportOptions())
    assert (again.written, again.reused) == (3, 3)
    verify_bundle(bundle)
    assert not list(bundle.rglob("*.tmp"))
    import_bundle(b, bundle)
    assert b.index.entries() == a.index.entries()


def test_export_refuses_a_directory_that_is_not_a_bundle(
    tmp_path: Path, stores: Callable[[str], Store]
) -> None:
    a = stores("A")
    record(a, "http://files.example/a.tar.gz", b"a")
    dest = tmp_path / "home"
    dest.mkdir()
    (dest / "thesis.tex").write_text("precious")
    with pytest.raises(SeedError, match="neither empty nor a seed bundle"):
        export_bundle(a, dest, ExportOptions())
    assert sorted(p.name for p in dest.iterdir()) == ["thesis.tex"]


def test_export_leaves_out_a_corrupt_store_blob(
    tmp_path: Path, stores: Callable[[str], Store]
) -> None:
    a = stores("A")
    good = record(a, "http://files.example/good.tar.gz", b"good bytes")
    bad = record(a, "http://files.example/bad.tar.gz", b"bad bytes!")
    a.blobs.path(bad.digest).write_bytes(b"rotten!!!!")
    report = export_bundle(a, tmp_path / "bundle", ExportOptions())
    assert report.entries == 1 and any("corrupt" in s for s in report.skipped)
    assert [p.name for p in object_files(tmp_path / "bundle")] == [good.digest.hex]
    verify_bundle(tmp_path / "bundle")


# -- merging ----------------------------------------------------------------------


def test_mutable_entries_the_newer_recording_wins(
    tmp_path: Path, stores: Callable[[str], Store]
) -> None:
    a, b = stores("A"), stores("B")
    now = time.time()
    url_old, url_new = "http://deb.example/d/old/InRelease", "http://deb.example/d/new/InRelease"
    record(a, url_old, b"A's older copy", kind=ArtifactKind.MUTABLE, recorded=now - 100)
    newer = record(a, url_new, b"A's newer copy", kind=ArtifactKind.MUTABLE, recorded=now)
    kept = record(b, url_old, b"B's newer copy", kind=ArtifactKind.MUTABLE, recorded=now - 10)
    record(b, url_new, b"B's older copy", kind=ArtifactKind.MUTABLE, recorded=now - 50)
    export_bundle(a, tmp_path / "bundle", ExportOptions())
    report = import_bundle(b, tmp_path / "bundle")
    assert (report.updated, report.kept) == ([url_new], [url_old])
    assert b.index.get(url_new) == newer and b.index.get(url_old) == kept


def test_import_replaces_a_quarantined_blob(tmp_path: Path, stores: Callable[[str], Store]) -> None:
    a, b = stores("A"), stores("B")
    entry = record(a, "http://files.example/a.tar.gz", b"the real bytes")
    record(b, "http://files.example/a.tar.gz", b"the real bytes")
    b.index.set_quarantined(entry.digest)
    b.blobs.quarantine(entry.digest)
    export_bundle(a, tmp_path / "bundle", ExportOptions())
    report = import_bundle(b, tmp_path / "bundle")
    assert report.released == 1 and report.objects == 1
    assert b.blobs.verify(entry.digest) and not b.index.is_quarantined(entry.digest)


# -- hostile and broken bundles --------------------------------------------------------


def _flip_byte(bundle: Path, victim: Path) -> None:
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))


def _truncate(bundle: Path, victim: Path) -> None:
    with victim.open("r+b") as f:
        f.truncate(victim.stat().st_size // 2)


def _missing(bundle: Path, victim: Path) -> None:
    victim.unlink()


def _dotdot_digest(bundle: Path, victim: Path) -> None:
    def edit(lines: list[dict[str, object]]) -> None:
        lines[0]["digest"] = "../../../../../etc/cron.d/evil"

    rewrite_manifest(bundle, edit)


def _absolute_digest(bundle: Path, victim: Path) -> None:
    def edit(lines: list[dict[str, object]]) -> None:
        lines[0]["digest"] = "/etc/passwd"
        lines[0]["path"] = "/etc/passwd"

    rewrite_manifest(bundle, edit)


def _symlink_object(bundle: Path, victim: Path) -> None:
    # Same bytes, but through a link: a bundle holds plain files only.
    outside = bundle.parent / "outside"
    outside.write_bytes(victim.read_bytes())
    victim.unlink()
    victim.symlink_to(outside)


def _symlink_extra(bundle: Path, victim: Path) -> None:
    (victim.parent / "link").symlink_to("/etc/passwd")


def _symlink_fanout(bundle: Path, victim: Path) -> None:
    outside = bundle.parent / "elsewhere"
    victim.parent.rename(outside)
    victim.parent.symlink_to(outside, target_is_directory=True)


def _fifo(bundle: Path, victim: Path) -> None:
    os.mkfifo(victim.parent / f"{victim.name}.part000")


def _unexpected_file(bundle: Path, victim: Path) -> None:
    (victim.parent / ("ab" * 32)).write_bytes(b"smuggled")


def _future_version(bundle: Path, victim: Path) -> None:
    edit_metadata(bundle, version=2)


def _not_a_bundle(bundle: Path, victim: Path) -> None:
    edit_metadata(bundle, format="something-else")


def _no_metadata(bundle: Path, victim: Path) -> None:
    (bundle / "cachesrv-seed.json").unlink()


def _manifest_edited(bundle: Path, victim: Path) -> None:
    # An entry redirected to another blob, without updating the metadata.
    manifest = bundle / "manifest.jsonl"
    lines = manifest.read_text().splitlines()
    first, second = json.loads(lines[0]), json.loads(lines[1])
    first.update({k: second[k] for k in ("digest", "size", "sha256")})
    lines[0] = json.dumps(first)
    manifest.write_text("\n".join(lines) + "\n")


def _absurd_size(bundle: Path, victim: Path) -> None:
    # 10^18 bytes in 64 KiB pieces: checking must not enumerate 1.5 * 10^13 names.
    def edit(lines: list[dict[str, object]]) -> None:
        for line in lines:
            if line["digest"] == victim.name:
                line["size"] = 10**18

    rewrite_manifest(bundle, edit)
    edit_metadata(bundle, split_size=65536)


def _header_injection(bundle: Path, victim: Path) -> None:
    def edit(lines: list[dict[str, object]]) -> None:
        lines[0]["content_type"] = "text/html\r\nSet-Cookie: x=y"

    rewrite_manifest(bundle, edit)


HOSTILE = {
    "flipped byte": (_flip_byte, "content does not match its digest"),
    "truncated object": (_truncate, "(truncated)"),
    "missing object": (_missing, ": missing (object"),
    "../ in a manifest digest": (_dotdot_digest, "'../../../../../etc/cron.d/evil' is not 64"),
    "absolute path in a manifest entry": (_absolute_digest, "'/etc/passwd' is not 64"),
    "symlink instead of an object": (_symlink_object, "a symlink; a bundle holds only plain"),
    "extra symlink in objects/": (_symlink_extra, "link: a symlink"),
    "symlinked directory in objects/": (_symlink_fanout, "unexpected a symlink in objects/"),
    "fifo in objects/": (_fifo, "a special file"),
    "unexpected file in objects/": (_unexpected_file, "unexpected file (not in the manifest)"),
    "unknown format version": (_future_version, "unsupported format version 2"),
    "not a cachesrv bundle": (_not_a_bundle, "not a cachesrv seed bundle"),
    "metadata missing (interrupted export)": (_no_metadata, "cachesrv-seed.json is missing"),
    "manifest changed after export": (_manifest_edited, "manifest.jsonl does not match"),
    "header injection in manifest": (_header_injection, "content_type"),
    "absurd size in manifest": (_absurd_size, "of 15258789062500 pieces of object"),
}


@pytest.mark.parametrize("case", HOSTILE, ids=list(HOSTILE))
def test_hostile_or_broken_bundle_is_rejected_and_store_unchanged(
    case: str, tmp_path: Path, stores: Callable[[str], Store]
) -> None:
    damage, message = HOSTILE[case]
    a, b = stores("A"), stores("B")
    victim_entry = record(a, "http://files.example/victim.tar.gz", os.urandom(300_000))
    for i in range(3):
        record(a, f"http://files.example/good-{i}.tar.gz", os.urandom(20_000))
    record(b, "http://files.example/b-own.tar.gz", b"B was here first")
    b.close()
    bundle = tmp_path / "bundle"
    export_bundle(a, bundle, ExportOptions())
    damage(bundle, bundle / "objects" / victim_entry.digest.fanout / victim_entry.digest.hex)
    before = snapshot(tmp_path / "B")

    with pytest.raises(SeedError) as verify_error:
        verify_bundle(bundle)
    assert any(message in p for p in verify_error.value.problems), verify_error.value.problems

    r = run_cli("seed", "import", "--store", tmp_path / "B", bundle, check=False)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    first, *problems = r.stderr.splitlines()
    assert first.startswith("cachesrv: error: bad seed bundle ") and "problem" in first
    assert problems and all(p.startswith("  - ") for p in problems)
    assert any(message in p for p in problems), r.stderr
    assert snapshot(tmp_path / "B") == before


def test_every_problem_is_listed(tmp_path: Path, stores: Callable[[str], Store]) -> None:
    a, b = stores("A"), stores("B")
    entries = [record(a, f"http://files.example/{i}.tar.gz", os.urandom(5000)) for i in range(4)]
    bundle = tmp_path / "bundle"
    export_bundle(a, bundle, ExportOptions())
    paths = [bundle / "objects" / e.digest.fanout / e.digest.hex for e in entries]
    _flip_byte(bundle, paths[0])
    _flip_byte(bundle, paths[1])
    _missing(bundle, paths[2])
    before = snapshot(b.root)
    with pytest.raises(SeedError) as err:
        import_bundle(b, bundle)
    problems = err.value.problems
    assert len(problems) == 3, problems
    assert sum("does not match its digest" in p for p in problems) == 2
    assert any(entries[2].digest.hex in p and "missing" in p for p in problems)
    assert snapshot(b.root) == before


def test_immutable_conflict_is_a_problem_and_changes_nothing(
    tmp_path: Path, stores: Callable[[str], Store]
) -> None:
    a, b = stores("A"), stores("B")
    record(a, "http://files.example/x.tar.gz", b"one version")
    record(a, "http://files.example/y.tar.gz", b"unrelated")
    record(b, "http://files.example/x.tar.gz", b"another version")
    export_bundle(a, tmp_path / "bundle", ExportOptions())
    before = snapshot(b.root)
    with pytest.raises(SeedError) as err:
        import_bundle(b, tmp_path / "bundle")
    assert len(err.value.problems) == 1
    assert "x.tar.gz: immutable, and this store has other content" in err.value.problems[0]
    assert snapshot(b.root) == before


def test_missing_from_bundle_needs_the_blobs_it_assumes(
    tmp_path: Path, stores: Callable[[str], Store]
) -> None:
    """A delta made for B does not complete an empty store C: it says what is missing."""
    a, b, c = stores("A"), stores("B"), stores("C")
    body = os.urandom(1000)
    record(a, "http://files.example/a.tar.gz", body)
    record(b, "http://files.example/a.tar.gz", body)
    record(a, "http://mirror.example/a.tar.gz", body)
    write_inventory(b, tmp_path / "inv.json")
    export_bundle(a, tmp_path / "delta", ExportOptions(missing_from=tmp_path / "inv.json"))
    assert verify_bundle(tmp_path / "delta").bundle.assumed
    with pytest.raises(SeedError) as err:
        import_bundle(c, tmp_path / "delta")
    assert "neither in the bundle nor in this store" in err.value.problems[0]
    assert import_bundle(b, tmp_path / "delta").new == ["http://mirror.example/a.tar.gz"]


def test_verify_on_the_command_line(tmp_path: Path, stores: Callable[[str], Store]) -> None:
    a = stores("A")
    record(a, "http://files.example/a.tar.gz", b"a")
    run_cli("seed", "export", "--store", a.root, tmp_path / "bundle")
    ok = run_cli("seed", "verify", tmp_path / "bundle")
    assert ok.stdout.startswith("seed verify: OK: 1 entries, 1 objects")
    entry = a.index.entries()[0]
    _truncate(
        tmp_path / "bundle", tmp_path / "bundle/objects" / entry.digest.fanout / entry.digest.hex
    )
    bad = run_cli("seed", "verify", tmp_path / "bundle", check=False)
    assert bad.returncode == 1 and "(truncated)" in bad.stderr
