"""The ranking API on Ray Serve over a live pipeline: every endpoint and every error status it has."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

KEY = "test-key-123"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, key: str | None = KEY, bearer: bool = False, body: bytes | None = None):
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"} if body else {})
    if key is not None:
        request.add_header(*(("Authorization", f"Bearer {key}") if bearer else ("X-API-Key", key)))
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            body = r.read().decode()
            return r.status, (json.loads(body) if r.headers.get_content_type() == "application/json" else body)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read().decode() or "null")


def _settled(settings) -> bool:
    """The API app is running with exactly its one replica (no old replica still draining)."""
    from ray import serve

    app = serve.status().applications.get(f"{settings.topics.prefix}streamrec")
    if app is None or app.status != "RUNNING":
        return False
    deployment = app.deployments["streamrec-api"]
    return deployment.status == "HEALTHY" and dict(deployment.replica_states) == {"RUNNING": 1}


def _burst(url: str, clients: int, each: int) -> list[tuple[int, str | None]]:
    """(status, Retry-After) of ``clients`` x ``each`` requests sent from concurrent threads."""
    from concurrent.futures import ThreadPoolExecutor

    def one(_):
        request = urllib.request.Request(url, headers={"X-API-Key": KEY})
        try:
            with urllib.request.urlopen(request, timeout=30) as r:
                r.read()
                return r.status, r.headers.get("Retry-After")
        except urllib.error.HTTPError as e:
            e.read()
            return e.code, e.headers.get("Retry-After")

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(one, range(clients * each)))


def test_ranking_api_endpoints_and_errors(topics, ray_local, tmp_path):
    from cluster.runner import start_stack
    from cluster.settings import Settings
    from streams.client import make_producer
    from streams.codec import encode_event, encode_item
    from streams.datasets import synthetic

    settings = Settings(bootstrap_servers=topics.bootstrap_servers, topics=topics.topics,
                        pipeline={"workers": 2, "worker_cpus": 0.25, "encoder_cpus": 0.25, "n_clusters": 8},
                        api={"port": _free_port(), "api_key": KEY, "max_inflight": 2})  # fmt: skip
    data = synthetic(users=30, items=60, events=900, seed=3)
    producer = make_producer(settings.connection(settings.bootstrap_servers))
    for item in data.items:
        producer.send(settings.topics.name("items"), key=item.item_id.encode(), value=encode_item(item))
    for e in data.events:
        producer.send(settings.topics.name("events"), key=e.user_id.encode(), value=encode_event(e))
    producer.flush()
    producer.close()
    stack = start_stack(settings, settings.bootstrap_servers, progress=lambda m: None, api=True)
    try:
        stack.pipeline.wait_caught_up(settings.bootstrap_servers, timeout_s=300)
        base = stack.api_url
        deadline = time.monotonic() + 60
        while _get(f"{base}/healthz", key=None)[0] != 200:
            assert time.monotonic() < deadline, "the API did not come up"
            time.sleep(0.5)

        user = data.events[0].user_id
        status, body = _get(f"{base}/v1/users/{user}/recommendations?k=5")
        assert status == 200 and body["user_id"] == user and body["fallback"] is False
        assert len(body["items"]) == 5 and all(i["reasons"] for i in body["items"])
        seen = {e.item_id for e in data.events if e.user_id == user}
        assert not {i["item_id"] for i in body["items"]} & seen
        assert body["profile_version"] > 0
        assert _get(f"{base}/v1/users/{user}/recommendations?k=3", bearer=True)[0] == 200

        status, body = _get(f"{base}/v1/users/nobody-yet/recommendations?k=4")
        assert status == 200 and body["fallback"] is True and len(body["items"]) == 4

        item = data.items[0].item_id
        status, body = _get(f"{base}/v1/items/{item}/similar?k=4")
        assert status == 200 and len(body["items"]) == 4 and item not in {i["item_id"] for i in body["items"]}
        assert _get(f"{base}/v1/items/no-such-item/similar")[0] == 404

        assert _get(f"{base}/v1/users/{user}/recommendations", key=None)[0] == 401
        assert _get(f"{base}/v1/users/{user}/recommendations", key="wrong")[0] == 401
        assert _get(f"{base}/v1/users/{user}/recommendations?k=0")[0] == 422
        assert _get(f"{base}/v1/users/{user}/recommendations?k=abc")[0] == 422
        assert _get(f"{base}/v1/items/{item}/similar?k=1000")[0] == 422

        # POST /v1/rank: the caller's candidates, unknown ones last
        candidates = [i.item_id for i in data.items[:6]] + ["not-an-item"]
        status, body = _get(f"{base}/v1/rank", body=json.dumps({"user_id": user, "item_ids": candidates}).encode())
        assert status == 200 and [i["item_id"] for i in body["items"]][-1] == "not-an-item"
        assert body["items"][-1]["score"] is None and all(i["score"] is not None for i in body["items"][:-1])
        assert sorted(i["item_id"] for i in body["items"]) == sorted(candidates)
        assert _get(f"{base}/v1/rank", body=b'{"user_id": "u", "item_ids": []}')[0] == 422
        assert _get(f"{base}/v1/rank", body=b'{"user_id": "u", "item_ids": ["a"], "extra": 1}')[0] == 422

        # POST /v1/events: validated like Kafka input, produced, applied by the pipeline
        fresh_item = next(i.item_id for i in data.items if i.item_id not in seen)
        event = {"event_id": "http-1", "user_id": user, "item_id": fresh_item, "kind": "purchase",
                 "ts": data.events[-1].ts + 1000}
        before = _get(f"{base}/v1/users/{user}/recommendations")[1]["profile_version"]
        status, body = _get(f"{base}/v1/events", body=json.dumps([event]).encode())
        assert status == 202 and body == {"accepted": 1}
        deadline = time.monotonic() + 60
        while _get(f"{base}/v1/users/{user}/recommendations")[1]["profile_version"] <= before:
            assert time.monotonic() < deadline, "the event posted over HTTP never reached the profile"
            time.sleep(0.2)
        status, body = _get(f"{base}/v1/events", body=json.dumps({**event, "kind": "teleport"}).encode())
        assert status == 422 and "event 0" in body["error"] and "kind" in body["error"]
        assert _get(f"{base}/v1/events", body=b"not json")[0] == 422
        assert _get(f"{base}/v1/events", body=b"[" + b'"x",' * 400_000 + b'"x"]')[0] == 413

        # load shedding: past max_inflight (2) pipeline calls a replica answers 429 with Retry-After, at once
        codes = _burst(f"{base}/v1/users/{user}/recommendations?k=3", clients=24, each=15)
        assert set(codes) <= {(200, None), (429, "1")}, set(codes)
        assert codes.count((429, "1")) >= 1 and codes.count((200, None)) >= 1

        status, text = _get(f"{base}/metrics")
        assert status == 200 and 'streamrec_api_requests_total{endpoint="recommendations",status="200"}' in text
        assert 'streamrec_api_requests_total{endpoint="recommendations",status="429"}' in text
        status, spec = _get(f"{base}/openapi.json")
        assert status == 200 and "/v1/users/{user_id}/recommendations" in spec["paths"]

        # live reconfiguration (Serve calls reconfigure with the new user_config; replicas may be replaced):
        # a higher in-flight limit, and the model version a rollout reached
        assert _get(f"{base}/healthz", key=None)[1]["model_version"] == 0
        stack.reconfigure_api(max_inflight=64, model_version=3)
        deadline = time.monotonic() + 60
        while _get(f"{base}/healthz", key=None)[1]["model_version"] != 3 or not _settled(settings):
            assert time.monotonic() < deadline, "the replicas were not reconfigured"
            time.sleep(0.5)
        assert set(_burst(f"{base}/v1/users/{user}/recommendations?k=3", clients=24, each=5)) == {(200, None)}
        stack.reconfigure_api(model_version=2)  # versions only increase
        time.sleep(2)
        assert _get(f"{base}/healthz", key=None)[1]["model_version"] == 3

        # fuzz every operation of the OpenAPI document: no input may cause a 5xx
        fuzz = subprocess.run(
            [str(Path(sys.executable).with_name("schemathesis")), "run", f"{base}/openapi.json", "-H", f"X-API-Key: {KEY}",
             "--checks", "not_a_server_error", "--max-examples", "25", "--phases", "examples,coverage,fuzzing",
             "--seed", "1", "--request-timeout", "30", "--no-color"],
            capture_output=True, text=True, timeout=420, cwd=tmp_path,  # its cache stays out of the repo
        )  # fmt: skip
        assert fuzz.returncode == 0, fuzz.stdout[-4000:] + fuzz.stderr[-2000:]
    finally:
        stack.stop()
