"""Signed seed bundles: keygen, export --sign, import with trusted keys, verify.

The attack: whoever holds the USB disk replaces an object and rewrites its name, the
manifest and the metadata so that everything is consistent again. Without trusted
keys such a bundle imports (consistency is all that can be checked); with a trusted
key it is refused, before anything enters the store.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import blake3
import pytest

from cachesrv.seed.bundle import Metadata, parse_metadata
from cachesrv.store import Store
from tests.conftest import run_cli
from tests.test_seed import record, snapshot

URL = "http://files.example/pkg-1.0.tar.gz"
GOOD = b"the real tarball\n" * 100
EVIL = b"a tarball with a backdoor\n" * 100


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[Callable[[str], Store]]:
    opened: list[Store] = []

    def make(name: str) -> Store:
        opened.append(Store(tmp_path / name))
        return opened[-1]

    yield make
    for st in opened:
        st.close()


def keys(tmp: Path, name: str) -> tuple[Path, Path]:
    out = run_cli("seed", "keygen", tmp / name)
    assert "key id" in out.stdout
    return tmp / name / "seed-signing.key", tmp / name / "seed-signing.pub"


def export(store: Path, dest: Path, *extra: str | Path) -> None:
    run_cli("seed", "export", dest, "--store", store, *extra)


def tamper(bundle: Path) -> None:
    """Replace the object and rewrite its name, the manifest and the metadata to match."""
    (line,) = (bundle / "manifest.jsonl").read_text().splitlines()
    entry = json.loads(line)
    old = entry["digest"]
    new = blake3.blake3(EVIL).hexdigest()
    (bundle / "objects" / old[:2] / old).unlink()
    (bundle / "objects" / new[:2]).mkdir(exist_ok=True)
    (bundle / "objects" / new[:2] / new).write_bytes(EVIL)
    entry.update(digest=new, size=len(EVIL), sha256=hashlib.sha256(EVIL).hexdigest())
    manifest = (json.dumps(entry) + "\n").encode()
    (bundle / "manifest.jsonl").write_bytes(manifest)
    meta = parse_metadata((bundle / "cachesrv-seed.json").read_bytes())
    forged = Metadata(
        entries=meta.entries,
        objects=meta.objects,
        bytes=len(EVIL),
        manifest_blake3=blake3.blake3(manifest).hexdigest(),
        split_size=meta.split_size,
        created=meta.created,
        source_host=meta.source_host,
        selection=meta.selection,
    )
    (bundle / "cachesrv-seed.json").write_text(forged.to_json())


def test_keygen_writes_a_private_key_only_its_owner_reads(tmp_path: Path) -> None:
    private, public = keys(tmp_path, "k")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in private.read_bytes() and b"PUBLIC KEY" in public.read_bytes()
    again = run_cli("seed", "keygen", tmp_path / "k", check=False)
    assert again.returncode != 0 and "never overwrites" in again.stderr
    assert private.read_bytes()  # untouched


def test_a_consistently_tampered_bundle_is_refused_once_a_key_is_trusted(
    tmp_path: Path, stores: Callable[[str], Store]
) -> None:
    src = stores("src")
    record(src, URL, GOOD)
    private, public = keys(tmp_path, "site-a")
    bundle = tmp_path / "bundle"
    export(src.root, bundle, "--sign", private)
    tamper(bundle)
    # Consistency alone cannot tell: the forged bundle verifies and would import.
    assert "OK" in run_cli("seed", "verify", bundle).stdout
    dry = run_cli("seed", "import", bundle, "--store", tmp_path / "naive", "--dry-run")
    assert dry.returncode == 0

    target = stores("target")
    record(target, "http://files.example/other-2.0.tar.gz", b"already here")
    before = snapshot(target.root)
    refused = run_cli(
        "seed", "import", bundle, "--store", target.root, "--trusted-key", public, check=False
    )
    assert refused.returncode == 1
    assert "does not verify" in refused.stderr and "refused" in refused.stderr
    assert snapshot(target.root) == before
    verify = run_cli("seed", "verify", bundle, "--trusted-key", public).stdout
    assert "does not verify" in verify


def test_only_a_trusted_signature_imports(tmp_path: Path, stores: Callable[[str], Store]) -> None:
    src = stores("src")
    record(src, URL, GOOD, seeds=("app",))
    site_a, site_a_pub = keys(tmp_path, "site-a")
    _, other_pub = keys(tmp_path, "other")
    signed, unsigned = tmp_path / "signed", tmp_path / "unsigned"
    export(src.root, signed, "--sign", site_a)
    export(src.root, unsigned)
    assert not (unsigned / "cachesrv-seed.sig").exists()

    target = stores("target")
    before = snapshot(target.root)
    # Signed, but by a key this site does not trust.
    wrong = run_cli(
        "seed", "import", signed, "--store", target.root, "--trusted-key", other_pub, check=False
    )
    assert wrong.returncode == 1 and "not a trusted key" in wrong.stderr
    # Unsigned, with a key trusted in the config file.
    config = tmp_path / "c.toml"
    config.write_text(f"[seed]\ntrusted_keys = [{json.dumps(str(site_a_pub))}]\n")
    bare = run_cli(
        "seed", "import", unsigned, "--config", config, "--store", target.root, check=False
    )
    assert bare.returncode == 1 and "not signed" in bare.stderr
    assert "--allow-unsigned" in bare.stderr
    assert snapshot(target.root) == before

    # The right key (from the config) imports, and says who signed.
    ok = run_cli("seed", "import", signed, "--config", config, "--store", target.root)
    assert "trusted: " in ok.stderr and str(site_a_pub) in ok.stderr
    entry = target.index.get(URL)
    assert entry is not None and target.blobs.path(entry.digest).read_bytes() == GOOD
    assert target.index.in_seed("app", URL)
    assert "trusted" in run_cli("seed", "verify", signed, "--config", config).stdout


def test_allow_unsigned_is_an_explicit_logged_override(
    tmp_path: Path, stores: Callable[[str], Store]
) -> None:
    src = stores("src")
    record(src, URL, GOOD)
    _, public = keys(tmp_path, "site-a")
    bundle = tmp_path / "bundle"
    export(src.root, bundle)
    target = tmp_path / "target"
    out = run_cli(
        "seed", "import", bundle, "--store", target, "--trusted-key", public, "--allow-unsigned"
    )
    assert "--allow-unsigned" in out.stderr and "not signed" in out.stderr
    assert "1 new" in out.stdout


def test_without_trusted_keys_a_signature_is_reported_not_required(
    tmp_path: Path, stores: Callable[[str], Store]
) -> None:
    src = stores("src")
    record(src, URL, GOOD)
    private, _ = keys(tmp_path, "k")
    bundle = tmp_path / "bundle"
    export(src.root, bundle, "--sign", private)
    verify = run_cli("seed", "verify", bundle).stdout
    assert "signed by ed25519 key" in verify and "no trusted keys configured" in verify
    run_cli("seed", "import", bundle, "--store", tmp_path / "target")
    # Re-exporting without --sign leaves no stale signature behind.
    export(src.root, bundle)
    assert not (bundle / "cachesrv-seed.sig").exists()
    assert os.listdir(bundle)


def test_a_garbled_signature_file_is_refused_not_a_crash(
    tmp_path: Path, stores: Callable[[str], Store]
) -> None:
    src = stores("src")
    record(src, URL, GOOD)
    private, public = keys(tmp_path, "k")
    bundle = tmp_path / "bundle"
    export(src.root, bundle, "--sign", private)
    target = stores("target")
    before = snapshot(target.root)
    for garbage in (b"\xff\x00 not json", b'{"algorithm": "rsa"}', b'{"algorithm": "ed25519"}'):
        (bundle / "cachesrv-seed.sig").write_bytes(garbage)
        out = run_cli(
            "seed", "import", bundle, "--store", target.root, "--trusted-key", public, check=False
        )
        assert out.returncode == 1 and "refused" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr
        assert snapshot(target.root) == before
