"""npm packuments through the app: both formats recorded, tarballs verified and linked
through cachesrv, offline filtering, proxy-form clients (no npm needed: the tarballs are
made here, the registry is tests/fakes/npmreg.py)."""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from cachesrv.config import Config
from cachesrv.web import make_app
from tests.fakes.npmreg import CORGI, FakeNpmRegistry

Client = TestClient[Any, Any]
MakeClient = Callable[..., Awaitable[Client]]
NPM_CORGI_ACCEPT = f"{CORGI}; q=1.0, application/json; q=0.8, */*"
UTIL = "@scope/util"
FULL = {"Accept": "application/json"}


def tgz(folder: Path, name: str, version: str) -> Path:
    """A minimal package tarball, as `npm pack` lays it out (package/package.json)."""
    manifest = json.dumps({"name": name, "version": version, "main": "index.js"}).encode()
    path = folder / f"{name.replace('/', '-').lstrip('@')}-{version}.tgz"
    with tarfile.open(path, "w:gz") as tf:
        info = tarfile.TarInfo("package/package.json")
        info.size = len(manifest)
        tf.addfile(info, io.BytesIO(manifest))
    return path


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[FakeNpmRegistry]:
    with FakeNpmRegistry(tmp_path / "registry") as reg:
        for version in ("1.0.0", "1.2.0", "2.0.0"):
            reg.publish(tgz(tmp_path, UTIL, version))
        yield reg


def npm_config(load: Callable[..., Config], registry: FakeNpmRegistry, **server: object) -> Config:
    return load({"npm": ("npm", registry.url)}, **server)


async def proxy_get(client: Client, url: str, host: str) -> tuple[bytes, bytes]:
    """A proxy-form GET of `url` (absolute target) to the app, as npm behind a proxy
    sends it: the status line and headers, and the body."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        f"GET {url} HTTP/1.1\r\nHost: {host}\r\n"
        "Accept: application/json\r\nConnection: close\r\n\r\n".encode()
    )
    await writer.drain()
    head, _, body = (await reader.read()).partition(b"\r\n\r\n")
    writer.close()
    await writer.wait_closed()
    return head, body


async def entries(client: Client) -> set[str]:
    return {e["key"] for e in await (await client.get("/_cachesrv/api/v1/entries")).json()}


async def test_formats_are_recorded_apart_and_tarballs_linked_through_the_cache(
    aiohttp_client: MakeClient, load: Callable[..., Config], registry: FakeNpmRegistry
) -> None:
    client = await aiohttp_client(make_app(npm_config(load, registry)))
    got = await client.get("/@build/npm/@scope%2futil", headers=FULL)
    assert got.status == 200 and got.headers["Content-Type"].startswith("application/json")
    doc = json.loads(await got.read())
    served = f"http://{client.host}:{client.port}/@build/npm/"
    tarball = doc["versions"]["1.2.0"]["dist"]["tarball"]
    assert tarball == f"{served}@scope/util/-/util-1.2.0.tgz"
    assert "_id" in doc and doc["dist-tags"] == {"latest": "2.0.0"}

    corgi = await client.get("/npm/@scope/util", headers={"Accept": NPM_CORGI_ACCEPT})
    assert corgi.headers["Content-Type"] == CORGI
    doc = json.loads(await corgi.read())
    assert set(doc) == {"name", "modified", "dist-tags", "versions"}
    assert doc["versions"]["1.0.0"]["dist"]["tarball"].endswith("/npm/@scope/util/-/util-1.0.0.tgz")

    assert [r.accept for r in registry.requests] == ["application/json", NPM_CORGI_ACCEPT]
    assert registry.raw_paths() == ["/@scope%2Futil"] * 2
    body = await (
        await client.get(tarball.removeprefix(f"http://{client.host}:{client.port}"))
    ).read()
    assert body == registry.tarball_path(UTIL, "1.2.0").read_bytes()
    page = f"{registry.url}/@scope%2Futil"
    assert await entries(client) == {
        page,
        page + "?format=" + CORGI,
        f"{registry.url}/@scope/util/-/util-1.2.0.tgz",
    }


async def test_a_tarball_that_does_not_match_its_integrity_is_not_recorded(
    aiohttp_client: MakeClient, load: Callable[..., Config], registry: FakeNpmRegistry
) -> None:
    client = await aiohttp_client(make_app(npm_config(load, registry)))
    assert (await client.get("/npm/@scope%2futil", headers=FULL)).status == 200
    registry.corrupt(UTIL, "1.0.0")
    try:
        answer = await client.get("/npm/@scope/util/-/util-1.0.0.tgz")
        complete = answer.status == 200 and len(await answer.read()) > 0
    except aiohttp.ClientPayloadError:
        complete = False
    assert not complete
    assert f"{registry.url}/@scope/util/-/util-1.0.0.tgz" not in await entries(client)


async def test_offline_lists_stored_versions_in_the_format_recorded(
    aiohttp_client: MakeClient, load: Callable[..., Config], registry: FakeNpmRegistry
) -> None:
    online = await aiohttp_client(make_app(npm_config(load, registry)))
    assert (await online.get("/npm/@scope%2futil", headers=FULL)).status == 200
    got = await online.get("/npm/@scope/util/-/util-1.2.0.tgz")
    assert await got.read() == registry.tarball_path(UTIL, "1.2.0").read_bytes()
    await online.close()

    offline = await aiohttp_client(make_app(npm_config(load, registry, mode="offline")))
    registry.reset_log()
    # Only the full document was recorded; an abbreviated request gets it.
    answer = await offline.get("/npm/@scope%2futil", headers={"Accept": NPM_CORGI_ACCEPT})
    assert answer.status == 200 and answer.headers["Content-Type"].startswith("application/json")
    doc = json.loads(await answer.read())
    assert list(doc["versions"]) == ["1.2.0"]
    assert doc["dist-tags"] == {"latest": "1.2.0"}
    assert set(doc["time"]) == {"created", "modified", "1.2.0"}

    miss = await offline.get("/npm/no-such", headers=FULL)
    assert miss.status == 404 and miss.reason == "Not in offline seed"
    assert (await miss.json())["error"] == "Not in offline seed"
    tgz_miss = await offline.get("/npm/@scope/util/-/util-2.0.0.tgz", headers={"Accept": "*/*"})
    assert tgz_miss.status == 404 and tgz_miss.reason == "Not in offline seed"
    assert registry.requests == []


async def test_proxy_form_clients_keep_the_registry_urls(
    aiohttp_client: MakeClient, load: Callable[..., Config], registry: FakeNpmRegistry
) -> None:
    client = await aiohttp_client(make_app(npm_config(load, registry)))
    host = registry.url.split("://", 1)[1]
    head, body = await proxy_get(client, f"{registry.url}/@scope%2futil", host)
    assert head.startswith(b"HTTP/1.1 200")
    doc = json.loads(body)
    assert doc["versions"]["1.0.0"]["dist"]["tarball"] == registry.tarball_url(UTIL, "1.0.0")
    # Same entry as the origin-form request's.
    assert await entries(client) == {f"{registry.url}/@scope%2Futil"}


async def test_a_proxy_form_request_naming_this_server_links_back_with_its_port(
    aiohttp_client: MakeClient, load: Callable[..., Config], registry: FakeNpmRegistry
) -> None:
    """Under `cachesrv wrap` clients send the server's own URLs through it as their
    proxy (`GET http://127.0.0.1:PORT/@b1/npm/...`): tarball links keep that port
    (aiohttp's `request.host` drops it there) and the seed prefix."""
    client = await aiohttp_client(make_app(npm_config(load, registry)))
    own = f"http://{client.host}:{client.port}"
    head, body = await proxy_get(client, f"{own}/@b1/npm/@scope%2futil", own[len("http://") :])
    assert head.startswith(b"HTTP/1.1 200")
    tarball = json.loads(body)["versions"]["1.0.0"]["dist"]["tarball"]
    assert tarball == f"{own}/@b1/npm/@scope/util/-/util-1.0.0.tgz"
    got = await client.get(tarball.removeprefix(own))
    assert (
        got.status == 200 and await got.read() == registry.tarball_path(UTIL, "1.0.0").read_bytes()
    )


async def test_a_tarball_asked_before_its_packument_is_verified_all_the_same(
    aiohttp_client: MakeClient, load: Callable[..., Config], registry: FakeNpmRegistry
) -> None:
    """`npm ci` from a lockfile with `resolved` URLs asks tarballs only: the packument
    that declares their integrity is fetched first (abbreviated), so a tampered tarball
    is never recorded and a good one is recorded verified, packument included."""
    client = await aiohttp_client(make_app(npm_config(load, registry)))
    registry.corrupt(UTIL, "1.0.0")
    try:
        answer = await client.get("/npm/@scope/util/-/util-1.0.0.tgz")
        complete = answer.status == 200 and len(await answer.read()) > 0
    except aiohttp.ClientPayloadError:
        complete = False
    assert not complete
    packument = f"{registry.url}/@scope%2Futil"
    tarball = f"{registry.url}/@scope/util/-/util-1.0.0.tgz"
    assert await entries(client) == {packument + "?format=" + CORGI}
    accepts = [r.headers.get("Accept", "") for r in registry.requests if "/-/" not in r.path]
    assert len(accepts) == 1 and accepts[0].startswith(CORGI)
    registry.corrupt(UTIL, "1.0.0", False)
    good = await client.get("/npm/@scope/util/-/util-1.0.0.tgz")
    assert await good.read() == registry.tarball_path(UTIL, "1.0.0").read_bytes()
    assert tarball in await entries(client)
    # Declared now: the next tarball of the same package costs no second packument.
    registry.reset_log()
    assert (await client.get("/npm/@scope/util/-/util-1.2.0.tgz")).status == 200
    assert registry.paths() == ["/@scope/util/-/util-1.2.0.tgz"]
