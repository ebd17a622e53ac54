"""`cachesrv seed ...` (also the `seed` console script): named seeds and bundles."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ..errors import ConfigError
from ..models import Digest
from ..store import Store
from .common import ConfigOpt, StoreOpt, config_for, open_store, parse_when, seed_app

TrustedKeyOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--trusted-key", help="A public key (seed-signing.pub) to trust, besides the config's."
    ),
]

# -- seed list / show ----------------------------------------------------------


@seed_app.command("list")
def seed_list(config: ConfigOpt = None, store: StoreOpt = None) -> None:
    """Named seeds: entries, size, and whether every body is in the store (a seed's
    entries are never evicted, but a blob may be quarantined or lost)."""
    st = open_store(config, store)
    try:
        rows = st.index.seeds()
        lacking = {r["name"]: _lacking(st, r["name"]) for r in rows}
    finally:
        st.close()
    if not rows:
        typer.echo("no seeds")
    for r in rows:
        missing = lacking[r["name"]]
        state = "complete" if not missing else f"INCOMPLETE: {missing} bodies missing"
        typer.echo(f"{r['name']:<30} {r['entries']:>7} entries {r['bytes']:>14} bytes  {state}")


def _lacking(st: Store, seed: str) -> int:
    """How many of a seed's keys cannot be served: entry gone, blob quarantined or lost."""
    return sum(
        1
        for _key, digest, quarantined in st.index.seed_bodies(seed)
        if digest is None or quarantined or not st.blobs.has(Digest(digest))
    )


@seed_app.command("delete")
def seed_delete(
    name: Annotated[str, typer.Argument(help="Seed name.")],
    config: ConfigOpt = None,
    store: StoreOpt = None,
) -> None:
    """Forget a seed. Its entries stay in the store, no longer pinned by it: they may
    be evicted when space is needed, and their blobs go with them (or with `gc`)."""
    st = open_store(config, store)
    try:
        n = st.index.delete_seed(name)
    finally:
        st.close()
    if n == 0:
        raise ConfigError(f"no seed named {name!r} (see `cachesrv seed list`)")
    typer.echo(f"seed {name} deleted ({n} entries stay in the store, no longer pinned by it)")


@seed_app.command("show")
def seed_show(
    name: Annotated[str, typer.Argument(help="Seed name.")],
    config: ConfigOpt = None,
    store: StoreOpt = None,
) -> None:
    """A seed's entries, total size and any missing blobs."""
    st = open_store(config, store)
    try:
        keys = st.index.seed_keys(name)
        if not keys:
            raise ConfigError(f"no seed named {name!r} (see `cachesrv seed list`)")
        total = 0
        missing: list[str] = []
        for key in keys:
            entry = st.index.get(key)
            if entry is None or not st.blobs.has(entry.digest):
                missing.append(key)
                typer.echo(f"MISSING  {key}")
                continue
            total += entry.size
            typer.echo(f"{entry.size:>12}  {key}")
    finally:
        st.close()
    typer.echo(f"seed {name}: {len(keys)} entries, {total} bytes, {len(missing)} missing blobs")
    if missing:
        raise typer.Exit(1)


# -- seed export / import / verify / inventory -----------------------------------


@seed_app.command("export")
def seed_export(
    dest: Annotated[Path, typer.Argument(help="Bundle directory (empty, or an earlier export).")],
    seed: Annotated[
        list[str] | None, typer.Option("--seed", help="Only this named seed (repeatable).")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Only entries recorded since WHEN (2h, 3d, ISO).")
    ] = None,
    missing_from: Annotated[
        Path | None,
        typer.Option(help="Inventory of the receiving store: export only what it lacks."),
    ] = None,
    split_size: Annotated[
        str | None,
        typer.Option(help="Split larger blobs into pieces (1MiB, 500M, 4GiB, fat32)."),
    ] = None,
    sign: Annotated[
        Path | None,
        typer.Option(help="Sign the bundle with this key (seed-signing.key from seed keygen)."),
    ] = None,
    config: ConfigOpt = None,
    store: StoreOpt = None,
) -> None:
    """Write the store (or seeds, or what another store lacks) as a bundle; resumable."""
    from ..seed import ExportOptions, export_bundle, parse_size

    try:
        split = parse_size(split_size) if split_size is not None else None
    except ValueError as exc:
        raise ConfigError(f"--split-size: {exc}") from None
    cfg = config_for(config, store)
    opts = ExportOptions(
        seeds=tuple(seed or ()),
        since=parse_when(since) if since else None,
        missing_from=missing_from,
        split_size=split,
        upstream_kinds={name: u.kind for name, u in cfg.upstreams.items()},
        sign=sign,
    )
    st = Store(cfg.store, cfg.limits)
    try:
        report = export_bundle(st, dest, opts)
    finally:
        st.close()
    for why in report.skipped:
        typer.echo(f"skipped: {why}", err=True)
    typer.echo(report.summary())


@seed_app.command("import")
def seed_import(
    src: Annotated[Path, typer.Argument(help="Bundle directory written by `seed export`.")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Verify and report what would change; change nothing.")
    ] = False,
    trusted_key: TrustedKeyOpt = None,
    allow_unsigned: Annotated[
        bool,
        typer.Option(
            "--allow-unsigned",
            help="Import even though no trusted key signed the bundle (logged).",
        ),
    ] = False,
    config: ConfigOpt = None,
    store: StoreOpt = None,
) -> None:
    """Verify a bundle completely, then merge it into the store (all or nothing).

    With trusted keys ([seed] trusted_keys, --trusted-key), a bundle must be signed
    by one of them (seed export --sign), else it is refused and nothing changes."""
    from ..seed import import_bundle

    cfg = config_for(config, store)
    trusted = [*cfg.trusted_keys, *(trusted_key or [])]
    st = Store(cfg.store, cfg.limits)
    try:
        report = import_bundle(
            st, src, dry_run=dry_run, trusted=trusted, allow_unsigned=allow_unsigned
        )
    finally:
        st.close()
    typer.echo(f"bundle {report.signer}", err=True)
    if dry_run:
        for line in report.details():
            typer.echo(line)
    else:
        for key in report.kept:
            typer.echo(f"kept: {key} (this store's copy is newer)", err=True)
    typer.echo(report.summary())


@seed_app.command("verify")
def seed_verify(
    src: Annotated[Path, typer.Argument(help="Bundle directory.")],
    trusted_key: TrustedKeyOpt = None,
    config: ConfigOpt = None,
    store: StoreOpt = None,
) -> None:
    """Check a bundle (format, paths, sizes, every digest) without importing it, and
    say who signed it (checked against [seed] trusted_keys and --trusted-key)."""
    from ..seed import verify_bundle
    from ..seed.signing import read_signer

    cfg = config_for(config, store)
    trusted = [*cfg.trusted_keys, *(trusted_key or [])]
    typer.echo(verify_bundle(src).summary())
    typer.echo(f"signature: {read_signer(src, trusted).describe()}")


@seed_app.command("keygen")
def seed_keygen(
    directory: Annotated[Path, typer.Argument(help="Where to write the key pair.")],
) -> None:
    """Make an ed25519 key pair for signing bundles: seed-signing.key (mode 0600, stays
    here) and seed-signing.pub (copy it to the importing site's [seed] trusted_keys)."""
    from ..seed.signing import key_id, keygen, load_public

    private, public = keygen(directory)
    typer.echo(f"private key: {private} (mode 0600; export --sign {private})")
    typer.echo(f"public key:  {public} (key id {key_id(load_public(public))}; trust it where")
    typer.echo("             bundles are imported: [seed] trusted_keys or --trusted-key)")


@seed_app.command("inventory")
def seed_inventory(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to FILE (default: stdout).")
    ] = None,
    config: ConfigOpt = None,
    store: StoreOpt = None,
) -> None:
    """What this store holds, for `seed export --missing-from` at the other site."""
    from ..seed import write_inventory

    st = open_store(config, store)
    try:
        text, inv = write_inventory(st, output)
    finally:
        st.close()
    summary = (
        f"seed inventory: {len(inv['digests'])} blobs, {len(inv['entries'])} entries, "
        f"{len(inv['seeds'])} seeds"
    )
    if output is None:
        sys.stdout.write(text)
        typer.echo(summary, err=True)
    else:
        typer.echo(f"{summary} -> {output}")


@seed_app.command("sbom")
def seed_sbom(
    seed: Annotated[
        list[str] | None,
        typer.Option("--seed", help="Only this named seed (repeatable; default: the whole store)."),
    ] = None,
    fmt: Annotated[
        str,
        typer.Option("--format", help="cyclonedx (CycloneDX 1.5 JSON) or spdx (SPDX 2.3 JSON)."),
    ] = "cyclonedx",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to FILE (default: stdout).")
    ] = None,
    config: ConfigOpt = None,
    store: StoreOpt = None,
) -> None:
    """An SBOM of the recorded artifacts (packages and files, not index metadata): purl,
    sha256, blake3, upstream URL and recording time of each."""
    from ..seed.sbom import FORMATS, collect, select_entries, write_sbom

    if fmt not in FORMATS:
        raise ConfigError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")
    cfg = config_for(config, store)
    kinds = {name: u.kind for name, u in cfg.upstreams.items()}
    st = Store(cfg.store, cfg.limits)
    try:
        seeds = tuple(seed or ())
        artifacts = collect(st, select_entries(st, seeds), kinds)
    finally:
        st.close()
    subject = "seed " + ", ".join(seeds) if seeds else f"store {cfg.store}"
    text = write_sbom(artifacts, subject, fmt)
    summary = f"seed sbom: {len(artifacts)} artifacts of {subject} ({fmt})"
    if output is None:
        sys.stdout.write(text)
        typer.echo(summary, err=True)
    else:
        output.write_text(text)
        typer.echo(f"{summary} -> {output}")
