"""Self-tests of the fake npm registry and the npm driver, with no cachesrv involved.

The real npm (``/usr/bin/npm``) installs real tarballs (made by the real ``npm pack``)
from ``FakeNpmRegistry`` on 127.0.0.1, in an environment shielded from the machine's npm
config whose proxies trap any non-loopback access. What npm was seen to send is
recorded in the docstring of ``tests/fakes/npmreg.py``; these tests pin it down.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.fakes.npmclient import TRAP_PROXY, npm_env, project, run_npm
from tests.fakes.npmreg import (
    CORGI,
    FakeNpmRegistry,
    integrity_of,
    make_package,
    prefers_corgi,
    read_manifest,
)

pytestmark = [
    pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed"),
    pytest.mark.timeout(30),
]

# The abbreviated-packument Accept header npm 11 sends when it only needs install metadata.
NPM_CORGI_ACCEPT = "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*"
UTIL = "@scope/util"
LEFTPAD = "leftpad-ish"
# (name, version, dependencies): ^1.0.0 must pick leftpad-ish 1.1.0, and 1.x must pick
# @scope/util 1.2.0, not the newest (and "latest") 2.0.0.
PACKAGES = [
    (UTIL, "1.0.0", {}),
    (UTIL, "1.2.0", {}),
    (UTIL, "2.0.0", {}),
    (LEFTPAD, "1.0.0", {UTIL: "1.x"}),
    (LEFTPAD, "1.1.0", {UTIL: "1.x"}),
]


@dataclass
class Answer:
    status: int
    headers: Message
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


def fetch(base: str, method: str, path: str, headers: dict[str, str] | None = None) -> Answer:
    """One raw request to ``base`` (an origin URL), ``path`` sent exactly as given."""
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return Answer(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


@pytest.fixture(scope="module")
def tarballs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The real tarballs of PACKAGES, packed once per module."""
    workdir = tmp_path_factory.mktemp("npm-packages")
    return [make_package(workdir, name, version, deps) for name, version, deps in PACKAGES]


@pytest.fixture
def registry(tmp_path: Path, tarballs: list[Path]) -> Iterator[FakeNpmRegistry]:
    with FakeNpmRegistry(tmp_path / "registry") as reg:
        for tgz in tarballs:
            reg.publish(tgz)
        yield reg


def installed_version(app: Path, name: str) -> str:
    return str(json.loads((app / "node_modules" / name / "package.json").read_text())["version"])


def install_app(registry: FakeNpmRegistry, tmp_path: Path) -> Path:
    """``npm install`` of the app (leftpad-ish ^1.0.0) into ``tmp_path/app``; the app dir."""
    app = tmp_path / "app"
    project(app, {LEFTPAD: "^1.0.0"})
    proc = run_npm(["install"], app, npm_env(tmp_path / "npm-install", registry.url))
    assert proc.returncode == 0, proc.stderr
    return app


def copy_project(src: Path, dest: Path) -> Path:
    dest.mkdir(parents=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copy(src / name, dest / name)
    return dest


# --- the builder and the fake, over raw HTTP --------------------------------------------


def test_make_package_is_a_real_npm_tarball(tarballs: list[Path]) -> None:
    tgz = tarballs[3]
    assert tgz.name == "leftpad-ish-1.0.0.tgz"
    manifest = read_manifest(tgz)
    assert (manifest["name"], manifest["version"]) == (LEFTPAD, "1.0.0")
    assert manifest["dependencies"] == {UTIL: "1.x"}
    assert tarballs[0].name == "scope-util-1.0.0.tgz"


def test_packument_full_and_abbreviated(registry: FakeNpmRegistry) -> None:
    full = fetch(registry.url, "GET", "/@scope%2futil", {"Accept": "application/json"})
    assert full.status == 200
    assert full.headers["Content-Type"] == "application/json"
    assert full.headers["Vary"] == "Accept"
    doc = full.json()
    assert isinstance(doc, dict)
    assert doc["name"] == UTIL and doc["_id"] == UTIL
    assert doc["dist-tags"] == {"latest": "2.0.0"}
    assert sorted(doc["versions"]) == ["1.0.0", "1.2.0", "2.0.0"]
    assert {"created", "modified", "1.0.0", "1.2.0", "2.0.0"} <= set(doc["time"])
    v12 = doc["versions"]["1.2.0"]
    assert v12["_id"] == "@scope/util@1.2.0" and v12["main"] == "index.js"
    data = registry.tarball_path(UTIL, "1.2.0").read_bytes()
    assert v12["dist"] == {
        "tarball": f"{registry.url}/@scope/util/-/util-1.2.0.tgz",
        "shasum": hashlib.sha1(data).hexdigest(),
        "integrity": integrity_of(data),
    }

    corgi = fetch(registry.url, "GET", "/leftpad-ish", {"Accept": NPM_CORGI_ACCEPT})
    assert corgi.status == 200
    assert corgi.headers["Content-Type"] == CORGI
    doc = corgi.json()
    assert isinstance(doc, dict)
    assert set(doc) == {"name", "modified", "dist-tags", "versions"}
    v11 = doc["versions"]["1.1.0"]
    assert v11["name"] == LEFTPAD and v11["version"] == "1.1.0"
    assert v11["dependencies"] == {UTIL: "1.x"}
    assert v11["dist"]["tarball"] == f"{registry.url}/leftpad-ish/-/leftpad-ish-1.1.0.tgz"
    assert "main" not in v11 and "description" not in v11

    # No Accept, a wildcard, or JSON preferred: the full document.
    for accept in (None, "*/*", f"application/json, {CORGI}; q=0.5"):
        answer = fetch(registry.url, "GET", "/leftpad-ish", {"Accept": accept} if accept else {})
        assert answer.headers["Content-Type"] == "application/json", accept
        assert "_id" in answer.body.decode()


def test_negotiation() -> None:
    assert prefers_corgi(NPM_CORGI_ACCEPT)
    assert prefers_corgi(CORGI)
    assert not prefers_corgi("application/json")
    assert not prefers_corgi("*/*")
    assert not prefers_corgi(None)
    assert not prefers_corgi(f"{CORGI}; q=0")
    assert not prefers_corgi(f"{CORGI}; q=0.5, application/json")


def test_scoped_name_in_every_encoding(registry: FakeNpmRegistry) -> None:
    bodies = set()
    for path in ("/@scope%2futil", "/@scope%2Futil", "/@scope/util", "/%40scope%2Futil"):
        answer = fetch(registry.url, "GET", path, {"Accept": "application/json"})
        assert answer.status == 200, path
        bodies.add(answer.body)
    assert len(bodies) == 1
    assert registry.paths() == ["/@scope/util"] * 4  # the log decodes
    assert registry.raw_paths()[:2] == ["/@scope%2futil", "/@scope%2Futil"]  # as sent
    tgz = fetch(registry.url, "GET", "/@scope%2futil/-/util-1.0.0.tgz")
    assert tgz.status == 200


def test_tarball_head_and_revalidation(registry: FakeNpmRegistry) -> None:
    data = registry.tarball_path(LEFTPAD, "1.0.0").read_bytes()
    path = "/leftpad-ish/-/leftpad-ish-1.0.0.tgz"
    got = fetch(registry.url, "GET", path)
    assert got.status == 200 and got.body == data
    assert got.headers["Content-Length"] == str(len(data))
    assert got.headers["Content-Type"] == "application/octet-stream"
    head = fetch(registry.url, "HEAD", path)
    assert head.status == 200 and head.body == b""
    assert head.headers["Content-Length"] == str(len(data))
    etag = got.headers["ETag"]
    assert fetch(registry.url, "GET", path, {"If-None-Match": etag}).status == 304
    assert fetch(registry.url, "GET", path, {"If-None-Match": '"other"'}).status == 200
    since = {"If-Modified-Since": got.headers["Last-Modified"]}
    assert fetch(registry.url, "GET", path, since).status == 304

    pack = fetch(registry.url, "GET", "/leftpad-ish", {"Accept": "application/json"})
    again = {"Accept": "application/json", "If-None-Match": pack.headers["ETag"]}
    assert fetch(registry.url, "GET", "/leftpad-ish", again).status == 304
    # The abbreviated document is another representation, with another ETag.
    corgi = fetch(registry.url, "GET", "/leftpad-ish", {"Accept": CORGI})
    assert corgi.headers["ETag"] != pack.headers["ETag"]
    assert [r.status for r in registry.requests][-4:] == [304, 200, 304, 200]


def test_version_manifest(registry: FakeNpmRegistry) -> None:
    v = fetch(registry.url, "GET", "/@scope%2futil/1.0.0").json()
    assert isinstance(v, dict) and v["version"] == "1.0.0"
    latest = fetch(registry.url, "GET", "/@scope%2futil/latest").json()
    assert isinstance(latest, dict) and latest["version"] == "2.0.0"
    registry.tag(UTIL, "latest", "1.2.0")
    latest = fetch(registry.url, "GET", "/@scope%2futil/latest").json()
    assert isinstance(latest, dict) and latest["version"] == "1.2.0"


def test_not_found_remove_and_corrupt(registry: FakeNpmRegistry) -> None:
    for path in ("/nope", "/@scope%2fnope", "/leftpad-ish/-/leftpad-ish-9.9.9.tgz", "/-/v1/x"):
        answer = fetch(registry.url, "GET", path)
        assert answer.status == 404, path
        assert answer.headers["Content-Type"].startswith("application/json")
        assert answer.json() == {"error": "Not found"}
    assert fetch(registry.url, "PUT", "/leftpad-ish").status == 405

    path = "/@scope/util/-/util-1.0.0.tgz"
    good = fetch(registry.url, "GET", path).body
    registry.corrupt(UTIL, "1.0.0")
    bad = fetch(registry.url, "GET", path).body
    assert len(bad) == len(good) and bad != good
    registry.corrupt(UTIL, "1.0.0", False)
    assert fetch(registry.url, "GET", path).body == good

    registry.remove(UTIL, "1.0.0")
    assert fetch(registry.url, "GET", path).status == 404
    doc = fetch(registry.url, "GET", "/@scope%2futil").json()
    assert isinstance(doc, dict) and sorted(doc["versions"]) == ["1.2.0", "2.0.0"]
    registry.remove(UTIL)
    assert fetch(registry.url, "GET", "/@scope%2futil").status == 404
    assert registry.count("/@scope/util") >= 4


# --- the real npm ---------------------------------------------------------------------


def test_npm_install_resolves_and_installs_the_tree(
    registry: FakeNpmRegistry, tmp_path: Path
) -> None:
    app = install_app(registry, tmp_path)

    assert installed_version(app, LEFTPAD) == "1.1.0"
    assert installed_version(app, UTIL) == "1.2.0"  # 1.x, not latest (2.0.0)
    assert (app / "node_modules" / "@scope" / "util" / "index.js").is_file()
    node = shutil.which("node")
    assert node is not None
    script = f"const m = require('{LEFTPAD}'); console.log(m.version, require('{UTIL}').version)"
    out = subprocess.run(
        [node, "-e", script], cwd=app, capture_output=True, text=True, timeout=20, check=True
    )
    assert out.stdout.split() == ["1.1.0", "1.2.0"]  # node loads what npm installed
    lock = json.loads((app / "package-lock.json").read_text())
    util = lock["packages"]["node_modules/@scope/util"]
    assert util["resolved"] == f"{registry.url}/@scope/util/-/util-1.2.0.tgz"
    assert util["integrity"] == integrity_of(registry.tarball_path(UTIL, "1.2.0").read_bytes())

    # One packument and one tarball each; the scoped packument's slash sent as "%2f".
    assert sorted(registry.raw_paths()) == [
        "/@scope%2futil",
        "/@scope/util/-/util-1.2.0.tgz",
        "/leftpad-ish",
        "/leftpad-ish/-/leftpad-ish-1.1.0.tgz",
    ]
    by_path = {r.path: r for r in registry.requests}
    for packument in ("/leftpad-ish", "/@scope/util"):
        assert by_path[packument].accept == "application/json"  # full, not abbreviated
        assert by_path[packument].headers["pacote-req-type"] == "packument"
    for tgz in ("/leftpad-ish/-/leftpad-ish-1.1.0.tgz", "/@scope/util/-/util-1.2.0.tgz"):
        assert by_path[tgz].accept == "*/*"
        assert by_path[tgz].headers["pacote-req-type"] == "tarball"
    assert all(r.method == "GET" and r.status == 200 for r in registry.requests)
    assert {r.headers["npm-command"] for r in registry.requests} == {"install"}
    assert all(r.headers["User-Agent"].startswith("npm/") for r in registry.requests)


def test_npm_ci_from_the_lockfile_fetches_only_tarballs(
    registry: FakeNpmRegistry, tmp_path: Path
) -> None:
    app = install_app(registry, tmp_path)
    registry.reset_log()
    ci_dir = copy_project(app, tmp_path / "ci")
    proc = run_npm(["ci"], ci_dir, npm_env(tmp_path / "npm-ci", registry.url))  # fresh cache
    assert proc.returncode == 0, proc.stderr
    assert installed_version(ci_dir, UTIL) == "1.2.0"
    assert installed_version(ci_dir, LEFTPAD) == "1.1.0"
    # Lockfile has resolved + integrity: no packument is asked at all.
    assert sorted(registry.paths()) == [
        "/@scope/util/-/util-1.2.0.tgz",
        "/leftpad-ish/-/leftpad-ish-1.1.0.tgz",
    ]
    assert {r.headers["npm-command"] for r in registry.requests} == {"ci"}


def test_npm_ci_without_resolved_asks_abbreviated_packuments(
    registry: FakeNpmRegistry, tmp_path: Path
) -> None:
    app = install_app(registry, tmp_path)
    registry.reset_log()
    ci_dir = copy_project(app, tmp_path / "ci")
    lock = json.loads((ci_dir / "package-lock.json").read_text())
    for entry in lock["packages"].values():
        entry.pop("resolved", None)  # as omit-lockfile-registry-resolved=true writes it
    (ci_dir / "package-lock.json").write_text(json.dumps(lock, indent=2))
    proc = run_npm(["ci"], ci_dir, npm_env(tmp_path / "npm-ci", registry.url))
    assert proc.returncode == 0, proc.stderr
    assert installed_version(ci_dir, UTIL) == "1.2.0"
    packuments = [r for r in registry.requests if "/-/" not in r.path]
    assert sorted(r.raw_path for r in packuments) == ["/@scope%2futil", "/leftpad-ish"]
    assert {r.accept for r in packuments} == {NPM_CORGI_ACCEPT}
    assert all(r.status == 200 for r in packuments)
    assert sorted(registry.paths("/leftpad-ish/-/") + registry.paths("/@scope/util/-/")) == [
        "/@scope/util/-/util-1.2.0.tgz",
        "/leftpad-ish/-/leftpad-ish-1.1.0.tgz",
    ]


def test_npm_prefer_online_revalidates_with_etags(
    registry: FakeNpmRegistry, tmp_path: Path
) -> None:
    app = install_app(registry, tmp_path)
    env = npm_env(tmp_path / "npm-install", registry.url)  # the same (warm) cache
    registry.reset_log()
    again = tmp_path / "again"
    project(again, {LEFTPAD: "^1.0.0"})
    assert run_npm(["install"], again, env).returncode == 0
    assert registry.requests == []  # fresh within max-age: nothing asked

    online = tmp_path / "online"
    project(online, {LEFTPAD: "^1.0.0"})
    proc = run_npm(["install", "--prefer-online"], online, env)
    assert proc.returncode == 0, proc.stderr
    assert installed_version(online, UTIL) == "1.2.0"
    assert len(registry.requests) == 4
    for r in registry.requests:
        assert r.status == 304, r.path
        assert r.headers["If-None-Match"].startswith('"')
        assert "If-Modified-Since" in r.headers
    assert (app / "node_modules").is_dir()


def test_npm_install_of_a_corrupted_tarball_fails_eintegrity(
    registry: FakeNpmRegistry, tmp_path: Path
) -> None:
    registry.corrupt(UTIL, "1.2.0")
    app = tmp_path / "app"
    project(app, {LEFTPAD: "^1.0.0"})
    proc = run_npm(["install"], app, npm_env(tmp_path / "npm", registry.url))
    assert proc.returncode != 0
    assert "EINTEGRITY" in proc.stderr
    declared = registry.tarball_path(UTIL, "1.2.0").read_bytes()
    assert f"wanted {integrity_of(declared)}" in proc.stderr
    assert "seems to be corrupted. Trying again." in proc.stderr
    # npm fetches a tarball that fails its check once more before giving up.
    assert registry.count("/@scope/util/-/") == 2
    assert not (app / "node_modules" / "@scope" / "util").exists()


def test_npm_checks_shasum_only_without_integrity(
    registry: FakeNpmRegistry, tmp_path: Path
) -> None:
    # A wrong shasum next to a right integrity: ignored.
    registry.set_dist(UTIL, "1.2.0", shasum="0" * 40)
    app = tmp_path / "app"
    project(app, {UTIL: "^1.0.0"})
    proc = run_npm(["install"], app, npm_env(tmp_path / "npm1", registry.url))
    assert proc.returncode == 0, proc.stderr

    # No integrity, right shasum, corrupted bytes: the sha1 is checked.
    data = registry.tarball_path(UTIL, "1.2.0").read_bytes()
    registry.set_dist(UTIL, "1.2.0", shasum=hashlib.sha1(data).hexdigest(), integrity=None)
    registry.corrupt(UTIL, "1.2.0")
    app2 = tmp_path / "app2"
    project(app2, {UTIL: "^1.0.0"})
    proc = run_npm(["install"], app2, npm_env(tmp_path / "npm2", registry.url))
    assert proc.returncode != 0
    assert "EINTEGRITY" in proc.stderr
    assert "integrity checksum failed when using sha1" in proc.stderr


def test_npm_install_of_an_unknown_package_fails_with_the_registry_error(
    registry: FakeNpmRegistry, tmp_path: Path
) -> None:
    app = tmp_path / "app"
    project(app, {"no-such-package": "^1.0.0"})
    proc = run_npm(["install"], app, npm_env(tmp_path / "npm", registry.url))
    assert proc.returncode != 0
    assert "npm error code E404" in proc.stderr
    assert f"404 Not Found - GET {registry.url}/no-such-package - Not found" in proc.stderr
    assert [(r.path, r.status) for r in registry.requests] == [("/no-such-package", 404)]


def test_npm_env_shields_and_traps(
    registry: FakeNpmRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inherited = {"HTTPS_PROXY", "http_proxy", "NO_PROXY", "NPM_CONFIG_REGISTRY", "npm_config_x"}
    for var in inherited:
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    env = npm_env(tmp_path / "npm", registry.url)
    assert not inherited & set(env)
    assert not {k.lower() for k in env} & {"http_proxy", "https_proxy", "no_proxy"}
    assert env["npm_config_proxy"] == env["npm_config_https_proxy"] == TRAP_PROXY
    assert env["HOME"].startswith(str(tmp_path))
    assert Path(env["npm_config_userconfig"]).read_text() == ""
    assert Path(env["npm_config_globalconfig"]).read_text() == ""
    assert env["npm_config_registry"] == registry.url + "/"
    got = run_npm(["config", "get", "registry"], tmp_path, env)
    assert got.stdout.strip() == registry.url + "/"
    # The machine's ~/.npmrc is not read (HOME is private).
    got = run_npm(["config", "get", "omit-lockfile-registry-resolved"], tmp_path, env)
    assert got.stdout.strip() == "false"

    # Proxy settings are honoured: with loopback no longer exempt, npm's request goes to
    # the proxy (here another fake, which logs the absolute-form target). npm uses
    # https-proxy, else proxy, for http URLs too (npm-registry-fetch), so set both.
    with FakeNpmRegistry(tmp_path / "proxy") as proxy:
        env.update(
            npm_config_proxy=proxy.url, npm_config_https_proxy=proxy.url, npm_config_noproxy=""
        )
        app = tmp_path / "app"
        project(app, {LEFTPAD: "^1.0.0"})
        proc = run_npm(["install"], app, env)
        assert proc.returncode != 0
        assert proxy.raw_paths() == [f"{registry.url}/leftpad-ish"]
    assert registry.requests == []
