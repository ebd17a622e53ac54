"""`cachesrv snap fetch` and `cachesrv snap files`: one snap, as `snap download` gets it.

`fetch_snap` (online) asks the store exactly what `snap download NAME` asks (snapd's
`store/tooling/tooling.go` `DownloadSnap`: one `download` refresh action, then a GET of
`download.url`; `cmd/snap/cmd_download.go` then fetches the assertions) through the same
`SnapStore` decorator the server uses, so the refresh answer, the `.snap` (verified
against its sha3-384) and the assertion chain are recorded under the keys a real client
hits. The chain is what snapd's assertion fetcher retrieves (`asserts/fetcher.go`, with
the prerequisites of `asserts/snap_asserts.go`): snap-revision, its snap-declaration,
the account-key of each signing key, and the developer's and publisher's accounts. The
root keys and the `canonical` account are built into snapd (`asserts/sysdb`) and are
never fetched.

`snap_files` (offline, from the store alone) writes `NAME_REV.snap` and
`NAME_REV.assert`, the pair `snap ack` and `snap install` take on a machine with no
store at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .config import Config, UpstreamConfig
from .errors import CachesrvError, ConfigError, NotFound
from .metrics import Metrics
from .sources.base import Generated, Request, Stored
from .sources.online import OnlineSource, make_session
from .sources.snapstore import SnapStore
from .store import Store
from .upstreams import snap, snapasserts
from .upstreams.router import Router


@dataclass
class SnapFetchReport:
    name: str
    revision: int = 0
    sha3_384: str = ""
    size: int = 0
    recorded: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"snap {self.name} revision {self.revision}: {self.size} bytes, "
            f"{len(self.recorded)} entries recorded or refreshed"
        )


def snap_upstream(config: Config, name: str | None = None) -> UpstreamConfig:
    """The snap upstream to use: the one named, else the only (or `snapstore`) one."""
    snaps = {n: u for n, u in config.upstreams.items() if u.kind == "snap"}
    if name is not None:
        if name not in snaps:
            raise ConfigError(f"no snap upstream named {name!r} (have: {', '.join(snaps)})")
        return snaps[name]
    if len(snaps) == 1:
        return next(iter(snaps.values()))
    if "snapstore" in snaps:
        return snaps["snapstore"]
    raise ConfigError(
        "no snap upstream configured" if not snaps else "several snap upstreams; pick --upstream"
    )


async def fetch_snap(
    config: Config,
    name: str,
    *,
    channel: str = "",
    arch: str,
    revision: int | None = None,
    seed: str | None = None,
    upstream_name: str | None = None,
) -> SnapFetchReport:
    """Record one snap, its refresh answer and its assertion chain (see module doc)."""
    upstream = snap_upstream(config, upstream_name)
    router = Router(config.upstreams, config.server.max_url_length, config.tls)
    prefix = (f"/@{seed}" if seed else "") + f"/{upstream.name}"
    store = Store(config.store, config.limits)
    report = SnapFetchReport(name)
    try:
        async with make_session(config) as session:
            metrics = Metrics()
            online = OnlineSource(
                store,
                session,
                metrics,
                limits=config.fetch,
                headers_timeout=config.server.read_timeout,
            )
            source = SnapStore(online, store, offline=False, session=session, metrics=metrics)
            try:
                await _fetch(
                    source, router, prefix, upstream, name, channel, arch, revision, report
                )
            finally:
                await source.close()
    finally:
        store.close()
    return report


async def _fetch(
    source: SnapStore,
    router: Router,
    prefix: str,
    upstream: UpstreamConfig,
    name: str,
    channel: str,
    arch: str,
    revision: int | None,
    report: SnapFetchReport,
) -> None:
    body = snap.refresh_body(name, channel, revision)
    route = router.resolve(f"{prefix}/{snap.REFRESH_PATH}")
    headers = (*snap.device_headers(arch), ("Host", "localhost"))
    answer = await source.open(
        Request(route=route, method="POST", body=body, headers=headers, user_agent="cachesrv")
    )
    assert isinstance(answer, Generated)
    if answer.status != 200:
        raise CachesrvError(f"the store refused the refresh request: {answer.status}")
    results = json.loads(answer.body).get("results") or []
    result = results[0] if results else {}
    if result.get("result") == "error" or not isinstance(result.get("snap"), dict):
        error = result.get("error") or {}
        raise NotFound(
            f"the store has no snap {name!r} for {arch} "
            + (f"at revision {revision}" if revision else f"in channel {channel or 'stable'}")
            + f": {error.get('code', 'no result')}: {error.get('message', '')}".rstrip(": ")
        )
    action = snap.parse_refresh(body).actions[0]
    key = snap.action_key(upstream, action, arch, snap.DEFAULT_SERIES)
    report.recorded.append(key)
    record = _record_of(source.store, key)
    info = record["snap"]
    download = info.get("download") or {}
    url, sha3 = str(download.get("url", "")), str(download.get("sha3-384", "")).lower()
    if not url or not sha3:
        raise CachesrvError(f"the store's answer for {name!r} has no download URL or sha3-384")
    report.revision, report.sha3_384 = int(info.get("revision", 0)), sha3
    parts = urlsplit(url)
    query = f"?{parts.query}" if parts.query else ""
    file_route = router.resolve(f"{prefix}/files/{parts.scheme}/{parts.netloc}{parts.path}{query}")
    stored = await source.open(Request(route=file_route, needs_complete=True))
    assert isinstance(stored, Stored)
    report.size = stored.entry.size
    report.recorded.append(file_route.url)

    async def get(kind: str, *key: str) -> bytes:
        r = router.resolve(f"{prefix}/{snapasserts.assertion_path(kind, *key)}")
        got = await source.open(Request(route=r, needs_complete=True, accept=snapasserts.ASSERTION))
        if not isinstance(got, Stored):
            raise NotFound(f"the store has no {kind} assertion {'/'.join(key)}")
        report.recorded.append(r.url)
        return got.path.read_bytes()

    await _chain(get, sha3)


async def _chain(get: Callable[..., Any], sha3: str) -> list[bytes]:
    """The assertions of one snap, in the order snapd's fetcher saves them."""
    rev = await get("snap-revision", snapasserts.encode_digest(sha3))
    decl = await get("snap-declaration", *_declaration_key(rev))
    signers = [await get(*ref) for ref in _signers(rev, decl)]
    return [*signers, decl, rev]


def _declaration_key(rev: bytes) -> tuple[str, str]:
    """snap-revision's first prerequisite (asserts/snap_asserts.go `Prerequisites`)."""
    return snap.DEFAULT_SERIES, snapasserts.assertion_headers(rev).get("snap-id", "")


def _signers(rev: bytes, decl: bytes) -> list[tuple[str, str]]:
    """The account-keys that signed them, then the developer's and publisher's accounts."""
    rev_h, decl_h = snapasserts.assertion_headers(rev), snapasserts.assertion_headers(decl)
    keys = _unique(rev_h.get("sign-key-sha3-384"), decl_h.get("sign-key-sha3-384"))
    accounts = _unique(decl_h.get("publisher-id"), rev_h.get("developer-id"))
    return [("account-key", k) for k in keys] + [("account", a) for a in accounts]


def _unique(*values: str | None) -> list[str]:
    return list(dict.fromkeys(v for v in values if v))


def _record_of(store: Store, key: str) -> dict[str, Any]:
    entry = store.index.get(key)
    if entry is None:
        raise CachesrvError(f"internal error: refresh answer not recorded under {key}")
    doc: dict[str, Any] = json.loads(store.blobs.path(entry.digest).read_bytes())
    return doc


# -- snap files (offline) ---------------------------------------------------------------


@dataclass(frozen=True)
class SnapFiles:
    snap: Path
    assertions: Path
    revision: int
    channel: str
    arch: str


def snap_files(
    config: Config,
    name: str,
    dest: Path,
    *,
    channel: str | None = None,
    arch: str | None = None,
    revision: int | None = None,
    upstream_name: str | None = None,
) -> SnapFiles:
    """Write `NAME_REV.snap` and `NAME_REV.assert` from the store (no network).

    Picks the most recently recorded download of NAME that matches the filters; the
    `.snap` is checked against the sha3-384 the store declared before it is written.
    """
    upstream = snap_upstream(config, upstream_name)
    store = Store(config.store, config.limits)
    try:
        record, fields = _pick_record(store, upstream, name, channel, arch, revision)
        info = record["snap"]
        rev = int(info.get("revision", 0))
        sha3 = str(info["download"]["sha3-384"]).lower()
        fix = (
            f"cachesrv snap fetch {name} --revision {rev} --arch {fields.get('architecture')}"
            " (online), then seed export/import"
        )
        blob = _stored_blob(store, str(info["download"]["url"]))
        if blob is None or _sha3(blob) != sha3:
            raise NotFound(f"the .snap of {name} revision {rev} is not in the store; {fix}")

        def get(kind: str, *key: str) -> bytes:
            text = _stored_assertion(store, upstream, kind, *key)
            if text is None:
                raise NotFound(
                    f"assertion {kind}/{'/'.join(key)} of {name} is not in the store; {fix}"
                )
            return text

        chain = _run_sync_chain(get, sha3)
        dest.mkdir(parents=True, exist_ok=True)
        base = f"{name}_{rev}"
        snap_path, assert_path = dest / f"{base}.snap", dest / f"{base}.assert"
        with blob.open("rb") as src:
            _write(snap_path, lambda f: shutil.copyfileobj(src, f))
        _write(assert_path, lambda f: f.write(snapasserts.encode_stream(chain)))
    finally:
        store.close()
    return SnapFiles(
        snap_path, assert_path, rev, fields.get("channel", ""), fields.get("architecture", "")
    )


def _pick_record(
    store: Store,
    upstream: UpstreamConfig,
    name: str,
    channel: str | None,
    arch: str | None,
    revision: int | None,
) -> tuple[dict[str, Any], dict[str, str]]:
    prefix = f"{upstream.base}/{snap.REFRESH_PATH}?"
    wanted_channel = snap.normalize_channel(channel) if channel is not None else None
    best: tuple[float, dict[str, Any], dict[str, str]] | None = None
    seen: list[str] = []
    for entry in store.index.entries(prefix):
        fields = snap.key_fields(entry.key.url)
        if fields.get("name") != name or fields.get("action") not in ("download", "install"):
            continue
        if arch and fields.get("architecture") != arch:
            continue
        if wanted_channel is not None and fields.get("channel") != wanted_channel:
            continue
        path = store.blobs.path(entry.digest)
        if not path.is_file():
            continue
        doc = json.loads(path.read_bytes())
        info = doc.get("snap") if doc.get("result") != "error" else None
        if not isinstance(info, dict) or not isinstance(info.get("download"), dict):
            continue
        seen.append(f"revision {info.get('revision')} ({entry.key.url})")
        if revision is not None and info.get("revision") != revision:
            continue
        if best is None or entry.recorded > best[0]:
            best = (entry.recorded, doc, fields)
    if best is None:
        have = "; recorded: " + ", ".join(seen) if seen else ""
        raise NotFound(
            f"no recorded download of snap {name!r} matches{have}; record it online with "
            f"`cachesrv snap fetch {name}`"
        )
    return best[1], best[2]


def _stored_blob(store: Store, url: str) -> Path | None:
    entry = store.index.get(url)
    if entry is None or store.index.is_quarantined(entry.digest):
        return None
    path = store.blobs.path(entry.digest)
    return path if path.is_file() else None


def _stored_assertion(store: Store, upstream: UpstreamConfig, kind: str, *key: str) -> bytes | None:
    """A recorded assertion, whatever `max-format` it was recorded under."""
    rel = f"{snapasserts.ASSERTIONS_PREFIX}{kind}/{'/'.join(key)}"
    plain = f"{snap.assertions_base(upstream)}/{rel}"
    candidates = [store.index.get(plain), *store.index.entries(plain + "?")]
    for entry in candidates:
        if entry is None or entry.key.url.split("?", 1)[0] != plain:
            continue
        path = _stored_blob(store, entry.key.url)
        if path is not None:
            return path.read_bytes()
    return None


def _run_sync_chain(get: Callable[..., bytes], sha3: str) -> list[bytes]:
    """`_chain` over a synchronous getter (the store is local)."""
    rev = get("snap-revision", snapasserts.encode_digest(sha3))
    decl = get("snap-declaration", *_declaration_key(rev))
    return [*(get(*ref) for ref in _signers(rev, decl)), decl, rev]


def _sha3(path: Path) -> str:
    h = hashlib.sha3_384()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _write(path: Path, fill: Callable[[Any], object]) -> None:
    """Write beside the target, fsync, rename: never a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
