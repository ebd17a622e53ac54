"""Snap Store rules (`kind = "snap"`): keys, refresh actions, download URLs, error shapes.

Everything here is pure except `post_json`, the one call that forwards a refresh POST
(the snap upstream module is where the HTTP client may be used, STYLE "Layers").
The shapes follow snapd's own store client (`canonical/snapd`):

- `store/store.go`: the endpoints (`v2/snaps/refresh`, `v2/snaps/info`, `v2/assertions`),
  the v2 device headers (`Snap-Device-Series`, `Snap-Device-Architecture`,
  `Snap-Classic`, `Snap-Device-Capabilities`, `Snap-Device-Store`) that `newRequest`
  sets, `SNAPPY_FORCE_API_URL`/`SNAPPY_FORCE_SAS_URL`, and `respToError`, which prints
  an error answer's `X-Oops-Id` header (never its reason phrase or body).
- `store/store_action.go`: the refresh request (`context`, `actions` with
  `instance-key` `download-N`/`install-N` or a context snap-id for `refresh`,
  `fields`) and the per-action results matched back by `instance-key`; an error result
  of a download/install action counts for that action only if it carries `name`.
- `store/errors.go` `translateSnapActionError`: snapd replaces the message of the
  codes `revision-not-found`, `id-not-found`, `name-not-found` and the two
  `*-authorization-needs-refresh` codes with its own text; any other code's message is
  printed verbatim. Offline misses therefore use `MISS_CODE`.
- `store/store_asserts.go`: assertions are `GET v2/assertions/<type>/<primary key>`
  with `?max-format=N` and `Accept: application/x.ubuntu.assertion`; an error body
  is decoded only if `Content-Type` is exactly `application/json` (or
  `application/problem+json`), as `{"error-list": [{"code", "message"}]}`, and code
  `not-found` becomes snapd's own "not found" error.
- `store/details_v2.go`: a result's `snap.download` holds `url`, `size`, `sha3-384` and
  `deltas` (each with its own `url` and `sha3-384`); `store/store_download.go` GETs
  that URL as is, so the rewritten URL must be absolute.
- assertions themselves (text format, formats, streams): `snapasserts.py`.

Keys (the canonical upstream URL of what was recorded):
- a refresh action's result: `<url>/v2/snaps/refresh?action=download&name=N&channel=C
  &architecture=A&series=S` (or `snap-id=` for a refresh action, `revision=` instead of
  `channel=` when a revision is asked for). The client's instance-key, the `fields`
  list, the context's current revision and the JSON spelling are not part of it.
- `/NAME/files/<scheme>/<host[:port]>/<path>` -> `<scheme>://<host>/<path>` (a
  `download.url`, allowed only on the upstream's own hosts and `file_hosts`);
- `/NAME/v2/assertions/...` -> `<assertions_url>/v2/assertions/...`;
- anything else `/NAME/<path>` -> `<url>/<path>` (info, find, ...).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import aiohttp

from ..config import UpstreamConfig
from ..errors import BadRequest, UpstreamError, UpstreamTimeout
from . import generic
from .kind import Documents, load_json, no_declared_hash
from .snapasserts import ASSERTION, ASSERTIONS_PREFIX
from .urls import file_url

#: The snap store API is not a set of index documents: `sources/snapstore.py` answers it.
documents: Documents | None = None
encoded_slash = False
artifact_kind = generic.artifact_kind
declared_hash = no_declared_hash

REFRESH_PATH = "v2/snaps/refresh"
INFO_PREFIX = "v2/snaps/info/"
FILES_PREFIX = "files/"
JSON = "application/json"
DEFAULT_SERIES = "16"
#: A code snapd does not translate (store/errors.go), so it prints our message verbatim.
MISS_CODE = "not-in-offline-seed"
#: The `fields` snapd asks for in refresh actions (jsonutil.StructFields(storeSnap)).
FIELDS = (
    *("architectures", "base", "confinement", "contact", "created-at", "description"),
    *("download", "epoch", "license", "name", "prices", "private", "publisher"),
    *("revision", "snap-id", "snap-yaml", "summary", "title", "type", "version"),
    *("website", "store-url", "media", "common-ids"),
)
#: Client headers forwarded upstream with a refresh POST. Not forwarded: credentials
#: (recorded answers are served to anyone) and `Snap-Accept-Delta-Format` (a delta
#: only applies to the asking machine's installed revision; full snaps are replayable).
_FORWARD = (
    "Accept",
    "Content-Type",
    "User-Agent",
    "Snap-Device-Series",
    "Snap-Device-Architecture",
    "Snap-Classic",
    "Snap-Device-Capabilities",
    "Snap-Device-Store",
    "Snap-Device-Location",
    "Snap-Client-User-Agent",
    "Snap-Refresh-Reason",
    "Snap-Refresh-Managed",
    "X-Ubuntu-Series",
    "X-Ubuntu-Architecture",
    "X-Ubuntu-Classic",
    "X-Ubuntu-Store",
)
_HOST = re.compile(r"[A-Za-z0-9.\-]+(:\d{1,5})?|\[[0-9A-Fa-f:.]+\](:\d{1,5})?")
_MACHINES = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "armhf",
    "armv8l": "armhf",
    "i686": "i386",
    "i386": "i386",
    "ppc64le": "ppc64el",
    "s390x": "s390x",
    "riscv64": "riscv64",
}

Headers = tuple[tuple[str, str], ...]


# -- routing ------------------------------------------------------------------------


def key_url(upstream: UpstreamConfig, path: str) -> str:
    """The canonical URL for a path under a snap upstream (see module doc)."""
    if path.startswith(FILES_PREFIX):
        return file_url(upstream, path[len(FILES_PREFIX) :])
    if path.startswith(ASSERTIONS_PREFIX):
        return f"{assertions_base(upstream)}/{path}"
    return f"{upstream.base}/{path}" if path else upstream.base + "/"


def assertions_base(upstream: UpstreamConfig) -> str:
    return (upstream.assertions_url or upstream.url).rstrip("/")


def endpoint(path: str) -> str:
    """`refresh`, `info`, `assertion`, `file` or `other`, by the path under the upstream."""
    plain = path.split("?", 1)[0]
    if plain == REFRESH_PATH:
        return "refresh"
    if plain.startswith(INFO_PREFIX):
        return "info"
    if plain.startswith(ASSERTIONS_PREFIX):
        return "assertion"
    if plain.startswith(FILES_PREFIX):
        return "file"
    return "other"


def upstream_request(url: str) -> tuple[str, dict[str, str]]:
    """Headers the store wants on a GET of a recorded key (store.go `newRequest`): the
    assertion media type for assertions; JSON and the device series (and architecture,
    which info and find carry in their query) for the v2 API."""
    path = urlsplit(url).path
    if "/v2/assertions/" in path:
        return url, {"Accept": ASSERTION}
    if "/v2/" in path:
        headers = {"Accept": JSON, "Snap-Device-Series": DEFAULT_SERIES}
        arch = dict(parse_qsl(urlsplit(url).query)).get("architecture")
        if arch:
            headers["Snap-Device-Architecture"] = arch
        return url, headers
    return url, {}


def forward_headers(client: Headers) -> dict[str, str]:
    """The client's headers worth forwarding with a refresh POST (see `_FORWARD`)."""
    wanted = {h.lower(): h for h in _FORWARD}
    out = {wanted[k.lower()]: v for k, v in client if k.lower() in wanted}
    out.setdefault("Content-Type", JSON)
    out.setdefault("Accept", JSON)
    out["Accept-Encoding"] = "identity"
    return out


def header(client: Headers, name: str) -> str | None:
    lname = name.lower()
    return next((v for k, v in client if k.lower() == lname), None)


def device(client: Headers) -> tuple[str, str]:
    """(architecture, series) the client declares (v2 headers, else the v1 ones)."""
    arch = header(client, "Snap-Device-Architecture") or header(client, "X-Ubuntu-Architecture")
    series = header(client, "Snap-Device-Series") or header(client, "X-Ubuntu-Series")
    return (arch or "").strip().lower(), (series or DEFAULT_SERIES).strip()


def snap_arch(machine: str) -> str:
    """The snap (dpkg) architecture name for `platform.machine()`."""
    return _MACHINES.get(machine.lower(), machine.lower())


# -- refresh actions ------------------------------------------------------------------


@dataclass(frozen=True)
class Action:
    """One action of a refresh request, with what its key is made of."""

    action: str  # download | install | refresh
    instance_key: str
    name: str  # may be "" for a refresh action (the store knows it by snap-id)
    snap_id: str
    channel: str
    revision: int | None

    @property
    def label(self) -> str:
        return self.name or self.snap_id


@dataclass(frozen=True)
class RefreshRequest:
    actions: tuple[Action, ...]
    #: context snap-ids by instance-key (a refresh action names its snap this way)
    context: dict[str, str]
    #: keys of `fetch-assertions` actions (validation sets): forwarded online, never
    #: recorded (their answers are only URLs of assertion streams)
    assertion_groups: tuple[str, ...] = ()


def normalize_channel(channel: str) -> str:
    """Equal spellings of one channel: "" (the store's default) is "stable". A bare
    risk stays bare: with `Snap-Device-Capabilities: default-tracks` it means the snap's
    default track, which need not be `latest`."""
    channel = channel.strip()
    return channel or "stable"


def parse_refresh(body: bytes | None) -> RefreshRequest:
    """Parse a `POST v2/snaps/refresh` body (store_action.go `snapActionRequest`)."""
    try:
        doc = load_json(body or b"")
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("refresh request body is not JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("actions", []), list):
        raise BadRequest("refresh request must be a JSON object with an 'actions' list")
    contexts = doc.get("context") or []
    if not isinstance(contexts, list):
        raise BadRequest("refresh request 'context' must be a list")
    context: dict[str, str] = {}
    for cur in contexts:
        if isinstance(cur, dict) and isinstance(cur.get("instance-key"), str):
            context[cur["instance-key"]] = str(cur.get("snap-id") or "")
    actions = []
    groups = []
    for raw in doc.get("actions") or []:
        if not isinstance(raw, dict):
            raise BadRequest("each refresh action must be a JSON object")
        kind = raw.get("action")
        if kind == "fetch-assertions":
            groups.append(str(raw.get("key") or ""))
            continue
        if kind not in ("download", "install", "refresh"):
            raise BadRequest(f"refresh action {kind!r} is not supported by cachesrv")
        ik = str(raw.get("instance-key") or "")
        snap_id = str(raw.get("snap-id") or "")
        if not snap_id and kind == "refresh":
            snap_id = context.get(ik, "")
        name = str(raw.get("name") or "")
        if not name and not snap_id:
            raise BadRequest(f"refresh action {ik!r} names no snap (name or snap-id)")
        rev = raw.get("revision")
        if rev is not None and (not isinstance(rev, int) or isinstance(rev, bool)):
            raise BadRequest(f"refresh action {ik!r}: revision must be an integer")
        revision = rev if rev else None
        # snapd drops the channel when a revision is asked for (tooling.DownloadSnap).
        channel = "" if revision else normalize_channel(str(raw.get("channel") or ""))
        actions.append(Action(kind, ik, name, snap_id, channel, revision))
    return RefreshRequest(tuple(actions), context, tuple(groups))


def action_key(upstream: UpstreamConfig, action: Action, arch: str, series: str) -> str:
    """The normalised key of one action's result (see module doc)."""
    fields: list[tuple[str, str]] = [("action", action.action)]
    if action.action == "refresh" or not action.name:
        fields.append(("snap-id", action.snap_id))
    else:
        fields.append(("name", action.name))
    if action.revision:
        fields.append(("revision", str(action.revision)))
    else:
        fields.append(("channel", action.channel))
    fields += [("architecture", arch), ("series", series)]
    return f"{upstream.base}/{REFRESH_PATH}?{urlencode(fields, safe='/')}"


def key_fields(key: str) -> dict[str, str]:
    """The fields of a refresh action key (`action_key`)."""
    return dict(parse_qsl(urlsplit(key).query))


def describe(action: Action, arch: str) -> str:
    where = f"revision {action.revision}" if action.revision else f"channel {action.channel}"
    return f"snap {action.label} ({where}, arch {arch or 'unknown'})"


def fetch_command(action: Action, arch: str, seed: str | None) -> str:
    opts = f" --revision {action.revision}" if action.revision else f" --channel {action.channel}"
    opts += f" --arch {arch}" if arch else ""
    opts += f" --seed {seed}" if seed else ""
    return f"cachesrv snap fetch {action.label}{opts}"


def miss_result(action: Action, arch: str, seed: str | None, reason: str) -> dict[str, Any]:
    """A per-action error for an offline miss; snapd prints its message verbatim."""
    seed_note = f" of seed {seed!r}" if seed else ""
    message = (
        f"not in offline seed: {describe(action, arch)}; {reason}{seed_note}. "
        f"Record it online with `{fetch_command(action, arch, seed)}`, then "
        "`cachesrv seed export` / `cachesrv seed import` it here"
    )
    result: dict[str, Any] = {
        "result": "error",
        "instance-key": action.instance_key,
        "error": {"code": MISS_CODE, "message": message},
    }
    if action.name:
        result["name"] = action.name
    if action.snap_id:
        result["snap-id"] = action.snap_id
    return result


def group_miss_result(group: str) -> dict[str, Any]:
    """Offline answer to a `fetch-assertions` action (store_action.go: its errors come
    in the result's own `error-list`)."""
    message = (
        "not in offline seed: assertions fetched through refresh actions (validation "
        "sets) are not recorded; fetch them online with `snap known --remote`"
    )
    return {
        "result": "fetch-assertions",
        "key": group,
        "error-list": [{"code": MISS_CODE, "message": message}],
    }


def refresh_body(name: str, channel: str, revision: int | None) -> bytes:
    """A one-action download request exactly as snapd 2.57+ sends it (store_action.go)."""
    action: dict[str, Any] = {"action": "download", "instance-key": "download-1", "name": name}
    if revision:
        action["revision"] = revision
    elif channel:
        action["channel"] = channel
    action["epoch"] = None
    doc = {"context": [], "actions": [action], "fields": list(FIELDS)}
    return json.dumps(doc, separators=(",", ":")).encode()


def device_headers(arch: str, series: str = DEFAULT_SERIES) -> Headers:
    """The headers snapd's `newRequest` sets on v2 requests (store.go)."""
    return (
        ("Accept", JSON),
        ("Content-Type", JSON),
        ("Snap-Device-Series", series),
        ("Snap-Device-Architecture", arch),
        ("Snap-Classic", "true"),
        ("Snap-Device-Capabilities", "default-tracks"),
    )


# -- rewriting download URLs ----------------------------------------------------------


def local_base(host: str | None, seed: str | None, upstream: UpstreamConfig) -> str:
    """Absolute URL prefix of this upstream on cachesrv, as the client reached it."""
    if not host or not _HOST.fullmatch(host):
        raise BadRequest("a snap store request needs a plain Host header")
    return f"http://{host}" + (f"/@{seed}" if seed else "") + f"/{upstream.name}"


def local_file_url(upstream: UpstreamConfig, base: str, url: str) -> str | None:
    """`download.url` through cachesrv, or None when its host is not allowed."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not upstream.allows_host(parts.netloc):
        return None
    query = f"?{parts.query}" if parts.query else ""
    return f"{base}/files/{parts.scheme}/{parts.netloc}{parts.path or '/'}{query}"


def _downloads(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Every `download` object of a refresh result or an info answer (details_v2.go)."""
    found: list[dict[str, Any]] = []
    snaps = [doc.get("snap"), *_objects(doc.get("channel-map"))]
    for s in snaps:
        if isinstance(s, dict) and isinstance(s.get("download"), dict):
            dl = s["download"]
            found.append(dl)
            found += _objects(dl.get("deltas"))
    return found


def _objects(value: object) -> list[dict[str, Any]]:
    """The objects of a list in an answer; none if it is not a list."""
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def declared_hashes(doc: dict[str, Any], upstream: UpstreamConfig) -> list[tuple[str, str, str]]:
    """(download key, "sha3_384", hex) for every allowed download URL in `doc`."""
    rows = []
    for dl in _downloads(doc):
        url, sha3 = dl.get("url"), dl.get("sha3-384")
        if not isinstance(url, str) or not isinstance(sha3, str):
            continue
        parts = urlsplit(url)
        if parts.scheme in ("http", "https") and upstream.allows_host(parts.netloc):
            rows.append((url, "sha3_384", sha3.lower()))
    return rows


def rewrite_downloads(doc: dict[str, Any], upstream: UpstreamConfig, base: str) -> None:
    """Point every allowed download URL in `doc` at cachesrv (in place)."""
    for dl in _downloads(doc):
        url = dl.get("url")
        if isinstance(url, str) and (local := local_file_url(upstream, base, url)):
            dl["url"] = local


def render_result(
    record: bytes, instance_key: str, upstream: UpstreamConfig, base: str
) -> dict[str, Any]:
    """A recorded action result, answered to this request's action."""
    result = load_json(record)
    if not isinstance(result, dict):
        raise ValueError("a recorded refresh result is not a JSON object")
    result["instance-key"] = instance_key
    rewrite_downloads(result, upstream, base)
    return result


def rewrite_stream_urls(result: dict[str, Any], upstream: UpstreamConfig, base: str) -> None:
    """Point a `fetch-assertions` result's stream URLs at cachesrv (in place)."""
    prefix = assertions_base(upstream) + "/"
    urls = result.get("assertion-stream-urls")
    if isinstance(urls, list):
        result["assertion-stream-urls"] = [
            base + "/" + u[len(prefix) :] if isinstance(u, str) and u.startswith(prefix) else u
            for u in urls
        ]


def render_answer(results: list[dict[str, Any]], error_list: list[Any]) -> bytes:
    """The refresh answer (store_action.go `snapActionResultList`). Deterministic, so a
    replay of the same request is byte-identical to the answer given when recording."""
    return json.dumps({"error-list": error_list, "results": results}).encode()


def render_info(body: bytes, upstream: UpstreamConfig, base: str) -> bytes:
    doc = load_json(body)
    if isinstance(doc, dict):
        rewrite_downloads(doc, upstream, base)
    return json.dumps(doc).encode()


# -- errors ---------------------------------------------------------------------------


def oops_id(text: str) -> str:
    """A diagnostic fit for the `X-Oops-Id` header snapd prints (one ASCII line)."""
    text = text.encode("ascii", "replace").decode()
    return re.sub(r"[\x00-\x1f\x7f]+", " ", text).strip()[:1000]


def error_list_body(code: str, message: str) -> bytes:
    """The store's v2 error shape (store_asserts.go `assertionSvcError`)."""
    return json.dumps({"error-list": [{"code": code, "message": message}]}).encode()


# -- the one network call -------------------------------------------------------------


async def post_json(
    session: aiohttp.ClientSession,
    name: str,
    url: str,
    body: bytes,
    headers: dict[str, str],
    limit: int = 32 << 20,
) -> tuple[int, dict[str, str], bytes]:
    """POST a refresh request upstream; (status, headers, body). No redirects: the store
    answers this endpoint itself. Network failures raise `UpstreamError`."""
    try:
        async with session.post(url, data=body, headers=headers, allow_redirects=False) as resp:
            data = await resp.content.read(limit + 1)
            if len(data) > limit:
                raise UpstreamError(name, url, f"answer larger than {limit} bytes")
            return resp.status, dict(resp.headers), data
    except (TimeoutError, aiohttp.ServerTimeoutError):
        raise UpstreamTimeout(name, url, "timed out") from None
    except aiohttp.ClientError as exc:
        raise UpstreamError(name, url, f"{type(exc).__name__}: {exc}") from None
