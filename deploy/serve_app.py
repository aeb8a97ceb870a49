"""The ranking API: a thin Ray Serve + FastAPI front over the profile workers and encoder shards.

Endpoints (OpenAPI at ``/docs`` and ``/openapi.json``):

* ``GET /v1/users/{user_id}/recommendations?k=`` ranks now from the user's live
  profile, in the profile worker that owns the user (the worker of the user's
  events partition); a user without state gets popular items, marked ``fallback``;
* ``GET /v1/items/{item_id}/similar?k=``: nearest items over all encoder shards;
* ``POST /v1/rank`` ``{user_id, item_ids[]}``: the caller's candidates ranked with the
  same fused score (unknown items last, score null);
* ``POST /v1/events``: one event object or an array of them, validated exactly as the
  pipeline validates Kafka records (422 names the first bad one), produced to
  ``events`` and acknowledged by the broker before the 202 (413 over the body limit);
* ``GET /healthz``: liveness (no key needed); ``GET /metrics``: Prometheus text.

Load is shed rather than queued without bound: a replica lets at most
``max_inflight`` ranking calls wait on the pipeline at once and answers the rest
429 with ``Retry-After``; Serve itself answers 503 once its queue is full
(``max_queued_requests``), and a call the pipeline does not answer within the
request timeout gets 503 with ``Retry-After``.

Replicas are reconfigured live (Serve's ``reconfigure`` with the deployment's
``user_config``, no restart): ``max_inflight``, ``request_timeout_s`` and the
``model_version`` a rollout reached (reported by ``/healthz``; it only increases).

With an API key configured, every other request needs ``X-API-Key: <key>`` or
``Authorization: Bearer <key>`` (401 otherwise). Parameters are validated (422).
The logic lives in the actors; this module only routes and shapes JSON.
"""

import hmac
import time
from dataclasses import dataclass
from typing import Optional

from fastapi import FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

__all__ = ["ApiConfig", "RankingAPI", "api_deployment", "app", "build_app"]



def _id_param():
    """A fresh path parameter per endpoint (FastAPI binds a parameter object to one name)."""
    return Path(min_length=1, max_length=256, description="the id as produced to Kafka")


app = FastAPI(title="streamrec ranking API", version="1",
              description="Real-time recommendations from live streaming profiles.")  # fmt: skip


@dataclass(frozen=True)
class ApiConfig:
    worker_names: tuple[str, ...]  # profile worker actors, worker w owns events partitions p % W == w
    shard_names: tuple[str, ...]  # encoder shard actors
    events_partitions: int
    namespace: str  # the Ray namespace the pipeline's actors live in
    api_key: Optional[str] = None
    request_timeout_s: float = 10.0
    connection: Optional[object] = None  # streams.client.KafkaConnection, for POST /v1/events
    events_topic: str = "events"
    limits: Optional[object] = None  # streams.codec.Limits
    max_body_bytes: int = 1 << 20
    max_events: int = 1000
    max_inflight: int = 16  # ranking calls waiting on the pipeline per replica; more get 429


class RankRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: str = Field(min_length=1, max_length=256)
    item_ids: list[str] = Field(min_length=1, max_length=1000)


@app.exception_handler(HTTPException)
async def _http_error(request: Request, exc: HTTPException):
    """Errors as ``{"error": "..."}`` (registered before ``serve.ingress`` copies the app)."""
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


@serve.ingress(app)
class RankingAPI:
    """Deployment options (replicas, CPUs) are applied by ``cluster.serving``."""

    def __init__(self, cfg: ApiConfig):
        import ray
        from prometheus_client import CollectorRegistry, Counter, Histogram

        from cluster.encoders import ShardedSearch

        self.cfg = cfg
        self.workers = [ray.get_actor(n, namespace=cfg.namespace) for n in cfg.worker_names]
        self.search = ShardedSearch([ray.get_actor(n, namespace=cfg.namespace) for n in cfg.shard_names])
        self.registry = CollectorRegistry()
        self.requests = Counter("streamrec_api_requests", "HTTP requests", ["endpoint", "status"],
                                registry=self.registry)  # fmt: skip
        self.latency = Histogram("streamrec_api_latency_seconds", "request latency", ["endpoint"],
                                 registry=self.registry)  # fmt: skip
        self.inflight = 0  # ranking calls awaiting the pipeline (one event loop: no lock needed)
        self.max_inflight = cfg.max_inflight
        self.timeout_s = cfg.request_timeout_s
        self.model_version = 0

    def reconfigure(self, config: dict) -> None:
        """Serve's live update of the deployment's ``user_config`` (also applied at start)."""
        unknown = set(config) - {"max_inflight", "request_timeout_s", "model_version"}
        if unknown:
            raise ValueError(f"unknown API user_config keys {sorted(unknown)}")
        if "max_inflight" in config:
            if int(config["max_inflight"]) < 1:
                raise ValueError("max_inflight must be >= 1")
            self.max_inflight = int(config["max_inflight"])
        if "request_timeout_s" in config:
            if float(config["request_timeout_s"]) <= 0:
                raise ValueError("request_timeout_s must be > 0")
            self.timeout_s = float(config["request_timeout_s"])
        self.model_version = max(self.model_version, int(config.get("model_version", 0)))

    def _authorised(self, request: Request) -> bool:
        if not self.cfg.api_key:
            return True
        given = request.headers.get("x-api-key") or ""
        auth = request.headers.get("authorization") or ""
        if auth.lower().startswith("bearer "):
            given = given or auth[7:]
        return hmac.compare_digest(given.encode(), self.cfg.api_key.encode())

    def _guard(self, request: Request, endpoint: str) -> None:
        if not self._authorised(request):
            self.requests.labels(endpoint, "401").inc()
            raise HTTPException(401, "missing or wrong API key: send X-API-Key or Authorization: Bearer",
                                headers={"WWW-Authenticate": "Bearer"})  # fmt: skip

    def _worker_of(self, user_id: str):
        from streams.topics import partition_for_key

        partition = partition_for_key(user_id.encode("utf-8"), self.cfg.events_partitions)
        return self.workers[partition % len(self.workers)]

    def _admit(self, endpoint: str) -> None:
        """Shed load: refuse (429) when ``max_inflight`` calls already wait on the pipeline."""
        if self.inflight >= self.max_inflight:
            self.requests.labels(endpoint, "429").inc()
            raise HTTPException(429, f"over {self.max_inflight} ranking calls in flight on this replica; "
                                "retry shortly", headers={"Retry-After": "1"})  # fmt: skip

    async def _call(self, make_ref, endpoint: str):
        """Await ``make_ref()`` (an actor call, started only once admitted) within the request timeout."""
        import asyncio

        self._admit(endpoint)
        self.inflight += 1
        try:
            return await asyncio.wait_for(make_ref(), timeout=self.timeout_s)
        except asyncio.TimeoutError:
            self.requests.labels(endpoint, "503").inc()
            raise HTTPException(503, "the pipeline did not answer in time; retry shortly",
                                headers={"Retry-After": "1"}) from None  # fmt: skip
        finally:
            self.inflight -= 1

    @app.get("/healthz")
    def healthz(self) -> dict:
        return {"status": "ok", "model_version": self.model_version}

    @app.get("/v1/users/{user_id}/recommendations")
    async def recommendations(self, request: Request, user_id: str = _id_param(),
                              k: int = Query(10, ge=1, le=100, description="list length")) -> dict:  # fmt: skip
        self._guard(request, "recommendations")
        started = time.perf_counter()
        result = await self._call(lambda: self._worker_of(user_id).recommend.remote(user_id, k), "recommendations")
        result["fallback"] = not result.pop("known")
        self.requests.labels("recommendations", "200").inc()
        self.latency.labels("recommendations").observe(time.perf_counter() - started)
        return result

    @app.get("/v1/items/{item_id}/similar")
    async def similar(self, request: Request, item_id: str = _id_param(),
                      k: int = Query(10, ge=1, le=100, description="neighbours")) -> dict:  # fmt: skip
        self._guard(request, "similar")
        import asyncio

        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        hits = await self._call(lambda: loop.run_in_executor(None, self.search.similar, item_id, k), "similar")
        if not hits:
            self.requests.labels("similar", "404").inc()
            raise HTTPException(404, f"item {item_id!r} is not in the catalogue (upsert it to the items topic)")
        self.requests.labels("similar", "200").inc()
        self.latency.labels("similar").observe(time.perf_counter() - started)
        return {"item_id": item_id, "items": [{"item_id": i, "score": s} for s, i in hits]}

    @app.post("/v1/rank")
    async def rank(self, request: Request, body: RankRequest) -> dict:
        self._guard(request, "rank")
        if any(not 0 < len(i) <= 256 for i in body.item_ids):
            self.requests.labels("rank", "422").inc()
            raise HTTPException(422, "item_ids must be non-empty strings of at most 256 characters")
        result = await self._call(lambda: self._worker_of(body.user_id).rank.remote(body.user_id, body.item_ids),
                                  "rank")  # fmt: skip
        result["fallback"] = not result.pop("known")
        self.requests.labels("rank", "200").inc()
        return result

    @app.post("/v1/events", status_code=202)
    async def events(self, request: Request) -> dict:
        self._guard(request, "events")
        import asyncio

        import orjson

        from streams.codec import DEFAULT_LIMITS, decode_event, encode_event

        limit = self.cfg.max_body_bytes
        too_big = HTTPException(413, f"body over {limit} bytes: send fewer events per request")
        if int(request.headers.get("content-length") or 0) > limit:
            self.requests.labels("events", "413").inc()
            raise too_big
        chunks, size = [], 0
        async for chunk in request.stream():  # bounded even without a Content-Length
            size += len(chunk)
            if size > limit:
                self.requests.labels("events", "413").inc()
                raise too_big
            chunks.append(chunk)
        raw = b"".join(chunks)
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            self.requests.labels("events", "422").inc()
            raise HTTPException(422, f"body is not JSON: {exc}") from None
        batch = parsed if isinstance(parsed, list) else [parsed]
        if not 0 < len(batch) <= self.cfg.max_events:
            self.requests.labels("events", "422").inc()
            raise HTTPException(422, f"send 1 to {self.cfg.max_events} events per request")
        now_ms = int(time.time() * 1000)
        decoded = []
        for n, obj in enumerate(batch):
            try:  # the same strict validation as records consumed from Kafka
                decoded.append(decode_event(orjson.dumps(obj), now_ms=now_ms, limits=self.cfg.limits or DEFAULT_LIMITS))
            except Exception as exc:
                self.requests.labels("events", "422").inc()
                raise HTTPException(422, f"event {n}: {exc}") from None
        await asyncio.get_running_loop().run_in_executor(None, self._produce, [encode_event(e) for e in decoded],
                                                         [e.user_id for e in decoded])  # fmt: skip
        self.requests.labels("events", "202").inc()
        return {"accepted": len(decoded)}

    def _produce(self, values: list, keys: list) -> None:
        if getattr(self, "_producer", None) is None:
            from streams.client import make_producer

            self._producer = make_producer(self.cfg.connection)
        futures = [self._producer.send(self.cfg.events_topic, key=k.encode(), value=v) for k, v in zip(keys, values)]
        self._producer.flush(timeout=self.cfg.request_timeout_s)
        for f in futures:
            f.get(timeout=self.cfg.request_timeout_s)  # acknowledged (acks=all) before the 202

    @app.get("/metrics")
    def metrics(self, request: Request):
        self._guard(request, "metrics")
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return PlainTextResponse(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


def build_app(args: dict):
    """Application builder for ``serve run`` / ``serve deploy`` with ``deploy/serve.yaml``.

    ``args``: ``config`` (a streamrec TOML file; environment variables apply as
    usual) and ``namespace`` (default: the settings' pipeline namespace). The
    pipeline (``streamrec run``) must already run in that namespace on the cluster.
    """
    from pathlib import Path as FilePath

    from cluster.serving import api_config
    from cluster.settings import load_settings

    settings = load_settings(FilePath(args["config"]) if args.get("config") else None)
    return api_deployment().bind(api_config(settings, args.get("namespace") or settings.pipeline.namespace))


def api_deployment(**options):
    """The API as a Serve deployment named ``streamrec-api`` (options: replicas, CPUs, ...)."""
    return serve.deployment(name="streamrec-api", **options)(RankingAPI)
