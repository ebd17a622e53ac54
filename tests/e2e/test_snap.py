"""Snaps through cachesrv: record the Snap Store online, replay it offline.

A fake store (tests/fakes/snapstore.py, shapes from snapd's store client) serves a real
squashfs snap, its refresh answers and assertion texts. Requests are sent in the exact
shape snapd 2.57 sends them (captured from the real `snap download`), and, when Debian's
`snap` is installed, by the real `snap download` itself.
"""

from __future__ import annotations

import email.message
import http.client
import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CachesrvProcess, run_cli
from tests.fakes.snapstore import FakeSnap, FakeSnapStore, build_snap

#: Headers snapd 2.57's store client sends with a refresh POST (store/store.go newRequest).
SNAPD_HEADERS = {
    "User-Agent": "snapd/2.57.6 (series 16; classic) snap debian/12 (amd64) linux/6.1",
    "Accept": "application/json",
    "Content-Type": "application/json",
    "Snap-Classic": "true",
    "Snap-Device-Architecture": "amd64",
    "Snap-Device-Capabilities": "default-tracks",
    "Snap-Device-Series": "16",
}
FIELDS = [
    "architectures",
    "base",
    "confinement",
    "contact",
    "created-at",
    "description",
    "download",
    "epoch",
    "license",
    "name",
    "prices",
    "private",
    "publisher",
    "revision",
    "snap-id",
    "snap-yaml",
    "summary",
    "title",
    "type",
    "version",
    "website",
    "store-url",
    "media",
    "common-ids",
]
MISS = "not in offline seed: snap hello"


def refresh_body(*actions: dict[str, Any]) -> bytes:
    """A refresh request as snapd marshals it (store/store_action.go)."""
    acts = []
    for i, a in enumerate(actions, 1):
        acts.append({"action": "download", "instance-key": f"download-{i}", **a, "epoch": None})
    doc = {"context": [], "actions": acts, "fields": FIELDS}
    return json.dumps(doc, separators=(",", ":")).encode()


@dataclass
class Reply:
    status: int
    reason: str
    headers: email.message.Message
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def call(url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> Reply:
    req = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return Reply(resp.status, resp.reason, resp.headers, resp.read())
    except urllib.error.HTTPError as err:
        with err:
            return Reply(err.code, err.reason, err.headers, err.read())


def assertion_url(base: str, path: str) -> str:
    return f"{base}/snapstore/v2/assertions/{path}"


class Site:
    """A fake store and a cachesrv in front of it, restartable offline on the same port
    (the refresh answer names the server by the Host the client used)."""

    def __init__(
        self,
        store: FakeSnapStore,
        start: Callable[..., CachesrvProcess],
        config: Path,
        store_dir: Path,
    ) -> None:
        self.store = store
        self.start_server = start
        self.config = config
        self.store_dir = store_dir
        self.server: CachesrvProcess | None = None
        self.port = 0

    def serve(self, mode: str, *extra: str) -> str:
        if self.server is not None:
            self.server.stop()
        listen = ("--listen", f"127.0.0.1:{self.port}") if self.port else ()
        self.server = self.start_server(
            "--config", self.config, "--store", self.store_dir, "--mode", mode, *listen, *extra
        )
        self.port = self.server.port
        return self.server.url

    def cli(self, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, "--config", self.config, "--store", self.store_dir, check=check)

    def refresh(self, base: str, *actions: dict[str, Any], seed: str = "") -> Reply:
        prefix = f"/@{seed}" if seed else ""
        return call(
            f"{base}{prefix}/snapstore/v2/snaps/refresh", refresh_body(*actions), SNAPD_HEADERS
        )


@pytest.fixture
def snaps(tmp_path: Path) -> dict[str, FakeSnap]:
    if shutil.which("mksquashfs") is None:
        pytest.skip("mksquashfs (squashfs-tools) is not installed")
    work = tmp_path / "snaps"
    work.mkdir()
    return {
        "stable": FakeSnap("hello", "hellosnapid000000000000000000001", 1,
                           build_snap(work, "hello", "1.0"), channels=("latest/stable",)),
        "edge": FakeSnap("hello", "hellosnapid000000000000000000001", 2,
                         build_snap(work, "hello", "2.0"), channels=("latest/edge",)),
    }  # fmt: skip


@pytest.fixture
def site(
    tmp_path: Path,
    snaps: dict[str, FakeSnap],
    write_config: Callable[..., Path],
    cachesrv: Callable[..., CachesrvProcess],
) -> Iterator[Site]:
    with FakeSnapStore() as store:
        for s in snaps.values():
            store.add(s)
        config = write_config(
            {
                "snapstore": {
                    "kind": "snap",
                    "url": store.url,
                    "assertions_url": store.url,
                    # Host only: sources/online.py checks a redirect's host without its port.
                    "file_hosts": ["127.0.0.1"],
                }
            }
        )
        yield Site(store, cachesrv, config, tmp_path / "store")


def fetch_everything(site: Site, base: str, snap: FakeSnap) -> dict[str, Reply]:
    """What `snap download hello` asks for: refresh, download, assertions; plus info."""
    got = {"refresh": site.refresh(base, {"name": "hello", "channel": "stable"})}
    assert got["refresh"].status == 200, got["refresh"].body
    result = got["refresh"].json()["results"][0]
    got["download"] = call(result["snap"]["download"]["url"])
    for path in sorted(site.store.assertions):
        got[path] = call(
            assertion_url(base, path) + "?max-format=0",
            headers={"Accept": "application/x.ubuntu.assertion"},
        )
    got["info"] = call(
        f"{base}/snapstore/v2/snaps/info/hello?fields=channel-map&architecture=amd64",
        headers={"Snap-Device-Series": "16"},
    )
    return got


def test_record_online_replay_offline_byte_identical(
    site: Site, snaps: dict[str, FakeSnap]
) -> None:
    snap = snaps["stable"]
    base = site.serve("online")
    online = fetch_everything(site, base, snap)

    result = online["refresh"].json()["results"][0]
    assert result["instance-key"] == "download-1" and result["snap"]["revision"] == 1
    download = result["snap"]["download"]
    assert download["url"].startswith(f"{base}/snapstore/files/http/127.0.0.1:")
    assert download["sha3-384"] == snap.sha3_384
    assert online["download"].body == snap.data
    for path, text in site.store.assertions.items():
        assert online[path].status == 200 and online[path].body == text
        assert online[path].headers["Content-Type"] == "application/x.ubuntu.assertion"
    assert online["info"].status == 200
    for entry in online["info"].json()["channel-map"]:
        assert entry["download"]["url"].startswith(f"{base}/snapstore/files/")

    # The store saw the client's shape, forwarded: device headers, body verbatim.
    posts = [r for r in site.store.requests if r.path == "/v2/snaps/refresh"]
    assert len(posts) == 1
    assert posts[0].body == refresh_body({"name": "hello", "channel": "stable"})
    for name in ("Snap-Device-Series", "Snap-Device-Architecture", "Snap-Classic"):
        assert posts[0].headers[name] == SNAPD_HEADERS[name]
    assert "Snap-Accept-Delta-Format" not in posts[0].headers
    assert site.store.count("/download-origin/") == 1

    # Store down, cachesrv still online: the recorded answers are served (stale).
    site.store.stop()
    stale = site.refresh(base, {"name": "hello", "channel": "stable"})
    assert stale.status == 200 and stale.body == online["refresh"].body
    assert stale.headers["X-Cachesrv-Status"] == "stale"

    seen = len(site.store.requests)
    base2 = site.serve("offline")
    assert base2 == base
    offline = fetch_everything(site, base, snap)
    for what, reply in online.items():
        assert offline[what].status == 200, (what, offline[what].body)
        assert offline[what].body == reply.body, what
    assert offline["refresh"].headers["Content-Type"] == "application/json"
    assert len(site.store.requests) == seen

    # An assertion asked for with the max-format snapd sends (recorded with 0): served,
    # because the recorded one's format fits.
    decl = f"snap-declaration/16/{snap.snap_id}"
    compat = call(
        assertion_url(base, decl) + "?max-format=5",
        headers={"Accept": "application/x.ubuntu.assertion"},
    )
    assert compat.status == 200 and compat.body == site.store.assertions[decl]


def test_offline_changed_request_is_a_per_action_error(
    site: Site, snaps: dict[str, FakeSnap]
) -> None:
    base = site.serve("online")
    assert site.refresh(base, {"name": "hello", "channel": "stable"}).status == 200
    site.store.stop()
    site.serve("offline")

    # Other channel, other revision: answered 200 with per-action errors snapd prints.
    edge = site.refresh(base, {"name": "hello", "channel": "edge"})
    assert edge.status == 200
    (result,) = edge.json()["results"]
    assert result["result"] == "error" and result["name"] == "hello"
    assert result["instance-key"] == "download-1"
    assert result["error"]["code"] not in ("name-not-found", "revision-not-found")
    assert result["error"]["message"].startswith(f"{MISS} (channel edge, arch amd64)")
    assert "cachesrv snap fetch hello --channel edge --arch amd64" in result["error"]["message"]

    rev = site.refresh(base, {"name": "hello", "revision": 2}).json()["results"][0]
    assert rev["error"]["message"].startswith(f"{MISS} (revision 2, arch amd64)")

    # "" (snap download without --channel) and "stable" are one key; other actions of
    # a multi-action request are still answered.
    both = site.refresh(base, {"name": "hello"}, {"name": "hello", "channel": "beta"}).json()
    ok, miss = both["results"]
    assert ok["instance-key"] == "download-1" and ok["snap"]["revision"] == 1
    assert miss["instance-key"] == "download-2" and miss["result"] == "error"

    misses = json.loads(site.cli("misses", "--format", "json").stdout)
    keys = {m["key"] for m in misses}
    assert any("channel=edge" in k and "name=hello" in k for k in keys), keys
    assert any("revision=2" in k for k in keys), keys
    assert any("channel=beta" in k for k in keys), keys


def test_offline_miss_shapes(site: Site, snaps: dict[str, FakeSnap]) -> None:
    base = site.serve("offline")

    # Assertion miss: the store's error list, Content-Type exactly application/json.
    reply = call(
        assertion_url(base, "snap-revision/AAAA") + "?max-format=0",
        headers={"Accept": "application/x.ubuntu.assertion"},
    )
    assert reply.status == 404
    assert reply.headers["Content-Type"] == "application/json"
    (error,) = reply.json()["error-list"]
    assert error["code"] != "not-found"
    assert error["message"].startswith("not in offline seed:")
    assert "snap-revision/AAAA" in reply.headers["X-Oops-Id"]

    # Other misses: 404 Not in offline seed, the diagnosis in X-Oops-Id (snapd prints it).
    info = call(f"{base}/snapstore/v2/snaps/info/nosuch?architecture=amd64")
    assert (info.status, info.reason) == (404, "Not in offline seed")
    assert info.headers["X-Oops-Id"].startswith("not in offline seed: ")
    assert "v2/snaps/info/nosuch" in info.headers["X-Oops-Id"]
    dl = call(f"{base}/snapstore/files/http/{site.store.cdn_url[7:]}/download-origin/x.snap")
    assert dl.status == 404 and "cachesrv prefetch" in dl.headers["X-Oops-Id"]

    misses = site.cli("misses", "--format", "urls").stdout.split()
    assert any(m.endswith("/v2/assertions/snap-revision/AAAA?max-format=0") for m in misses)
    assert any("/v2/snaps/info/nosuch" in m for m in misses)


def test_sha3_mismatch_is_not_recorded(site: Site, snaps: dict[str, FakeSnap]) -> None:
    site.store.lie_sha3.add("hello")
    base = site.serve("online")
    result = site.refresh(base, {"name": "hello", "channel": "stable"}).json()["results"][0]
    url = result["snap"]["download"]["url"]
    for _ in range(2):  # the bad body is not served to the next client either
        try:
            reply = call(url)
        except (http.client.HTTPException, ConnectionError, urllib.error.URLError):
            continue  # cut mid-body: the client never gets a whole, wrong file
        assert reply.status != 200, "a body failing its sha3-384 was served whole"
    assert site.store.count("/download-origin/") == 2
    key = f"{site.store.url}/api/v1/snaps/download/{snaps['stable'].filename}"
    entries = call(f"{base}/_cachesrv/api/v1/entries?prefix={key}").json()
    assert entries == [], entries
    assert "sha3_384" in "".join(site.server.log) if site.server else False


def test_snap_fetch_then_files_and_offline_replay(
    site: Site, snaps: dict[str, FakeSnap], tmp_path: Path
) -> None:
    snap = snaps["stable"]
    out = site.cli("snap", "fetch", "hello", "--arch", "amd64", "--seed", "build1")
    assert "revision 1" in out.stdout
    assert site.store.count("/v2/assertions/") == 4  # revision, declaration, key, account
    site.store.stop()

    dest = tmp_path / "out"
    files = site.cli("snap", "files", "hello", dest)
    assert "hello_1.snap" in files.stdout
    assert (dest / "hello_1.snap").read_bytes() == snap.data
    assert (dest / "hello_1.assert").read_bytes() == b"\n".join(site.store.assertion_chain(snap))

    # What `snap fetch` recorded is what snapd asks for: served offline, in strict mode
    # only under the seed it was recorded in.
    base = site.serve("offline", "--strict")
    got = site.refresh(base, {"name": "hello", "channel": "stable"}, seed="build1")
    result = got.json()["results"][0]
    assert result["snap"]["revision"] == 1
    assert call(result["snap"]["download"]["url"]).body == snap.data
    other = site.refresh(base, {"name": "hello", "channel": "stable"}, seed="other")
    message = other.json()["results"][0]["error"]["message"]
    assert message.startswith(f"{MISS} (channel stable, arch amd64)")
    assert "not in the requested seed" in message and "--seed other" in message

    missing = site.cli("snap", "files", "hello", dest, "--revision", "2", check=False)
    assert missing.returncode == 1 and "revision 1" in missing.stderr


# -- the real `snap download` -------------------------------------------------------------

needs_snap = pytest.mark.skipif(
    shutil.which("snap") is None,
    reason="Debian's snapd is not installed (`apt-get install snapd` enables this test)",
)


def snap_download(
    base: str, home: Path, dest: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    api = f"{base}/snapstore/"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "SNAPPY_FORCE_API_URL": api,
        "SNAPPY_FORCE_SAS_URL": api,
        "UBUNTU_STORE_URL": api,
        "SNAPPY_STORE_NO_CDN": "1",
        "SNAPPY_TESTING": "0",
    }
    dest.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        ["snap", "download", "hello", "--target-directory", str(dest), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@needs_snap
def test_real_snap_download_through_cachesrv(
    site: Site, snaps: dict[str, FakeSnap], tmp_path: Path
) -> None:
    snap = snaps["stable"]
    base = site.serve("online")
    first = snap_download(base, tmp_path / "home", tmp_path / "dl1", "--channel", "stable")
    # The snap itself arrives; snapd then rejects the assertions, which no fake can sign
    # with the real store's keys.
    assert (tmp_path / "dl1" / "hello_1.snap").read_bytes() == snap.data, first
    assert first.returncode != 0
    assert "Fetching assertions" in first.stdout
    assert "failed signature verification" in first.stderr, first.stderr

    (post,) = [r for r in site.store.requests if r.path == "/v2/snaps/refresh"]
    assert post.headers["User-Agent"].startswith("snapd/")
    assert post.headers["Snap-Device-Series"] == "16"
    assert post.headers["Snap-Device-Capabilities"] == "default-tracks"
    body = json.loads(post.body)
    assert body["actions"] == [
        {
            "action": "download",
            "instance-key": "download-1",
            "name": "hello",
            "channel": "stable",
            "epoch": None,
        }
    ]
    asked = [r for r in site.store.requests if r.path.startswith("/v2/assertions/")]
    assert asked, "snap download fetched no assertion through cachesrv"
    assert all("application/x.ubuntu.assertion" in r.headers["Accept"] for r in asked)
    print("snap download asked the store for:", *(f"{r.path}?{r.query}" for r in asked))

    site.store.stop()
    site.serve("offline")
    second = snap_download(base, tmp_path / "home", tmp_path / "dl2", "--channel", "stable")
    assert (tmp_path / "dl2" / "hello_1.snap").read_bytes() == snap.data
    assert second.stderr == first.stderr  # the same point: assertion verification

    edge = snap_download(base, tmp_path / "home", tmp_path / "dl3", "--channel", "edge")
    assert edge.returncode != 0
    assert "not in offline seed: snap hello (channel edge, arch amd64)" in edge.stderr


@needs_snap
def test_real_snap_download_offline_from_snap_fetch(
    site: Site, snaps: dict[str, FakeSnap], tmp_path: Path
) -> None:
    """`cachesrv snap fetch` records what the real client asks, under the same keys
    (snapd 2.57 asks account-key with max-format=0, fetch records 1: compatible)."""
    site.cli("snap", "fetch", "hello", "--arch", "amd64")
    site.store.stop()
    base = site.serve("offline")
    got = snap_download(base, tmp_path / "home", tmp_path / "dl", "--channel", "stable")
    assert (tmp_path / "dl" / "hello_1.snap").read_bytes() == snaps["stable"].data
    assert "failed signature verification" in got.stderr, got.stderr
    assert site.cli("misses", "--format", "urls").stdout == ""
