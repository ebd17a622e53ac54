"""`cachesrv ca ...`: the local CA that HTTPS interception mints certificates with."""

from __future__ import annotations

import sys

import typer

from ..tls.ca import LocalCA
from .common import ConfigOpt, StoreOpt, ca_app, config_for


@ca_app.command("init")
def ca_init(config: ConfigOpt = None, store: StoreOpt = None) -> None:
    """Make the local CA in tls.ca_dir (default <store>/tls) if there is none.

    `serve` and `wrap` make it on first need too; an existing CA is kept (its key
    mode is checked).
    """
    cfg = config_for(config, store)
    existed = (cfg.ca_dir / "ca.key").exists()
    ca = LocalCA.ensure(cfg.ca_dir)
    info = ca.summary()
    what = "kept the existing CA" if existed else "made a new CA"
    typer.echo(f"{what}: {info.cert_path} (key {info.key_path}, mode 0600)")
    typer.echo(f"SHA-256 fingerprint: {info.sha256_fingerprint}")
    typer.echo("clients must trust it: cachesrv ca cert > cachesrv-ca.crt (docs/https.md)")


@ca_app.command("show")
def ca_show(config: ConfigOpt = None, store: StoreOpt = None) -> None:
    """Print the CA's subject, fingerprint, validity and where its files are (making
    the CA first if there is none)."""
    cfg = config_for(config, store)
    info = LocalCA.ensure(cfg.ca_dir).summary()
    typer.echo(f"subject:     {info.subject}")
    typer.echo(f"sha256:      {info.sha256_fingerprint}")
    typer.echo(f"valid:       {info.not_before:%Y-%m-%d} to {info.not_after:%Y-%m-%d}")
    typer.echo(f"certificate: {info.cert_path}")
    typer.echo(f"key:         {info.key_path} (never exported, never served)")


@ca_app.command("cert")
def ca_cert(config: ConfigOpt = None, store: StoreOpt = None) -> None:
    """Print the CA certificate (PEM) that clients must trust; never the key. The CA
    is made first if there is none, so this can run before the server ever has."""
    cfg = config_for(config, store)
    sys.stdout.buffer.write(LocalCA.ensure(cfg.ca_dir).pem())
