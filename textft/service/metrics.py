"""``GET /metrics``: the service in the Prometheus text format (prometheus-client).

Two ways to scrape it: on the API port with an admin key (``Authorization: Bearer KEY``), or without a
key on a port of its own (``--metrics-port``, bound to ``--metrics-host``, loopback by default), for a
Prometheus on the same machine or network that holds no API key.

What the service process exports, and why it alone does: the database is the one record of jobs, so
jobs by state, queue length and webhook deliveries are read from it at each scrape, whoever ran the
jobs. Requests, latency and predictions are counted by this process (it answers them), and the
models it holds in memory are its own. ``textft worker`` processes have no port to scrape: they write
heartbeats into the shared data directory (``textft.service.beacons``), exported here per worker.
"""

from __future__ import annotations

import logging
import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import start_http_server

from textft.service.beacons import read_beacons
from textft.service.store import STATES
from textft.service.textft_api import __version__

log = logging.getLogger("textft.service")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class StateCollector:
    """Gauges read at scrape time from the store, the model cache, the executors and the beacons."""

    def __init__(self, service):
        self.service = service

    def collect(self):
        service = self.service
        counts = service.store.job_counts()
        jobs = GaugeMetricFamily("textft_jobs", "Jobs by state (from the database: every executor's jobs)",
                                 labels=["state"])
        for state in STATES:
            jobs.add_metric([state], counts.get(state, 0))
        yield jobs
        yield GaugeMetricFamily("textft_queue_length", "Jobs queued and not started yet", value=counts.get("queued", 0))
        deliveries = GaugeMetricFamily("textft_webhook_deliveries", "Webhook deliveries by state", labels=["state"])
        for state, n in service.store.delivery_counts().items():
            deliveries.add_metric([state], n)
        yield deliveries
        yield GaugeMetricFamily("textft_models_loaded", "Models held in memory for predictions",
                                value=len(service.models.loaded))
        yield GaugeMetricFamily("textft_models_capacity", "Models the service keeps loaded at most (--max-loaded-models)",
                                value=service.models.capacity)
        yield GaugeMetricFamily("textft_accepting", "1 while the service accepts jobs, 0 while it stops",
                                value=1 if service.accepting else 0)
        yield from self.workers()
        info = GaugeMetricFamily("textft_info", "The service's version", labels=["version"])
        info.add_metric([__version__], 1)
        yield info

    def workers(self):
        beacons = read_beacons(self.service.data)
        beat = GaugeMetricFamily("textft_worker_heartbeat_timestamp_seconds",
                                 "Unix time of the latest heartbeat of each process that runs jobs (the service's"
                                 " executors and every textft worker), by the writer's clock", labels=["worker", "kind"])
        age = GaugeMetricFamily("textft_worker_heartbeat_age_seconds", "Seconds since that heartbeat, by the"
                                " service's clock", labels=["worker", "kind"])
        slots = GaugeMetricFamily("textft_worker_slots", "Jobs a worker runs at once", labels=["worker", "kind"])
        busy = GaugeMetricFamily("textft_worker_busy", "Jobs a worker runs now", labels=["worker", "kind"])
        for b in beacons:
            labels = [str(b.get("worker")), str(b.get("kind"))]
            beat.add_metric(labels, b["time"])
            age.add_metric(labels, round(b["age_s"], 3))
            slots.add_metric(labels, b.get("slots") or 0)
            busy.add_metric(labels, b.get("busy") or 0)
        yield from (beat, age, slots, busy)
        yield GaugeMetricFamily("textft_workers_alive", "Processes whose heartbeat is recent (under 30 s)",
                                value=sum(1 for b in beacons if b["alive"]))


class Metrics:
    """The service's registry: request counters and latency, predictions, and the state collector."""

    def __init__(self, service):
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter("textft_http_requests", "HTTP requests answered, by route template, method and status",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("textft_http_request_duration_seconds", "Time to answer a request (a stream: until"
                                 " it ends), by route template and method", ["route", "method"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.predictions = Counter("textft_predictions", "Texts (or text pairs) predicted", registry=self.registry)
        self.prediction_requests = Counter("textft_prediction_requests", "Prediction requests answered",
                                           registry=self.registry)
        self.registry.register(StateCollector(service))
        self._server = None

    def predicted(self, texts: int) -> None:
        self.predictions.inc(texts)
        self.prediction_requests.inc()

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def serve(self, host: str, port: int) -> None:
        """The metrics alone, without a key, on their own port (a thread of this process)."""
        self._server, _ = start_http_server(port, addr=host, registry=self.registry)
        log.info("metrics on http://%s:%d/metrics (no key: bind it where only Prometheus reaches)", host, port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


class RequestMetrics:
    """ASGI middleware: counts each request and its time under its route template (``/v1/jobs/{job_id}``),
    never the raw path, so that ids do not become label values."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status, started = 500, time.perf_counter()

        async def sending(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = route_template(scope)
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.latency.labels(route, scope["method"]).observe(time.perf_counter() - started)


def route_template(scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    if path:
        return path
    return "/static" if scope.get("path", "").startswith("/static/") else "unmatched"
