"""The access log of the real `cachesrv serve`: one line per request, text or JSON."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cachesrv.web.accesslog import redact
from tests.conftest import CachesrvProcess, run_cli
from tests.fakes.upstream import FakeUpstream
from tests.web.test_proxy import put

TOKEN = "log-test-token-0123456789abcdef"


def fetch(url: str, *, method: str = "GET", token: str | None = None) -> int:
    req = urllib.request.Request(url, method=method)
    req.add_header("User-Agent", 'tester/1.0 "quoted"')
    if token:
        req.add_header("Authorization", f"Bearer {token}")
        req.add_header("Content-Type", "application/json")
        req.data = b'{"mode": "offline"}'
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            r.read()
            return int(r.status)
    except urllib.error.HTTPError as exc:
        exc.read()
        return exc.code


def exercise(server: CachesrvProcess, upstream: FakeUpstream) -> None:
    """A recording, a hit, a refusal, then offline: an offline miss."""
    base = server.url
    assert fetch(f"{base}/files/pool/a.tar.gz") == 200
    assert fetch(f"{base}/files/pool/a.tar.gz") == 200
    assert fetch(f"{base}/nowhere/x") == 403
    assert fetch(f"{base}/_cachesrv/api/v1/mode", method="POST", token=TOKEN) == 200
    assert fetch(f"{base}/files/pool/b.tar.gz") == 404


def test_json_log_lines_parse_as_json(
    cachesrv: Callable[..., CachesrvProcess],
    write_config: Callable[..., Path],
    upstream: FakeUpstream,
    tmp_path: Path,
) -> None:
    body = put(upstream, "pool/a.tar.gz", b"a" * 1234)
    config = write_config({"files": ("generic", upstream.url)}, admin_token=TOKEN)
    server = cachesrv("--config", config, "--store", tmp_path / "store", "--log-format", "json")
    exercise(server, upstream)
    assert server.stop() == 0

    lines = [ln for ln in server.output().splitlines() if ln.strip()]
    records: list[dict[str, Any]] = [json.loads(ln) for ln in lines]  # every line, not some
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    access = [r for r in records if r["logger"] == "cachesrv.access"]
    assert [
        (r["method"], r["target"], r["status"], r["outcome"], r["upstream"]) for r in access
    ] == [
        ("GET", "/files/pool/a.tar.gz", 200, "recorded", "files"),
        ("GET", "/files/pool/a.tar.gz", 200, "hit", "files"),
        ("GET", "/nowhere/x", 403, "refused", None),
        ("POST", "/_cachesrv/api/v1/mode", 200, None, None),
        ("GET", "/files/pool/b.tar.gz", 404, "offline_miss", "files"),
    ]
    assert access[0]["bytes"] == access[1]["bytes"] == len(body)
    assert all(isinstance(r["duration"], float) and r["duration"] >= 0 for r in access)
    assert all(r["remote"] == "127.0.0.1" for r in access)
    assert access[0]["user_agent"] == 'tester/1.0 "quoted"'
    # The start-up line is JSON too, and still says where the server listens.
    assert any("serving http://127.0.0.1:" in r["message"] for r in records)


def test_text_log_has_one_line_per_request(
    cachesrv: Callable[..., CachesrvProcess],
    write_config: Callable[..., Path],
    upstream: FakeUpstream,
    tmp_path: Path,
) -> None:
    put(upstream, "pool/a.tar.gz", b"a" * 1234)
    config = write_config(
        {"files": ("generic", upstream.url)}, admin_token=TOKEN, log_format="json"
    )
    # --log-format beats server.log_format.
    server = cachesrv("--config", config, "--store", tmp_path / "store", "--log-format", "text")
    exercise(server, upstream)
    assert server.stop() == 0
    access = [ln for ln in server.output().splitlines() if " cachesrv.access: " in ln]
    assert len(access) == 5
    pattern = re.compile(
        r'127\.0\.0\.1 "(?P<method>[A-Z]+) (?P<target>\S+)" (?P<status>\d{3}) (?P<bytes>\d+) '
        r'(?P<duration>\d+\.\d{3})s (?P<outcome>\S+) (?P<upstream>\S+) "(?P<ua>.*)"$'
    )
    parsed = [pattern.search(ln) for ln in access]
    assert all(parsed), access
    fields = [(m["status"], m["outcome"], m["upstream"]) for m in parsed if m]
    assert fields == [
        ("200", "recorded", "files"),
        ("200", "hit", "files"),
        ("403", "refused", "-"),
        ("200", "-", "-"),
        ("404", "offline_miss", "files"),
    ]
    first = parsed[0]
    assert first is not None and first["bytes"] == "1234"
    # Quotes inside a field are escaped, so the line still splits the same way.
    assert first["ua"] == 'tester/1.0 \\"quoted\\"'


def test_bad_log_format_is_one_clear_error(tmp_path: Path) -> None:
    result = run_cli("serve", "--store", tmp_path, "--log-format", "xml", check=False)
    assert result.returncode != 0
    assert "--log-format must be text or json" in result.stderr
    assert "Traceback" not in result.stderr


def test_credentials_in_urls_are_redacted_from_the_log() -> None:
    assert redact("/_cachesrv/api/v1/stats?token=s3cret&x=1") == (
        "/_cachesrv/api/v1/stats?token=[redacted]&x=1"
    )
    assert redact("http://cdn.example/f.tgz?Signature=abc#frag") == (
        "http://cdn.example/f.tgz?Signature=[redacted]#frag"
    )
    assert redact("/debian/pool/tokens.deb?tokenish=1") == "/debian/pool/tokens.deb?tokenish=1"
