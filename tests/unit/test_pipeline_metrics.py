"""Prometheus metrics of the pipeline: gauges follow the workers' stats and are served on localhost."""

from __future__ import annotations

import urllib.request

from cluster.metrics import PipelineMetrics


def _stats(worker, lag, events, p50):
    return {"worker": worker, "lag": lag, "freshness_ms_p50": p50, "freshness_ms_p99": None if p50 is None else 2 * p50,
            "events": events, "recs": events // 2, "dead_letters": 1, "recoveries": 0}


def test_metrics_follow_stats_and_are_scraped_over_http():
    metrics = PipelineMetrics()
    metrics.update([_stats(0, {0: 5, 2: 0}, 100, 12.5), None], recreated=1)
    port = metrics.serve("127.0.0.1", 0)
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    finally:
        metrics.close()
    assert 'streamrec_consumer_lag{partition="0"} 5.0' in text
    assert 'streamrec_freshness_ms{quantile="p99",worker="0"} 25.0' in text
    assert 'streamrec_worker_events{worker="0"} 100.0' in text
    assert 'streamrec_worker_up{worker="1"} 0.0' in text and 'streamrec_worker_up{worker="0"} 1.0' in text
    assert "streamrec_workers_recreated_total 1.0" in text
