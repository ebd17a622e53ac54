"""apt Release files past their Valid-Until: read from recorded bodies, listed on the
status page and in `/metrics`, and named in the diagnosis of a missed apt index."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp.test_utils import TestClient

from cachesrv.config import Config
from cachesrv.upstreams.apt import is_release, release_dates, suite_dir
from cachesrv.web import make_app
from tests.fakes.upstream import FakeUpstream
from tests.web.test_proxy import put

Client = TestClient[Any, Any]
MakeClient = Callable[..., Awaitable[Client]]
DAY = 86400.0


def release(date: float, valid_until: float | None, *, signed: bool = False) -> bytes:
    """A Release header as apt-ftparchive and Debian write it (RFC 2822, UTC)."""
    lines = [
        "Origin: Debian",
        "Suite: stable-security",
        f"Date: {email.utils.formatdate(date, usegmt=True).replace('GMT', 'UTC')}",
    ]
    if valid_until is not None:
        lines.append(f"Valid-Until: {email.utils.formatdate(valid_until)}")  # -0000 style
    lines += ["SHA256:", " " + "0" * 64 + " 0 main/binary-all/Packages"]
    text = "\n".join(lines) + "\n"
    if signed:
        text = (
            "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n"
            + text
            + "-----BEGIN PGP SIGNATURE-----\n\nValid-Until: not a field\n"
            "-----END PGP SIGNATURE-----\n"
        )
    return text.encode()


def expired_section(page: str) -> str:
    start = page.index('<section class="expired">')
    return page[start : page.index("</section>", start)]


def test_release_dates_of_release_and_inrelease() -> None:
    now = int(time.time())
    plain = release_dates(release(now - 8 * DAY, now - DAY))
    assert plain.date == now - 8 * DAY and plain.valid_until == now - DAY
    assert plain.expired(now) and not plain.expired(now - 2 * DAY)
    signed = release_dates(release(now, now + 7 * DAY, signed=True))
    assert signed.date == now and signed.valid_until == now + 7 * DAY
    assert not signed.expired(now)
    never = release_dates(release(now, None))
    assert never.valid_until is None and not never.expired(now + 1000 * DAY)
    garbled = release_dates(b"Date: yesterday-ish\nValid-Until: soon\n")
    assert garbled.date is None and garbled.valid_until is None and not garbled.expired(now)
    # A field after the hash lists is not the header's.
    late = release_dates(
        b"Date: Sat, 01 Jun 2024 12:00:00 UTC\nMD5Sum:\n x 1 y\n"
        b"Valid-Until: Sun, 02 Jun 2024 12:00:00 UTC\n"
    )
    assert late.date is not None and late.valid_until is None


def test_release_paths() -> None:
    assert is_release("dists/bookworm/InRelease") and is_release("/dists/bookworm/Release")
    assert is_release("dists/buster/updates/InRelease")  # the old security layout
    assert not is_release("dists/bookworm/Release.gpg")
    assert not is_release("dists/bookworm/main/by-hash/SHA256/Release")
    assert not is_release("pool/main/r/release/Release")
    assert suite_dir("dists/bookworm/main/binary-amd64/Packages.xz") == "dists/bookworm/"
    assert suite_dir("pool/main/h/hello/hello_1.0_all.deb") is None


async def test_expired_release_is_listed_counted_and_explained(
    aiohttp_client: MakeClient, load: Callable[..., Config], upstream: FakeUpstream
) -> None:
    now = time.time()
    put(upstream, "dists/stable/InRelease", release(now - 8 * DAY, now - DAY, signed=True))
    put(upstream, "dists/fresh/InRelease", release(now, now + 7 * DAY, signed=True))
    ups = {"debian": ("apt", upstream.url)}
    online = await aiohttp_client(make_app(load(ups)))
    for suite in ("stable", "fresh"):
        r = await online.get(f"/debian/dists/{suite}/InRelease")
        # The whole body: a client gets the last byte once the entry is recorded.
        assert r.status == 200 and (await r.read()).startswith(b"-----BEGIN PGP")
    # Online too: the page says so (a client that asks again gets a fresh copy).
    page = await (await online.get("/_cachesrv/status")).text()
    assert "fresh copy" in expired_section(page)
    await online.close()

    offline = await aiohttp_client(make_app(load(ups, mode="offline")))
    page = await (await offline.get("/_cachesrv/status")).text()
    section = expired_section(page)
    assert f"{upstream.url}/dists/stable/InRelease" in section
    assert f"{upstream.url}/dists/fresh/InRelease" not in section
    assert "Acquire::Check-Valid-Until &quot;false&quot;;" in section
    assert "cachesrv client-config apt --offline" in section and "fresh copy" not in section
    metrics = await (await offline.get("/metrics")).text()
    assert "cachesrv_expired_release_files 1.0" in metrics

    # A missed index of the expired suite names the Release file and the setting.
    miss = await offline.get("/debian/dists/stable/main/binary-amd64/Packages.xz")
    assert miss.status == 404 and miss.reason == "Not in offline seed"
    text = await miss.text()
    note = next(line for line in text.splitlines() if line.startswith("note:"))
    assert f"{upstream.url}/dists/stable/InRelease" in note
    assert 'Acquire::Check-Valid-Until "false";' in note and "client-config apt" in note
    assert text.splitlines()[3].startswith("reason: never recorded")  # the format holds
    js = await (
        await offline.get(
            "/debian/dists/stable/main/binary-amd64/Packages.xz",
            headers={"Accept": "application/json"},
        )
    ).json()
    assert len(js["notes"]) == 1
    # Neither another suite nor a package file gets the note.
    for other in ("/debian/dists/fresh/main/binary-amd64/Packages", "/debian/pool/a_1_all.deb"):
        assert "note:" not in await (await offline.get(other)).text()
    assert upstream.count() == 2  # the two InRelease files, online
