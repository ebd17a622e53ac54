"""Configuration: defaults, validation naming file and key, documented keys."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from cachesrv.config import (
    _FETCH_KEYS,
    _SEED_KEYS,
    _SERVER_KEYS,
    _STORE_KEYS,
    _TLS_KEYS,
    _UPSTREAM_KEYS,
    DEFAULT_UPSTREAMS,
    load_config,
    parse_config,
)
from cachesrv.errors import ConfigError
from cachesrv.models import Mode

REFERENCE = Path(__file__).resolve().parent.parent / "config" / "cachesrv.toml"


def test_every_key_is_documented_in_the_reference_config() -> None:
    doc = tomllib.loads(REFERENCE.read_text())
    assert set(doc["server"]) == _SERVER_KEYS
    documented = set().union(*(set(t) for t in doc["upstreams"].values()))
    assert documented == _UPSTREAM_KEYS
    assert set(doc["tls"]) == _TLS_KEYS
    assert set(doc["store"]) == _STORE_KEYS
    assert set(doc["seed"]) == _SEED_KEYS
    assert set(doc["fetch"]) == _FETCH_KEYS
    for key in _SERVER_KEYS | _UPSTREAM_KEYS | _TLS_KEYS | _STORE_KEYS | _SEED_KEYS | _FETCH_KEYS:
        assert "# " in REFERENCE.read_text() and key in REFERENCE.read_text()
    # The reference file itself is valid and its upstreams are the built-in defaults.
    config = parse_config(doc, source=str(REFERENCE))
    assert set(config.upstreams) == set(DEFAULT_UPSTREAMS)


def test_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CACHESRV_CONFIG", raising=False)
    monkeypatch.delenv("CACHESRV_STORE", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    config = load_config()
    assert config.server.listen == "127.0.0.1:3142"
    assert config.server.mode is Mode.ONLINE
    assert config.store == tmp_path / "xdg" / "cachesrv"
    assert {"debian", "debian-security", "ubuntu", "pypi", "snapstore"} <= set(config.upstreams)
    assert config.upstreams["snapstore"].kind == "snap"


def test_store_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[server]\nstore = "{tmp_path / "from-config"}"\n')
    monkeypatch.delenv("CACHESRV_STORE", raising=False)
    assert load_config(cfg).store == tmp_path / "from-config"
    monkeypatch.setenv("CACHESRV_STORE", str(tmp_path / "from-env"))
    assert load_config(cfg).store == tmp_path / "from-env"
    assert load_config(cfg, store=tmp_path / "flag").store == tmp_path / "flag"
    monkeypatch.setenv("CACHESRV_CONFIG", str(cfg))
    monkeypatch.delenv("CACHESRV_STORE")
    assert load_config().store == tmp_path / "from-config"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[server]\nmode = "sideways"\n', "server.mode"),
        ('[server]\nlisten = "nowhere"\n', "server.listen"),
        ("[server]\nbogus = 1\n", "server.bogus"),
        ('[server]\nadmin_token = "short"\n', "server.admin_token"),
        ('[upstreams.x]\nkind = "ftp"\nurl = "http://h"\n', "upstreams.x.kind"),
        ('[upstreams.x]\nkind = "apt"\n', "upstreams.x.url"),
        ('[upstreams.x]\nurl = "ftp://h/x"\n', "upstreams.x.url"),
        ('[upstreams.x]\nurl = "http://h"\nfile_hosts = "h"\n', "upstreams.x.file_hosts"),
        ('[upstreams."a/b"]\nurl = "http://h"\n', "upstreams.a/b"),
        ("[tls]\nbogus = 1\n", "tls.bogus"),
        ('[tls]\nintercept = "h"\n', "tls.intercept"),
        ('[tls]\nintercept = ["https://h/x"]\n', "tls.intercept"),
        ("[tls]\nca_dir = 3\n", "tls.ca_dir"),
        ('[fetch]\nmax_body = "lots"\n', "fetch.max_body"),
        ("[fetch]\nmax_document = 0\n", "fetch.max_document"),
        ("[fetch]\nrate_window = -1\n", "fetch.rate_window"),
        ("[fetch]\nbogus = 1\n", "fetch.bogus"),
        ('[upstreams.x]\nurl = "http://h"\nmax_body = "-3"\n', "upstreams.x.max_body"),
    ],
)
def test_errors_name_file_and_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, store=tmp_path)
    assert str(info.value).startswith(f"{path}:{key}")


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[server\n")
    with pytest.raises(ConfigError, match="broken.toml: not valid TOML"):
        load_config(path, store=tmp_path)


def test_a_file_with_upstreams_replaces_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[upstreams.mine]\nkind = "apt"\nurl = "http://127.0.0.1:9/debian/"\n')
    config = load_config(path, store=tmp_path)
    assert list(config.upstreams) == ["mine"]
    assert config.upstreams["mine"].url == "http://127.0.0.1:9/debian"


def test_tls_keys_and_their_defaults(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[tls]\nintercept = ["*.Example.org", "git.example.org:8443"]\n'
        'upstream_ca = "/etc/extra.pem"\n'
    )
    config = load_config(path, store=tmp_path / "s")
    assert config.ca_dir == tmp_path / "s" / "tls"  # the default: inside the store
    assert config.tls.upstream_ca == Path("/etc/extra.pem")
    assert config.tls.intercepts("a.example.org")
    assert config.tls.intercepts("git.example.org:8443")
    assert not config.tls.intercepts("a.example.org:8443")  # other ports must be named
    assert not config.tls.intercepts("example.net")
    assert not config.tls.any_host
    assert config.with_overrides(any_host=True).tls.intercepts("example.net")
