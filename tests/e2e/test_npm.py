"""The real npm through cachesrv: record online, replay offline with 0 upstream requests.

The fake registry (tests/fakes/npmreg.py) serves real tarballs made by the real
`npm pack`; npm is shielded from the machine's configuration and trapped from any
non-loopback host (tests/fakes/npmclient.py), with `registry` set to the cache's
`/npm/` upstream. Each offline server is a restart on a new port, so what npm wrote
with the online server's address (lockfiles) must work at another one.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CachesrvProcess, run_cli
from tests.fakes.npmclient import npm_binary, npm_env, project, run_npm
from tests.fakes.npmreg import CORGI, FakeNpmRegistry, integrity_of, make_package

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(npm_binary() is None, reason="npm is not installed"),
    pytest.mark.timeout(120),
]

UTIL = "@scope/util"
LEFTPAD = "leftpad-ish"
# leftpad-ish ^1.0.0 resolves to 1.1.0, which needs @scope/util 1.x: 1.2.0, not 2.0.0.
PACKAGES: list[tuple[str, str, dict[str, str]]] = [
    (UTIL, "1.0.0", {}),
    (UTIL, "1.2.0", {}),
    (UTIL, "2.0.0", {}),
    (LEFTPAD, "1.0.0", {UTIL: "1.x"}),
    (LEFTPAD, "1.1.0", {UTIL: "1.x"}),
    ("two", "1.0.0", {}),
    ("two", "2.0.0", {}),
]
TREE = {LEFTPAD: "1.1.0", UTIL: "1.2.0"}
NPM_CORGI_ACCEPT = f"{CORGI}; q=1.0, application/json; q=0.8, */*"


@pytest.fixture(scope="module")
def tarballs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    workdir = tmp_path_factory.mktemp("npm-packages")
    return [make_package(workdir, name, version, deps) for name, version, deps in PACKAGES]


class Site:
    """A fake registry, and a cachesrv in front of it restarted online or offline."""

    def __init__(
        self,
        registry: FakeNpmRegistry,
        start: Callable[..., CachesrvProcess],
        config: Path,
        tmp: Path,
    ) -> None:
        self.registry = registry
        self.start_server = start
        self.config = config
        self.tmp = tmp
        self.store = tmp / "store"
        self.server: CachesrvProcess | None = None
        self.registry_url = ""

    def serve(self, mode: str) -> str:
        """(Re)start the server in `mode`; the npm registry URL through it."""
        if self.server is not None:
            self.server.stop()
        self.server = self.start_server(
            "--config", self.config, "--store", self.store, "--mode", mode
        )
        self.registry_url = f"{self.server.url}/npm/"
        return self.registry_url

    def npm(self, args: list[str], app: Path, **config: str) -> Any:
        """npm `args` in `app` with a fresh cache (its own, named after the project)."""
        env = npm_env(self.tmp / f"npm-{app.name}", self.registry_url)
        env.update(config)
        return run_npm(args, app, env)

    def entries(self, prefix: str) -> list[str]:
        assert self.server is not None
        url = f"{self.server.url}/_cachesrv/api/v1/entries?prefix={prefix}"
        with urllib.request.urlopen(url, timeout=10) as answer:
            return [e["key"] for e in json.load(answer)]


@pytest.fixture
def site(
    tmp_path: Path,
    tarballs: list[Path],
    write_config: Callable[..., Path],
    cachesrv: Callable[..., CachesrvProcess],
) -> Iterator[Site]:
    with FakeNpmRegistry(tmp_path / "registry") as registry:
        for tgz in tarballs:
            registry.publish(tgz)
        config = write_config({"npm": {"kind": "npm", "url": registry.url}})
        yield Site(registry, cachesrv, config, tmp_path)


def installed(app: Path) -> dict[str, str]:
    found = {}
    for manifest in (app / "node_modules").glob("**/package.json"):
        doc = json.loads(manifest.read_text())
        found[doc["name"]] = doc["version"]
    return found


def digests(folder: Path) -> dict[str, str]:
    """Every installed file's sha512 (npm's own `.package-lock.json` names the server)."""
    return {
        str(p.relative_to(folder)): hashlib.sha512(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".package-lock.json"
    }


def copy_project(src: Path, dest: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    """`package.json` and an edited `package-lock.json` of `src` in a fresh `dest`."""
    dest.mkdir(parents=True)
    shutil.copy(src / "package.json", dest / "package.json")
    lock = json.loads((src / "package-lock.json").read_text())
    edit(lock)
    (dest / "package-lock.json").write_text(json.dumps(lock, indent=2))
    return dest


def resolved_under(prefix: str) -> Callable[[dict[str, Any]], None]:
    """A lockfile edit: every `resolved` URL moved from the registry's root to `prefix`."""

    def edit(lock: dict[str, Any]) -> None:
        for entry in lock["packages"].values():
            if "resolved" in entry:
                entry["resolved"] = prefix + entry["resolved"].split("/", 3)[3]

    return edit


def without_resolved(lock: dict[str, Any]) -> None:
    for entry in lock["packages"].values():
        entry.pop("resolved", None)


def test_install_online_then_offline_with_no_upstream_request(site: Site) -> None:
    registry = site.registry
    online_url = site.serve("online")
    app1 = site.tmp / "app1"
    project(app1, {LEFTPAD: "^1.0.0"})
    proc = site.npm(["install"], app1)
    assert proc.returncode == 0, proc.stderr
    assert installed(app1) == TREE
    # One full packument and one tarball each; the scoped name's slash stays encoded.
    assert sorted(registry.raw_paths()) == [
        "/@scope%2Futil",
        "/@scope/util/-/util-1.2.0.tgz",
        "/leftpad-ish",
        "/leftpad-ish/-/leftpad-ish-1.1.0.tgz",
    ]
    assert [r.accept for r in registry.requests if "/-/" not in r.path] == ["application/json"] * 2
    assert all("npm-command" not in r.headers for r in registry.requests)  # not forwarded
    lock = json.loads((app1 / "package-lock.json").read_text())
    resolved = lock["packages"]["node_modules/@scope/util"]["resolved"]
    assert resolved == f"{online_url}@scope/util/-/util-1.2.0.tgz"

    registry.reset_log()
    offline_url = site.serve("offline")
    app2 = site.tmp / "app2"
    project(app2, {LEFTPAD: "^1.0.0"})
    proc = site.npm(["install"], app2)
    assert proc.returncode == 0, proc.stderr
    assert registry.count() == 0
    assert installed(app2) == TREE
    assert digests(app2 / "node_modules") == digests(app1 / "node_modules")
    # The tarballs served offline are the registry's bytes (the integrity npm checked).
    lock2 = json.loads((app2 / "package-lock.json").read_text())
    for name, version in TREE.items():
        data = registry.tarball_path(name, version).read_bytes()
        entry = lock2["packages"][f"node_modules/{name}"]
        assert entry["integrity"] == integrity_of(data)
        assert entry["resolved"].startswith(offline_url)
        with urllib.request.urlopen(entry["resolved"], timeout=10) as answer:
            assert answer.read() == data


def test_npm_ci_from_lockfiles_online_then_offline(site: Site) -> None:
    registry = site.registry
    # The project's lockfile as committed by a developer on the public registry.
    source = site.tmp / "source"
    project(source, {LEFTPAD: "^1.0.0"})
    direct = run_npm(
        ["install", "--package-lock-only"], source, npm_env(site.tmp / "npm-direct", registry.url)
    )
    assert direct.returncode == 0, direct.stderr
    public = copy_project(
        source, site.tmp / "public", resolved_under("https://registry.npmjs.org/")
    )
    registry.reset_log()

    online_url = site.serve("online")
    # npm replaces registry.npmjs.org in `resolved` with the configured registry (the
    # cache): npm asks only the tarballs, and the cache fetches each package's
    # abbreviated packument first, to verify them against its dist.integrity.
    proc = site.npm(["ci"], public)
    assert proc.returncode == 0, proc.stderr
    assert installed(public) == TREE
    assert sorted(registry.paths()) == [
        "/@scope/util",
        "/@scope/util/-/util-1.2.0.tgz",
        "/leftpad-ish",
        "/leftpad-ish/-/leftpad-ish-1.1.0.tgz",
    ]
    first = [r for r in registry.requests if "/-/" not in r.path]
    assert {r.accept for r in first} == {NPM_CORGI_ACCEPT}
    # A lockfile without `resolved`: npm asks the abbreviated packuments (revalidated).
    registry.reset_log()
    bare = copy_project(source, site.tmp / "bare", without_resolved)
    proc = site.npm(["ci"], bare)
    assert proc.returncode == 0, proc.stderr
    packuments = [r for r in registry.requests if "/-/" not in r.path]
    assert sorted(r.raw_path for r in packuments) == ["/@scope%2Futil", "/leftpad-ish"]
    assert {r.accept for r in packuments} == {NPM_CORGI_ACCEPT}
    assert len(registry.requests) == 2  # the tarballs were recorded already
    assert f"{registry.url}/leftpad-ish?format={CORGI}" in site.entries(f"{registry.url}/left")

    registry.reset_log()
    site.serve("offline")  # a new port
    for name, edit in [("public2", resolved_under("https://registry.npmjs.org/")),
                       ("bare2", without_resolved)]:  # fmt: skip
        app = copy_project(source, site.tmp / name, edit)
        proc = site.npm(["ci"], app)
        assert proc.returncode == 0, proc.stderr
        assert installed(app) == TREE
    # A lockfile written through the cache names its address; at another address (here
    # with a seed prefix too) npm replaces that prefix when told to (the default
    # replaces only registry.npmjs.org).
    cached = copy_project(source, site.tmp / "cached", resolved_under(online_url))
    proc = site.npm(
        ["ci"],
        cached,
        npm_config_registry=site.registry_url.replace("/npm/", "/@ci/npm/"),
        npm_config_replace_registry_host=online_url,
    )
    assert proc.returncode == 0, proc.stderr
    assert installed(cached) == TREE
    seed = run_cli("seed", "show", "ci", "--store", site.store).stdout
    assert f"{registry.url}/@scope/util/-/util-1.2.0.tgz" in seed
    assert registry.count() == 0


def test_offline_resolution_picks_stored_versions_and_misses_are_clear(site: Site) -> None:
    registry = site.registry
    site.serve("online")
    pinned = site.tmp / "pinned"
    project(pinned, {"two": "1.0.0"})
    assert site.npm(["install"], pinned).returncode == 0
    assert registry.count("/two/-/two-2.0.0.tgz") == 0

    registry.reset_log()
    offline_url = site.serve("offline")
    # Upstream's latest is 2.0.0; only 1.0.0's tarball was recorded.
    unpinned = site.tmp / "unpinned"
    project(unpinned, {})
    proc = site.npm(["install", "two"], unpinned)
    assert proc.returncode == 0, proc.stderr
    assert installed(unpinned) == {"two": "1.0.0"}
    assert json.loads((unpinned / "package.json").read_text())["dependencies"] == {"two": "^1.0.0"}

    never = site.tmp / "never"
    project(never, {})
    proc = site.npm(["install", "never-recorded"], never)
    assert proc.returncode != 0
    assert "npm error code E404" in proc.stderr
    assert f"404 Not in offline seed - GET {offline_url}never-recorded" in proc.stderr
    # A tarball miss: npm prints the reason phrase (the body is text for `Accept: */*`).
    tarball = f"{offline_url}two/-/two-2.0.0.tgz"
    proc = site.npm(["install", tarball], never)
    assert proc.returncode != 0
    assert f"404 Not in offline seed - GET {tarball}" in proc.stderr
    # A version whose tarball is not stored is not listed: npm finds no such version.
    proc = site.npm(["install", "two@2.0.0"], never)
    assert proc.returncode != 0 and "No matching version found for two@2.0.0" in proc.stderr
    assert registry.count() == 0

    misses = run_cli("misses", "--store", site.store, "--format", "urls").stdout.split()
    assert sorted(misses) == [
        f"{registry.url}/never-recorded",
        f"{registry.url}/two/-/two-2.0.0.tgz",
    ]


def test_tampered_tarball_is_not_recorded(site: Site) -> None:
    registry = site.registry
    registry.corrupt(UTIL, "1.2.0")
    site.serve("online")
    app = site.tmp / "app"
    project(app, {LEFTPAD: "^1.0.0"})
    proc = site.npm(["install"], app)
    assert proc.returncode != 0
    assert not (app / "node_modules" / "@scope" / "util").exists()
    tarball = f"{registry.url}/@scope/util/-/util-1.2.0.tgz"
    assert site.entries(tarball) == []
    assert site.server is not None
    assert f"{tarball}: sha512 is" in site.server.output()

    # Not served to the next client either: fixed upstream, it is fetched and recorded.
    registry.corrupt(UTIL, "1.2.0", False)
    again = site.tmp / "again"
    project(again, {LEFTPAD: "^1.0.0"})
    proc = site.npm(["install"], again)
    assert proc.returncode == 0, proc.stderr
    assert site.entries(tarball) == [tarball]
