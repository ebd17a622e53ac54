"""Prometheus metrics, one registry per server (no process globals).

What moves where:
- `cachesrv_requests_total{outcome,upstream}`: one per proxy request, counted once
  by the web error middleware, whatever the answer (hit, recorded, revalidated,
  stale, offline_miss, refused, upstream_error, passthrough).
- `cachesrv_served_bytes_total{upstream}` and `cachesrv_request_duration_seconds`:
  by the access logger, after the response went out.
- `cachesrv_fetched_bytes_total`, `cachesrv_upstream_latency_seconds`,
  `cachesrv_fetches_in_flight`, `cachesrv_stale_served_total`: by the online source.
- `cachesrv_store_*` and `cachesrv_offline`: read from the index at scrape time.
- `cachesrv_expired_release_files`: recorded apt `InRelease`/`Release` files past
  their `Valid-Until` (apt refuses them offline unless told not to), at scrape time.
- `cachesrv_store_max_bytes`, `..._disk_free_bytes`, `..._min_free_bytes`,
  `..._pinned_bytes`, and the lifecycle counters (`cachesrv_evictions_total`,
  `cachesrv_evicted_bytes_total`, `cachesrv_insufficient_storage_total`,
  `cachesrv_gc_runs_total`, `cachesrv_gc_freed_bytes_total`): from the store's
  `Lifecycle` at scrape time (counters of this process).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .sources.base import Outcome

#: Outcomes answered from the store without fetching a body upstream.
SERVED_FROM_STORE = frozenset({Outcome.HIT, Outcome.REVALIDATED, Outcome.STALE})
#: Outcomes that count towards the hit ratio's denominator (refusals never could hit).
CACHEABLE = SERVED_FROM_STORE | {
    Outcome.RECORDED,
    Outcome.OFFLINE_MISS,
    Outcome.UPSTREAM_ERROR,
    Outcome.PASSTHROUGH,
}

#: The Prometheus text exposition format that `generate_latest` writes.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0)


class Metrics:
    """The counters a site mirror's operator watches. Exposed at `/metrics`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "cachesrv_requests", "Proxy requests by outcome", ["outcome", "upstream"], registry=r
        )
        self.bytes_served = Counter(
            "cachesrv_served_bytes",
            "Body bytes sent to proxy clients (Content-Length when declared)",
            ["upstream"],
            registry=r,
        )
        self.request_duration = Histogram(
            "cachesrv_request_duration_seconds",
            "Time from request to the last byte sent, by outcome",
            ["outcome"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.bytes_fetched = Counter(
            "cachesrv_fetched_bytes", "Body bytes received from upstreams", ["upstream"], registry=r
        )
        self.upstream_latency = Histogram(
            "cachesrv_upstream_latency_seconds",
            "Time to upstream response headers",
            ["upstream"],
            registry=r,
        )
        self.in_flight = Gauge("cachesrv_fetches_in_flight", "Upstream fetches running", registry=r)
        self.stale = Counter(
            "cachesrv_stale_served",
            "Stale copies served because upstream failed",
            ["upstream"],
            registry=r,
        )
        self.store_bytes = Gauge("cachesrv_store_bytes", "Bytes of blobs in the store", registry=r)
        self.store_blobs = Gauge("cachesrv_store_blobs", "Blobs in the store", registry=r)
        self.store_entries = Gauge(
            "cachesrv_store_entries", "Entries in the store", ["upstream"], registry=r
        )
        self.store_entry_bytes = Gauge(
            "cachesrv_store_entry_bytes",
            "Bytes of the entries of each upstream (before deduplication)",
            ["upstream"],
            registry=r,
        )
        self.quarantined = Gauge(
            "cachesrv_store_quarantined_blobs", "Blobs quarantined by fsck or the API", registry=r
        )
        self.misses_logged = Gauge(
            "cachesrv_misses_logged", "Offline misses in the store's miss log", registry=r
        )
        self.offline = Gauge("cachesrv_offline", "1 when the server is in offline mode", registry=r)
        self.expired_releases = Gauge(
            "cachesrv_expired_release_files",
            "Recorded apt Release files past their Valid-Until: clients need "
            'Acquire::Check-Valid-Until "false" (cachesrv client-config apt --offline)',
            registry=r,
        )
        self.space_gauges = {
            key: Gauge(f"cachesrv_store_{name}", text, registry=r)
            for key, name, text in (
                ("max_size", "max_bytes", "[store] max_size (0: no limit)"),
                ("disk_bytes", "disk_bytes", "Size of the store's filesystem"),
                ("disk_free", "disk_free_bytes", "Free space on the store's filesystem"),
                ("min_free", "min_free_bytes", "[store] min_free, in bytes"),
                ("pinned_bytes", "pinned_bytes", "Bytes held by seeds and pins (never evicted)"),
            )
        }
        self.space_counters = {
            key: Counter(f"cachesrv_{name}", text, registry=r)
            for key, name, text in (
                ("evictions", "evictions", "Entries evicted to make room"),
                ("evicted_bytes", "evicted_bytes", "Blob bytes freed by evictions"),
                ("insufficient_storage", "insufficient_storage", "Bodies refused: no room"),
                ("gc_runs", "gc_runs", "Sweeps of unreferenced blobs after evictions"),
                ("gc_freed_bytes", "gc_freed_bytes", "Blob bytes freed by sweeps"),
            )
        }
        self._space_seen: dict[str, int] = {}
        self._request_children: dict[tuple[Outcome, str], Any] = {}
        self._served_children: dict[str, Any] = {}
        self._duration_children: dict[Outcome, Any] = {}

    def count(self, outcome: Outcome, upstream: str = "") -> None:
        key = (outcome, upstream)
        child = self._request_children.get(key)
        if child is None:  # labels() costs a lock and a lookup: once per label pair
            child = self._request_children[key] = self.requests.labels(outcome.value, upstream)
        child.inc()

    def served(self, outcome: Outcome, upstream: str, nbytes: int, seconds: float) -> None:
        """One proxy response went out (called by the access logger)."""
        if nbytes:
            served = self._served_children.get(upstream)
            if served is None:
                served = self._served_children[upstream] = self.bytes_served.labels(upstream)
            served.inc(nbytes)
        duration = self._duration_children.get(outcome)
        if duration is None:
            duration = self._duration_children[outcome] = self.request_duration.labels(
                outcome.value
            )
        duration.observe(seconds)

    def update_store(self, stats: Mapping[str, Any], *, offline: bool) -> None:
        """Refresh the store gauges from `Index.stats()` (at scrape time)."""
        self.store_bytes.set(stats["blob_bytes"])
        self.store_blobs.set(stats["blobs"])
        self.quarantined.set(stats["quarantined"])
        self.misses_logged.set(stats["misses_logged"])
        self.offline.set(1 if offline else 0)
        # An upstream whose entries were all deleted must drop out, not keep its last value.
        self.store_entries.clear()
        self.store_entry_bytes.clear()
        for upstream, row in stats["by_upstream"].items():
            self.store_entries.labels(upstream).set(row["entries"])
            self.store_entry_bytes.labels(upstream).set(row["bytes"] or 0)

    def update_space(self, space: Mapping[str, Any]) -> None:
        """Refresh the space gauges and lifecycle counters from `Lifecycle.space()`."""
        for key, gauge in self.space_gauges.items():
            gauge.set(space[key] or 0)
        for key, counter in self.space_counters.items():
            # The lifecycle keeps plain totals; a counter only moves forward by the gap.
            total = int(space[key] or 0)
            gap = total - self._space_seen.get(key, 0)
            if gap > 0:
                counter.inc(gap)
                self._space_seen[key] = total

    def outcome_totals(self) -> dict[Outcome, float]:
        """Requests so far by outcome, summed over upstreams."""
        totals = dict.fromkeys(Outcome, 0.0)
        for metric in self.requests.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    totals[Outcome(sample.labels["outcome"])] += sample.value
        return totals

    def hit_ratio(self) -> float | None:
        """Share of cacheable requests answered from the store; None before any."""
        totals = self.outcome_totals()
        cacheable = sum(v for o, v in totals.items() if o in CACHEABLE)
        if not cacheable:
            return None
        return sum(v for o, v in totals.items() if o in SERVED_FROM_STORE) / cacheable

    def render(self) -> bytes:
        return generate_latest(self.registry)
