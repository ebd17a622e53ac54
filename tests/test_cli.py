"""The command line: complete help, one-line errors, misses and fsck."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer.main

from cachesrv.cli import app
from tests.conftest import run_cli


def _commands(group: typer.Typer, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    click_group = typer.main.get_command(group)
    found: list[tuple[str, ...]] = []

    def walk(cmd: object, path: tuple[str, ...]) -> None:
        found.append(path)
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, (*path, name))

    walk(click_group, prefix)
    return found


@pytest.mark.parametrize("path", _commands(app))
def test_every_command_has_help(path: tuple[str, ...]) -> None:
    result = run_cli(*path, "--help")
    assert "Usage:" in result.stdout
    cmd = typer.main.get_command(app)
    for name in path:
        cmd = cmd.commands[name]  # type: ignore[attr-defined]
    assert cmd.help, f"{' '.join(path)} has no help text"


def test_seed_script_is_the_same_group() -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", "from cachesrv.cli import seed_main; seed_main()", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "Named seeds" in out


def test_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\nmode = "sideways"\n')
    r = run_cli("misses", "--config", bad, check=False)
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0
    assert "bad.toml:server.mode" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("serve", "--config", tmp_path / "missing.toml", check=False)
    assert r.returncode == 1 and "config file not found" in r.stderr


def test_fsck_quarantines_corrupt_blob(tmp_path: Path) -> None:
    from cachesrv.models import ArtifactKind, CacheKey, Entry
    from cachesrv.store import Store

    store = Store(tmp_path / "s")
    info = store.blobs.put_bytes(b"good bytes")
    store.index.put(
        Entry(
            CacheKey("files", "http://h/x.tar.gz"),
            info.digest,
            info.size,
            info.sha256,
            ArtifactKind.IMMUTABLE,
        )
    )
    store.close()
    path = tmp_path / "s" / "objects" / info.digest.fanout / info.digest.hex
    path.write_bytes(b"evil bytes")
    r = run_cli("fsck", "--store", tmp_path / "s", check=False)
    assert r.returncode == 1 and "1 corrupt" in r.stdout and info.digest.hex in r.stderr
    assert not path.exists()
    assert (tmp_path / "s" / "quarantine" / info.digest.hex).exists()
    r = run_cli("fsck", "--store", tmp_path / "s", "--repair", check=False)
    assert r.returncode == 0 and "1 entries dropped" in r.stdout
