"""PyPI index pages through the app: rewriting, negotiation, offline filtering, hosts."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from cachesrv.config import Config
from cachesrv.prefetch import prefetch
from cachesrv.web import make_app
from tests.fakes.dists import build_wheel
from tests.fakes.pypi import JSON_V1, FakePyPI

MakeClient = Callable[..., Awaitable[TestClient[Any, Any]]]
PIP_ACCEPT = f"{JSON_V1}, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01"


def pypi_config(load: Callable[..., Config], index: FakePyPI, **server: object) -> Config:
    files = index.files_url.split("://", 1)[1]
    return load(
        {"pypi": {"kind": "pypi", "url": index.index_url.rstrip("/"), "file_hosts": [files]}},
        **server,
    )


async def test_pages_are_rewritten_and_negotiated(
    aiohttp_client: MakeClient, load: Callable[..., Config], tmp_path: Path
) -> None:
    build_wheel(tmp_path, "alpha", "1.0", requires_python=">=3.8")
    with FakePyPI(tmp_path, files_on_other_host=True) as index:
        client = await aiohttp_client(make_app(pypi_config(load, index)))
        html = await client.get("/pypi/simple/Alpha/", headers={"Accept": "text/html"})
        assert html.status == 200 and html.headers["Vary"] == "Accept"
        text = await html.text()
        files = index.files_url.split("://", 1)[1]
        href = re.search(r'href="([^"]+)"', text)
        assert href is not None
        assert href.group(1).startswith(f"../../files/http/{files}/files/alpha-1.0-")
        assert "#sha256=" in href.group(1)
        assert 'data-requires-python="&gt;=3.8"' in text
        assert "data-core-metadata=" in text
        js = await client.get("/pypi/simple/alpha/", headers={"Accept": PIP_ACCEPT})
        assert js.headers["Content-Type"] == JSON_V1
        doc = json.loads(await js.read())
        assert doc["files"][0]["url"].startswith("../../files/http/")
        assert doc["files"][0]["requires-python"] == ">=3.8"
        # Each format is its own entry.
        keys = {e["key"] for e in await (await client.get("/_cachesrv/api/v1/entries")).json()}
        page = index.index_url + "alpha/"
        assert {page, page + "?format=" + JSON_V1} <= keys


async def test_offline_page_lists_only_stored_files_and_metadata(
    aiohttp_client: MakeClient, load: Callable[..., Config], tmp_path: Path
) -> None:
    one = build_wheel(tmp_path, "beta", "1.0")
    build_wheel(tmp_path, "beta", "2.0")
    with FakePyPI(tmp_path, files_on_other_host=True) as index:
        online = await aiohttp_client(make_app(pypi_config(load, index)))
        text = await (await online.get("/pypi/simple/beta/")).text()
        assert "beta-1.0-" in text and "beta-2.0-" in text
        link = re.search(r'href="\.\./\.\./([^"#]+beta-1\.0-[^"#]+)', text)
        assert link is not None
        # Only the 1.0 wheel's body is fetched (not its .metadata).
        got = await online.get(f"/pypi/{link.group(1)}")
        assert got.status == 200 and await got.read() == one.read_bytes()
        await online.close()
        offline = await aiohttp_client(make_app(pypi_config(load, index, mode="offline")))
        index.reset_log()
        text = await (await offline.get("/pypi/simple/beta/")).text()
        assert one.name in text and "beta-2.0-" not in text
        assert "data-core-metadata" not in text and "data-dist-info-metadata" not in text
        doc = await (await offline.get("/pypi/simple/beta/", headers={"Accept": PIP_ACCEPT})).read()
        # Only HTML was recorded: offline answers the recorded format pip also accepts.
        assert b"beta-2.0-" not in doc and one.name.encode() in doc
        never = await offline.get("/pypi/simple/gamma/")
        assert never.status == 404 and never.reason == "Not in offline seed"
        assert index.count() == 0


async def test_files_on_hosts_not_configured_are_refused(
    aiohttp_client: MakeClient, load: Callable[..., Config], tmp_path: Path
) -> None:
    with FakePyPI(tmp_path) as index:
        client = await aiohttp_client(make_app(pypi_config(load, index)))
        r = await client.get("/pypi/files/https/evil.example/x-1.0.tar.gz")
        assert r.status == 403 and "file_hosts" in await r.text()
        r = await client.get("/pypi/other/thing")
        assert r.status == 403
        assert index.count() == 0


async def test_a_missed_page_is_listed_by_the_url_asked_and_prefetch_fixes_it(
    aiohttp_client: MakeClient, load: Callable[..., Config], tmp_path: Path
) -> None:
    """The JSON format is recorded under its own key, but a miss names the page as
    the client asked it, with a prefetch command that records it (no internal key)."""
    build_wheel(tmp_path, "delta", "1.0")
    with FakePyPI(tmp_path) as index:
        offline_cfg = pypi_config(load, index, mode="offline")
        offline = await aiohttp_client(make_app(offline_cfg))
        r = await offline.get("/pypi/simple/delta/", headers={"Accept": PIP_ACCEPT})
        assert r.status == 404
        page = index.index_url + "delta/"
        body = await r.text()
        assert f"cachesrv prefetch {page} " in body and "?format=" not in body
        misses = await (await offline.get("/_cachesrv/api/v1/misses")).json()
        assert [m["key"] for m in misses] == [page]
        await offline.close()
        # The command the miss names records the page; offline then answers it.
        report = await prefetch(pypi_config(load, index), [page])
        assert report.new == [page] and not report.failed
        offline = await aiohttp_client(make_app(offline_cfg))
        r = await offline.get("/pypi/simple/delta/", headers={"Accept": PIP_ACCEPT})
        # The page is answered; it lists no file, since no wheel body was recorded.
        assert r.status == 200 and b"Links for delta" in await r.read()


async def test_malformed_pages_are_a_clear_502_and_not_answered(
    aiohttp_client: MakeClient,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    load: Callable[..., Config],
) -> None:
    bodies = {
        "list": (b"[1, 2, 3]", JSON_V1),
        "files-not-list": (b'{"files": {"a": 1}}', JSON_V1),
        "file-not-object": (b'{"files": ["x"]}', JSON_V1),
        "hashes-not-object": (b'{"files": [{"url": "a.whl", "hashes": "x"}]}', JSON_V1),
        "truncated": (b'{"files": [{"url": "a.wh', JSON_V1),
        "not-utf8": (b"\xff\xfe<a href='x.whl'>x</a>", "text/html"),
    }

    async def page(request: web.Request) -> web.Response:
        body, ctype = bodies[request.match_info["name"]]
        return web.Response(body=body, content_type=ctype)

    app = web.Application()
    app.router.add_get("/simple/{name}/", page)
    server = await aiohttp_server(app)
    cfg = load({"pypi": ("pypi", str(server.make_url("/simple")))})
    client = await aiohttp_client(make_app(cfg))
    for name in bodies:
        accept = "text/html" if name == "not-utf8" else PIP_ACCEPT
        r = await client.get(f"/pypi/simple/{name}/", headers={"Accept": accept})
        if name == "not-utf8":
            # Undecodable bytes in HTML are replaced, never an error: links still work.
            assert r.status == 200
            continue
        assert r.status == 502, name
        assert "index document unreadable" in await r.text()
    assert (await client.get("/_cachesrv/api/v1/stats")).status == 200
