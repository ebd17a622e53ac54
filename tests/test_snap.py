"""The snap upstream's pure rules: keys, routing, normalisation, error shapes."""

from __future__ import annotations

import hashlib
import json

import pytest

from cachesrv.config import UpstreamConfig
from cachesrv.errors import BadRequest, Forbidden
from cachesrv.upstreams import snap, snapasserts
from cachesrv.upstreams.router import Router

UP = UpstreamConfig(
    name="snapstore",
    kind="snap",
    url="https://api.snapcraft.io",
    file_hosts=("*.cdn.snapcraftcontent.com",),
    assertions_url="https://assertions.example.org",
)


def body(*actions: dict[str, object], context: list[dict[str, object]] | None = None) -> bytes:
    return json.dumps({"context": context or [], "actions": list(actions), "fields": []}).encode()


def key_of(raw: dict[str, object], arch: str = "amd64", **kw: object) -> str:
    (action,) = snap.parse_refresh(body(raw, **kw)).actions  # type: ignore[arg-type]
    return snap.action_key(UP, action, arch, "16")


def test_router_maps_files_assertions_and_api() -> None:
    router = Router({"snapstore": UP})
    route = router.resolve(
        "/@b1/snapstore/files/https/x.cdn.snapcraftcontent.com/download-origin/a_1.snap"
    )
    assert route.url == "https://x.cdn.snapcraftcontent.com/download-origin/a_1.snap"
    assert route.seed == "b1"
    assertion = router.resolve("/snapstore/v2/assertions/account/abc?max-format=0")
    assert assertion.url == "https://assertions.example.org/v2/assertions/account/abc?max-format=0"
    info = router.resolve("/snapstore/v2/snaps/info/hello?architecture=amd64")
    assert info.url == "https://api.snapcraft.io/v2/snaps/info/hello?architecture=amd64"
    with pytest.raises(Forbidden):
        router.resolve("/snapstore/files/https/evil.example.com/x.snap")
    with pytest.raises(BadRequest):
        router.resolve("/snapstore/files/ftp/x.cdn.snapcraftcontent.com/x.snap")


def test_action_keys_are_normalised() -> None:
    base = {"action": "download", "instance-key": "download-1", "name": "hello", "epoch": None}
    stable = key_of({**base, "channel": "stable"})
    assert stable == (
        "https://api.snapcraft.io/v2/snaps/refresh?action=download&name=hello"
        "&channel=stable&architecture=amd64&series=16"
    )
    # No channel is the store's default; instance-key and field order do not matter.
    assert key_of({**base, "instance-key": "download-7"}) == stable
    assert key_of(dict(reversed(list({**base, "channel": "stable"}.items())))) == stable
    # A bare risk may mean a default track other than latest: not merged with latest/.
    assert key_of({**base, "channel": "latest/stable"}) != stable
    assert key_of({**base, "channel": "stable"}, arch="arm64") != stable
    # A revision replaces the channel (snapd's tooling drops it too).
    assert key_of({**base, "channel": "edge", "revision": 3}).endswith(
        "action=download&name=hello&revision=3&architecture=amd64&series=16"
    )
    # A refresh action is known by the snap-id of its context entry.
    refresh = key_of(
        {"action": "refresh", "instance-key": "ID1"},
        context=[{"snap-id": "ID1", "instance-key": "ID1", "revision": 5}],
    )
    assert "action=refresh&snap-id=ID1&channel=stable" in refresh


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[]",
        body({"action": "remove", "instance-key": "x", "name": "a"}),
        body({"action": "download", "instance-key": "x"}),
        body({"action": "download", "instance-key": "x", "name": "a", "revision": "3"}),
    ],
)
def test_bad_refresh_requests_are_refused(raw: bytes) -> None:
    with pytest.raises(BadRequest):
        snap.parse_refresh(raw)


def test_miss_result_is_printed_verbatim_by_snapd() -> None:
    (action,) = snap.parse_refresh(
        body({"action": "download", "instance-key": "download-1", "name": "hello"})
    ).actions
    result = snap.miss_result(action, "amd64", "b1", "never recorded")
    assert result["result"] == "error" and result["name"] == "hello"
    # store/errors.go translates these codes into its own text; ours must not be one.
    assert result["error"]["code"] not in {
        "revision-not-found",
        "id-not-found",
        "name-not-found",
        "user-authorization-needs-refresh",
        "device-authorization-needs-refresh",
    }
    message = result["error"]["message"]
    assert message.startswith("not in offline seed: snap hello (channel stable, arch amd64)")
    assert "cachesrv snap fetch hello --channel stable --arch amd64 --seed b1" in message


def test_download_urls_rewritten_and_hashes_declared() -> None:
    result = {
        "result": "download",
        "instance-key": "download-1",
        "snap": {
            "download": {
                "url": "https://api.snapcraft.io/api/v1/snaps/download/ID_1.snap",
                "sha3-384": "AB" * 48,
                "deltas": [],
            }
        },
    }
    rows = snap.declared_hashes(result, UP)
    assert rows == [
        ("https://api.snapcraft.io/api/v1/snaps/download/ID_1.snap", "sha3_384", "ab" * 48)
    ]
    base = snap.local_base("127.0.0.1:3142", "b1", UP)
    record = json.dumps(result).encode()
    one = snap.render_result(record, "download-9", UP, base)
    assert one["instance-key"] == "download-9"
    assert one["snap"]["download"]["url"] == (
        "http://127.0.0.1:3142/@b1/snapstore/files/https/api.snapcraft.io"
        "/api/v1/snaps/download/ID_1.snap"
    )
    assert snap.render_answer([one], []) == snap.render_answer(
        [snap.render_result(record, "download-9", UP, base)], []
    )
    with pytest.raises(BadRequest):
        snap.local_base("evil.example/path?x", None, UP)


def test_assertion_helpers() -> None:
    digest = hashlib.sha3_384(b"snap").hexdigest()
    encoded = snapasserts.encode_digest(digest)
    assert len(encoded) == 64 and "=" not in encoded
    text = b"type: account-key\nformat: 1\nauthority-id: canonical\nbody-length: 3\n\nabc\n\nSIG\n"
    assert snapasserts.assertion_headers(text)["authority-id"] == "canonical"
    assert snapasserts.assertion_format(text) == 1
    assert snapasserts.max_format("https://x/v2/assertions/account/a?max-format=5") == 5
    assert snapasserts.encode_stream([b"A\n", b"B"]) == b"A\n\nB\n"
    assert snap.oops_id("a\nb\x00c é") == "a b c ?"
