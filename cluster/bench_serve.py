"""`streamrec bench serve`: the ranking API against a bare Serve echo deployment, in one run.

A local pipeline (synthetic catalogue and events) with the ranking API on Ray
Serve, plus an echo deployment on the same Serve proxy. First a closed loop
(``concurrency`` clients, each waiting for its answer) finds the most requests/s
``/v1/users/{id}/recommendations`` sustains; then an **open loop** offers both
endpoints the same constant rate (``load_fraction`` of that maximum), alternating
rounds: each request is due at a fixed time and its latency counts from that time,
so a slow answer delays no later request's clock (no coordinated omission).
"""

from __future__ import annotations

import http.client
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable
from urllib.parse import urlsplit

import numpy as np

from cluster.settings import Settings

__all__ = ["bench_serve", "open_loop", "closed_loop"]


class _Client:
    """One keep-alive HTTP connection per thread."""

    def __init__(self, base: str, headers: dict[str, str]):
        parts = urlsplit(base)
        self.host, self.port, self.headers = parts.hostname, parts.port, headers
        self._local = threading.local()

    def get(self, path: str) -> int:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            conn.request("GET", path, headers=self.headers)
            response = conn.getresponse()
            response.read()
            return response.status
        except (OSError, http.client.HTTPException):
            conn.close()
            self._local.conn = None
            return 599


def closed_loop(client: _Client, paths: Callable[[int], str], concurrency: int, seconds: float) -> float:
    """Completed 2xx requests per second with ``concurrency`` clients each waiting for its answer."""
    stop = time.perf_counter() + seconds
    done = [0] * concurrency

    def run(c: int) -> None:
        n = c
        while time.perf_counter() < stop:
            if client.get(paths(n)) < 300:
                done[c] += 1
            n += concurrency

    start = time.perf_counter()
    threads = [threading.Thread(target=run, args=(c,)) for c in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.perf_counter() - start)


def open_loop(client: _Client, paths: Callable[[int], str], qps: float, seconds: float,
              workers: int = 64) -> tuple[list[float], int]:  # fmt: skip
    """Latencies (ms, from each request's due time) at a constant offered rate; and the non-2xx count."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def one(n: int, due: float) -> None:
        status = client.get(paths(n))
        elapsed = (time.perf_counter() - due) * 1000
        with lock:
            latencies.append(elapsed)
            errors[0] += status >= 300

    total = int(qps * seconds)
    with ThreadPoolExecutor(workers) as pool:
        start = time.perf_counter() + 0.05
        for n in range(total):
            due = start + n / qps
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            pool.submit(one, n, due)
    return latencies, errors[0]


def _echo_app():
    from ray import serve

    @serve.deployment(name="echo", ray_actor_options={"num_cpus": 0.1})
    class Echo:
        async def __call__(self, request) -> dict:
            return {"ok": True}

    return Echo.bind()


def bench_serve(settings: Settings, bootstrap: str, *, users: int = 500, items: int = 500, events: int = 5000,
                seconds: float = 10.0, rounds: int = 2, load_fraction: float = 0.5, concurrency: int = 8,
                progress: Callable[[str], None] = print) -> dict[str, Any]:  # fmt: skip
    from ray import serve

    from cluster.bench_pipeline import _fresh_namespace, _send_events, produce_catalogue
    from cluster.runner import start_stack
    from streams.datasets import synthetic

    settings = _fresh_namespace(settings, bootstrap)
    data = synthetic(users=users, items=items, events=events, seed=2)
    produce_catalogue(settings, bootstrap, data.items)
    _send_events(settings, bootstrap, data.events)
    stack = start_stack(settings, bootstrap, progress=progress, api=True)
    try:
        stack.pipeline.wait_caught_up(bootstrap, timeout_s=600)
        serve.run(_echo_app(), name=f"{settings.topics.prefix}echo", route_prefix="/echo", blocking=False)
        key = settings.api.api_key
        client = _Client(stack.api_url, {"X-API-Key": key.get_secret_value()} if key else {})
        user_ids = sorted({e.user_id for e in data.events})
        recs = lambda n: f"/v1/users/{user_ids[n % len(user_ids)]}/recommendations?k=10"  # noqa: E731
        echo = lambda n: "/echo"  # noqa: E731
        deadline = time.monotonic() + 120
        while client.get(recs(0)) != 200 or client.get("/echo") != 200:
            if time.monotonic() > deadline:
                raise TimeoutError("the API or the echo deployment did not answer within 120 s")
            time.sleep(0.5)
        closed_loop(client, recs, concurrency, 2.0)  # warm-up
        max_qps = closed_loop(client, recs, concurrency, seconds)
        qps = max(1.0, load_fraction * max_qps)
        progress(f"closed loop: {max_qps:,.0f} requests/s; open loop at {qps:,.0f}/s, {rounds} rounds each...")
        lat: dict[str, list[float]] = {"recs": [], "echo": []}
        errors = {"recs": 0, "echo": 0}
        for _ in range(rounds):
            for name, paths in (("echo", echo), ("recs", recs)):
                got, failed = open_loop(client, paths, qps, seconds / rounds)
                lat[name] += got
                errors[name] += failed
    finally:
        stack.stop()
    p = {name: (float(np.percentile(v, 50)), float(np.percentile(v, 99))) for name, v in lat.items()}
    return {
        "ingress": "haproxy" if settings.api.haproxy else "serve-proxy",
        "qps": qps,
        "p50_ms": p["recs"][0],
        "p99_ms": p["recs"][1],
        "echo_p50_ms": p["echo"][0],
        "echo_p99_ms": p["echo"][1],
        "p99_ratio": p["recs"][1] / p["echo"][1],
        "max_qps": max_qps,
        "errors": errors["recs"],
        "echo_errors": errors["echo"],
        "requests": len(lat["recs"]),
    }
