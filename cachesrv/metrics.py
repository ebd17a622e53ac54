"""Prometheus metrics, one registry per server (no process globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .source import Outcome


class Metrics:
    """The counters a site mirror's operator watches. Exposed at `/metrics`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "cachesrv_requests", "Requests by outcome", ["outcome", "upstream"], registry=r
        )
        self.bytes_served = Counter(
            "cachesrv_served_bytes", "Body bytes sent to clients", registry=r
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
        self.store_entries = Gauge(
            "cachesrv_store_entries", "Entries in the store", ["upstream"], registry=r
        )

    def count(self, outcome: Outcome, upstream: str = "") -> None:
        self.requests.labels(outcome.value, upstream).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
