"""The example configs in config/ load, and the two sides of a site agree on keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from cachesrv.config import load_config
from cachesrv.models import Mode
from tests.conftest import REPO

CONFIGS = REPO / "config"


@pytest.mark.parametrize("name", ["site-mirror.toml", "offline-site.toml", "cachesrv.toml"])
def test_example_configs_load(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CACHESRV_STORE", raising=False)
    config = load_config(CONFIGS / name)
    assert config.store == Path("/var/lib/cachesrv")
    assert config.upstreams


def test_site_mirror_covers_every_kind_of_upstream() -> None:
    config = load_config(CONFIGS / "site-mirror.toml")
    assert config.server.mode is Mode.ONLINE
    kinds = {u.kind for u in config.upstreams.values()}
    assert kinds == {"apt", "pypi", "snap", "generic"}
    hosts = {u.url.split("/")[2] for u in config.upstreams.values()}
    assert {"deb.debian.org", "archive.ubuntu.com", "pypi.org", "api.snapcraft.io"} <= hosts


def test_offline_site_serves_the_keys_the_mirror_records() -> None:
    """Cache keys are upstream URLs: the offline side must name the same upstreams at
    the same URLs, or nothing recorded online would ever be found offline."""
    online = load_config(CONFIGS / "site-mirror.toml")
    offline = load_config(CONFIGS / "offline-site.toml")
    assert offline.server.mode is Mode.OFFLINE
    assert dict(offline.upstreams) == dict(online.upstreams)
