"""`/_cachesrv/status`: the page a person reads at a glance.

Plain server-rendered HTML with inline CSS and no script. Every string that
comes from a client, an upstream or the store (URLs, seed names, reasons) goes
through `html.escape`; the page also forbids scripts with its CSP header.
"""

from __future__ import annotations

import datetime as dt
import html
import shlex
import time
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from .. import __version__
from ..models import Entry
from ..sources.base import Outcome
from ..sources.offline import ExpiredRelease, expired_releases
from ..upstreams.apt import OFFLINE_SETTINGS
from .keys import STATE

#: How far back the page looks for misses, and how many it lists.
MISS_WINDOW = 30 * 86400
MISS_ROWS = 25
RECENT_ROWS = 10

_CSP = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


async def status_page(request: web.Request) -> web.Response:
    state = request.app[STATE]
    idx = state.store.index
    now = time.time()
    stats = await idx.run(idx.stats)
    misses = await idx.run(idx.misses, now - MISS_WINDOW)
    seeds = await idx.run(idx.seeds)
    recent = await idx.run(idx.recent_entries, RECENT_ROWS)
    space = await idx.run(state.store.lifecycle.space)
    expired = await idx.run(expired_releases, state.store, state.config.upstreams.values(), now)
    page = render(
        mode=state.mode.value,
        uptime=now - state.started,
        stats=stats,
        upstreams={n: (u.kind, u.url) for n, u in state.config.upstreams.items()},
        totals=state.metrics.outcome_totals(),
        hit_ratio=state.metrics.hit_ratio(),
        misses=misses,
        seeds=seeds,
        recent=recent,
        now=now,
        space=space,
        expired=expired,
    )
    return web.Response(
        text=page,
        content_type="text/html",
        headers={
            "Content-Security-Policy": _CSP,
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-store",
            "Referrer-Policy": "no-referrer",
        },
    )


def render(
    *,
    mode: str,
    uptime: float,
    stats: dict[str, Any],
    upstreams: dict[str, tuple[str, str]],
    totals: dict[Outcome, float],
    hit_ratio: float | None,
    misses: list[dict[str, Any]],
    seeds: list[dict[str, Any]],
    recent: list[Entry],
    now: float,
    space: dict[str, Any] | None = None,
    expired: Sequence[ExpiredRelease] = (),
) -> str:
    """The whole page. Pure: the same data always renders the same HTML."""
    e = html.escape
    blobs = stats["blobs"]
    cards = "".join(
        f'<div class="card{" warn" if warn else ""}"><div class="big">{e(value)}</div>'
        f'<div class="label">{e(label)}</div></div>'
        for value, label, warn in (
            (
                human_bytes(stats["blob_bytes"]),
                f"store size ({blobs:,} blob{'' if blobs == 1 else 's'})",
                False,
            ),
            (f"{stats['entries']:,}", "entries", False),
            (_ratio(hit_ratio), "hit ratio since start", False),
            (f"{len(misses):,}", "URLs missed (30 days)", bool(misses)),
            (f"{stats['quarantined']:,}", "quarantined blobs", bool(stats["quarantined"])),
            *_space_cards(space),
            *(
                [(f"{len(expired):,}", "apt Release files past Valid-Until", True)]
                if expired
                else []
            ),
        )
    )
    warning = ""
    if space and space["low_space"]:
        warning = (
            '<p class="warning">Low on space: the disk has '
            f"{e(human_bytes(space['disk_free']))} free (min_free "
            f"{e(human_bytes(space['min_free']))})"
            + (
                f", the store holds {e(human_bytes(space['blob_bytes']))} of max_size "
                f"{e(human_bytes(space['max_size']))}"
                if space["max_size"]
                else ""
            )
            + ". Least recently used entries are evicted as needed; seeds and pins never "
            "are. Free space: <code>cachesrv gc</code>, <code>cachesrv seed delete NAME"
            "</code>, or raise <code>[store] max_size</code>.</p>"
        )
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f"<title>cachesrv status ({e(mode)})</title><style>{_CSS}</style></head><body>"
        "<header>"
        f'<h1>cachesrv <span class="mode mode-{e(mode)}">{e(mode)}</span></h1>'
        f'<p class="sub">version {e(__version__)} · up {e(human_duration(uptime))} · '
        f"{e(_when(now, now))}</p></header>"
        f'<div class="cards">{cards}</div>{warning}'
        + _expired_section(expired, now, offline=mode == "offline")
        + _upstreams_table(stats, upstreams)
        + _outcomes_table(totals, hit_ratio)
        + _misses_section(misses, now)
        + _recent_table(recent, now)
        + _seeds_table(seeds)
        + "<footer>Machine-readable: <a href=/metrics>/metrics</a> · "
        "<a href=/_cachesrv/api/v1/stats>api/v1/stats</a> · "
        "<a href=/_cachesrv/api/v1/misses>api/v1/misses</a> · "
        "<a href=/_cachesrv/api/v1/seeds>api/v1/seeds</a></footer>"
        "</body></html>\n"
    )


def _space_cards(space: dict[str, Any] | None) -> list[tuple[str, str, bool]]:
    if not space:
        return []
    limit = f" of {human_bytes(space['max_size'])} max" if space["max_size"] else ""
    return [
        (human_bytes(space["disk_free"]), f"disk free (min_free {human_bytes(space['min_free'])})",
         bool(space["low_space"])),
        (human_bytes(space["pinned_bytes"]), f"pinned by seeds and pins{limit}", False),
        (f"{space['evictions']:,}", f"evictions ({human_bytes(space['evicted_bytes'])} freed)",
         False),
        (f"{space['insufficient_storage']:,}", "refused: no room (507)",
         bool(space["insufficient_storage"])),
    ]  # fmt: skip


def _expired_section(expired: Sequence[ExpiredRelease], now: float, *, offline: bool) -> str:
    """The recorded Release files apt refuses as expired, and the client setting."""
    if not expired:
        return ""
    e = html.escape
    n = len(expired)
    rows = "".join(
        f"<tr><td class=url>{e(r.key.url)}</td>"
        f"<td class=when>{e(_when(r.date, now)) if r.date is not None else '–'}</td>"
        f"<td class=when>{e(_when(r.valid_until, now))}</td></tr>"
        for r in expired
    )
    online = "" if offline else " Online, a client that asks again gets a fresh copy from upstream."
    return (
        '<section class="expired"><h2>Expired apt Release files</h2>'
        f'<p class="warning">{n:,} recorded apt Release file{"" if n == 1 else "s"} '
        f"{'is' if n == 1 else 'are'} past {'its' if n == 1 else 'their'} Valid-Until: "
        "apt refuses them (<code>Release file … is expired</code>) unless the client sets "
        + " ".join(f"<code>{e(setting)}</code>" for setting in OFFLINE_SETTINGS)
        + ". Install the output of <code>cachesrv client-config apt --offline</code> on "
        "each machine (in <code>/etc/apt/apt.conf.d/</code>), or build with "
        f"<code>cachesrv wrap --offline</code>, which sets them.{e(online)}</p>"
        "<table><thead><tr><th>Release file</th><th>Date</th><th>Valid-Until</th></tr>"
        "</thead><tbody>" + rows + "</tbody></table></section>"
    )


def _upstreams_table(stats: dict[str, Any], upstreams: dict[str, tuple[str, str]]) -> str:
    e = html.escape
    by = stats["by_upstream"]
    names = sorted(set(upstreams) | set(by))
    rows = []
    for name in names:
        kind, url = upstreams.get(name, ("?", "(no longer configured)"))
        row = by.get(name, {"entries": 0, "bytes": 0})
        rows.append(
            f"<tr><td><b>{e(name)}</b></td><td>{e(kind)}</td><td class=url>{e(url)}</td>"
            f"<td class=num>{row['entries']:,}</td>"
            f"<td class=num>{e(human_bytes(row['bytes'] or 0))}</td></tr>"
        )
    return (
        "<section><h2>Store by upstream</h2><table><thead><tr><th>upstream</th><th>kind</th>"
        "<th>URL</th><th class=num>entries</th><th class=num>size</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table></section>"
    )


def _outcomes_table(totals: dict[Outcome, float], hit_ratio: float | None) -> str:
    cells = "".join(
        f'<div class="pill o-{o.value}"><span>{html.escape(o.value.replace("_", " "))}</span>'
        f"<b>{int(totals.get(o, 0)):,}</b></div>"
        for o in Outcome
    )
    return (
        "<section><h2>Requests since start</h2>"
        f'<div class="pills">{cells}</div>'
        '<p class="note">Hit ratio: hit + revalidated + stale, over every request that '
        "could have been served from the store (refusals excluded).</p></section>"
    )


def _misses_section(misses: list[dict[str, Any]], now: float) -> str:
    e = html.escape
    if not misses:
        return (
            "<section><h2>Recent misses</h2>"
            '<p class="empty">No offline misses in the last 30 days.</p></section>'
        )
    recent = sorted(misses, key=lambda m: m["last"], reverse=True)[:MISS_ROWS]
    rows = []
    for m in recent:
        command = prefetch_command(m["key"], m.get("seed"))
        seed = f'<span class="seed">@{e(m["seed"])}</span> ' if m.get("seed") else ""
        rows.append(
            f"<tr><td class=when>{e(_when(m['last'], now))}</td>"
            f"<td class=num>{m['count']:,}×</td><td>{e(str(m['reason']))}</td>"
            f"<td><div class=url>{seed}{e(m['key'])}</div>"
            f"<code class=cmd>{e(command)}</code></td></tr>"
        )
    more = (
        f'<p class="note">Showing the newest {MISS_ROWS} of {len(misses):,}.</p>'
        if len(misses) > MISS_ROWS
        else ""
    )
    return (
        "<section><h2>Recent misses</h2>"
        '<p class="note">On the online side, run the command under each URL (a click '
        "selects it), or fetch them all:</p>"
        '<code class="cmd all">cachesrv misses --since 30d --format urls &gt; misses.txt '
        "&amp;&amp; cachesrv prefetch @misses.txt</code>"
        "<table><thead><tr><th>last asked</th><th class=num>times</th><th>reason</th>"
        "<th>URL and the command that fetches it</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
        + more
        + "</section>"
    )


def _recent_table(recent: list[Entry], now: float) -> str:
    e = html.escape
    if not recent:
        return (
            "<section><h2>Recently recorded</h2>"
            '<p class="empty">Nothing recorded yet.</p></section>'
        )
    rows = "".join(
        f"<tr><td class=when>{e(_when(entry.recorded, now))}</td>"
        f"<td>{e(entry.key.upstream)}</td><td class=url>{e(entry.key.url)}</td>"
        f"<td class=num>{e(human_bytes(entry.size))}</td></tr>"
        for entry in recent
    )
    return (
        "<section><h2>Recently recorded</h2><table><thead><tr><th>recorded</th>"
        "<th>upstream</th><th>URL</th><th class=num>size</th></tr></thead><tbody>"
        + rows
        + "</tbody></table></section>"
    )


def _seeds_table(seeds: list[dict[str, Any]]) -> str:
    e = html.escape
    if not seeds:
        return (
            "<section><h2>Seeds</h2><p class=empty>No named seeds yet "
            "(<code>cachesrv wrap --seed NAME -- …</code> records one).</p></section>"
        )
    rows = "".join(
        f"<tr><td><b>{e(s['name'])}</b></td><td class=num>{s['entries']:,}</td>"
        f"<td class=num>{e(human_bytes(s['bytes'] or 0))}</td>"
        f"<td class=num>{s['dangling'] or 0:,}</td></tr>"
        for s in seeds
    )
    return (
        "<section><h2>Seeds</h2><table><thead><tr><th>seed</th><th class=num>entries</th>"
        "<th class=num>size</th><th class=num>entries gone</th></tr></thead><tbody>"
        + rows
        + "</tbody></table></section>"
    )


def prefetch_command(url: str, seed: str | None) -> str:
    """The shell command that fetches a missed URL into the store (quoted for sh)."""
    seed_opt = f" --seed {shlex.quote(seed)}" if seed else ""
    return f"cachesrv prefetch{seed_opt} {shlex.quote(url)}"


def human_bytes(n: int | float) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def _when(t: float, now: float) -> str:
    stamp = dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")
    ago = now - t
    return stamp if ago < 1 else f"{stamp} ({human_duration(ago)} ago)"


def _ratio(r: float | None) -> str:
    return "–" if r is None else f"{r:.1%}"


_CSS = """
:root{--fg:#1d2330;--muted:#5d6675;--line:#e2e6ee;--bg:#f6f7fa;--card:#fff;--accent:#2156c9}
*{box-sizing:border-box}
body{margin:0;padding:24px 32px 40px;font:14px/1.45 system-ui,-apple-system,"Segoe UI",
Roboto,"DejaVu Sans",sans-serif;color:var(--fg);background:var(--bg)}
header{display:flex;align-items:baseline;gap:18px;flex-wrap:wrap}
h1{margin:0;font-size:26px;letter-spacing:-.01em}
h2{font-size:15px;margin:0 0 10px;text-transform:uppercase;letter-spacing:.06em;color:var(--muted)}
.sub{margin:0;color:var(--muted)}
.mode{display:inline-block;font-size:13px;font-weight:700;padding:3px 10px;border-radius:999px;
vertical-align:middle;text-transform:uppercase;letter-spacing:.05em}
.mode-online{background:#dff5e4;color:#17692e}.mode-offline{background:#fff0d1;color:#8a5300}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(170px,1fr));gap:12px;margin:20px 0}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:14px 16px}
.card.warn{border-color:#f1b8b3;background:#fff6f5}
.warning{border:1px solid #f1b8b3;background:#fff6f5;color:#b3261e;padding:.6em 1em}
.card.warn .big{color:#b3261e}
.big{font-size:24px;font-weight:700}.label{color:var(--muted)}
section{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:16px 18px;
margin:0 0 16px}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:6px 10px;border-bottom:1px solid var(--line);vertical-align:top}
th{font-weight:600;color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.04em}
tbody tr:last-child td{border-bottom:0}
.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.url{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:12.5px;word-break:break-all}
.when{white-space:nowrap;color:var(--muted)}
code.cmd{display:block;margin:4px 0 2px;padding:5px 8px;background:#10151f;color:#e8edf7;
border-radius:6px;font:12.5px ui-monospace,"DejaVu Sans Mono",monospace;user-select:all;
word-break:break-all;cursor:text}
code.all{margin:0 0 12px}
.seed{color:var(--accent);font-weight:600}
.pills{display:flex;flex-wrap:wrap;gap:8px}
.pill{display:flex;gap:8px;align-items:baseline;border:1px solid var(--line);border-radius:8px;
padding:6px 10px}
.pill span{color:var(--muted)}.pill b{font-variant-numeric:tabular-nums}
.o-hit b,.o-revalidated b{color:#17692e}.o-offline_miss b,.o-upstream_error b{color:#b3261e}
.o-stale b{color:#8a5300}
.note{color:var(--muted);margin:8px 0}.empty{color:var(--muted);margin:0}
footer{color:var(--muted);margin-top:8px}a{color:var(--accent)}
"""
