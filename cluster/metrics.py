"""Prometheus metrics of the pipeline, fed by the supervisor from the workers' stats.

Served on ``pipeline.metrics_host:pipeline.metrics_port`` (localhost by default):

* ``streamrec_consumer_lag{partition}``: events not yet consumed, per events partition;
* ``streamrec_freshness_ms{worker,quantile}``: event produced -> its recs committed (p50, p99);
* ``streamrec_worker_events{worker}``, ``streamrec_worker_recs{worker}``,
  ``streamrec_worker_dead_letters{worker}``, ``streamrec_worker_recoveries{worker}``:
  counters since the worker (process) started;
* ``streamrec_worker_up{worker}``: 1 when the worker answered the last supervision round;
* ``streamrec_workers_recreated_total``: workers the supervisor re-created.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PipelineMetrics"]


class PipelineMetrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Gauge

        self.registry = CollectorRegistry()
        r = self.registry
        self.lag = Gauge("streamrec_consumer_lag", "events not yet consumed", ["partition"], registry=r)
        self.freshness = Gauge("streamrec_freshness_ms", "event produced -> recs committed, ms",
                               ["worker", "quantile"], registry=r)  # fmt: skip
        self.counters = {
            name: Gauge(f"streamrec_worker_{name}", f"{name} since the worker started", ["worker"], registry=r)
            for name in ("events", "recs", "dead_letters", "recoveries")
        }
        self.up = Gauge("streamrec_worker_up", "1 when the worker answered the last round", ["worker"], registry=r)
        self.recreated = Gauge("streamrec_workers_recreated_total", "workers re-created by the supervisor",
                               registry=r)  # fmt: skip
        self._server: Any = None

    def update(self, stats: list[dict[str, Any] | None], recreated: int) -> None:
        for w, s in enumerate(stats):
            self.up.labels(str(w)).set(0 if s is None else 1)
            if s is None:
                continue
            for p, lag in s["lag"].items():
                self.lag.labels(str(p)).set(lag)
            for q in ("p50", "p99"):
                value = s[f"freshness_ms_{q}"]
                if value is not None:
                    self.freshness.labels(str(w), q).set(value)
            for name, gauge in self.counters.items():
                gauge.labels(str(w)).set(s[name])
        self.recreated.set(recreated)

    def serve(self, host: str, port: int) -> int:
        from prometheus_client import start_http_server

        self._server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return self._server.server_address[1]

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
