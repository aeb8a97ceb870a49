"""The ``streamrec`` command line. Every flag that maps to a setting shows its environment variable."""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from actors.core.errors import StreamrecError
from cluster.errors import ConfigError
from cluster.settings import CONFIG_ENV, Settings, env_var_for, load_settings

__all__ = ["main", "build_parser"]

logger = logging.getLogger(__name__)

_SET = "set:"  # argparse dest prefix of flags that override a setting


def _setting_flag(parser: argparse.ArgumentParser, flag: str, path: str, help: str, **kwargs: Any) -> None:
    """A flag that overrides the dotted setting ``path``; its help names the environment variable."""
    metavar = kwargs.pop("metavar", flag.lstrip("-").upper().replace("-", "_"))
    shown = f"{help} (default: {_default_of(path)}) [env: {env_var_for(path)}]"
    parser.add_argument(flag, dest=_SET + path, default=None, metavar=metavar, help=shown, **kwargs)


def _boolean(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _default_of(path: str) -> Any:
    model: Any = Settings
    *sections, leaf = path.split(".")
    for section in sections:
        model = type(model.model_fields[section].default)
    return model.model_fields[leaf].default


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for dest, value in vars(args).items():
        if dest.startswith(_SET) and value is not None:
            *sections, leaf = dest[len(_SET) :].split(".")
            node = nested
            for section in sections:
                node = node.setdefault(section, {})
            node[leaf] = value
    return nested


# ---------------------------------------------------------------- parser


def _pipeline_flags(parser: argparse.ArgumentParser) -> None:
    _setting_flag(parser, "--workers", "pipeline.workers", "profile worker actors", type=int)
    _setting_flag(parser, "--shards", "pipeline.encoder_shards", "encoder shard actors", type=int)
    _setting_flag(parser, "--mode", "pipeline.mode", "delivery guarantee", choices=["exactly_once", "at_least_once"])
    _setting_flag(parser, "--metrics-port", "pipeline.metrics_port", "Prometheus /metrics port (0: off)", type=int)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamrec",
        description="Distributed streaming recommender: Kafka events in, Ray actors, refreshed top-K lists out.",
    )
    parser.add_argument("--config", type=Path, default=None, metavar="PATH", help=f"TOML config file [env: {CONFIG_ENV}]")
    _setting_flag(parser, "--bootstrap-servers", "bootstrap_servers",
                  "existing Kafka cluster host:port[,...]; unset: the local broker")  # fmt: skip
    _setting_flag(parser, "--topic-prefix", "topics.prefix", "prefix of every topic name")
    _setting_flag(parser, "--broker-state-dir", "broker.state_dir",
                  "where the local broker's data, logs and pid record live", type=Path)  # fmt: skip
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    kafka = sub.add_parser("kafka", help="run a local Apache Kafka broker (KRaft, single node)")
    ksub = kafka.add_subparsers(dest="action", required=True, metavar="ACTION")
    start = ksub.add_parser("start", help="start the local broker (idempotent); fetches its jars once")
    _setting_flag(start, "--port", "broker.port", "broker port (0: a free port)", type=int)
    _setting_flag(start, "--kafka-version", "broker.kafka_version", "Apache Kafka version from Maven Central")
    start.add_argument("--reset", action="store_true", help="wipe the broker's data before starting")
    ksub.add_parser("fetch", help="fetch the broker jars from Maven Central into the cache (no start)")
    ksub.add_parser("stop", help="stop the local broker")
    status = ksub.add_parser("status", help="print the local broker's bootstrap address")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    logs = ksub.add_parser("logs", help="print the local broker's log")
    logs.add_argument("-n", "--lines", type=int, default=50, help="number of lines")

    topics = sub.add_parser("topics", help="create or describe streamrec's topics")
    tsub = topics.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = tsub.add_parser("create", help="create missing topics (idempotent; never relies on auto-creation)")
    _setting_flag(create, "--events-partitions", "topics.events_partitions", "partitions of events", type=int)
    _setting_flag(create, "--replication-factor", "topics.replication_factor", "replication factor", type=int)
    describe = tsub.add_parser("describe", help="partitions and configs of each topic")
    describe.add_argument("--json", action="store_true", help="machine-readable output")

    produce = sub.add_parser("produce", help="replay a dataset into the items and events topics")
    source = produce.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", type=Path, help="RecBole atomic dir, MovieLens csv dir, or .jsonl/.csv file")
    source.add_argument("--synthetic", action="store_true", help="generate data with latent interest clusters")
    produce.add_argument("--format", default="auto", choices=["auto", "recbole", "movielens", "generic"])
    produce.add_argument("--map", action="append", default=[], metavar="FIELD=COLUMN",
                         help="column mapping for generic files (user_id, item_id, kind, ts, value, event_id, "
                              "scene, ts_unit=s|ms, items_path)")  # fmt: skip
    produce.add_argument("--speed", type=float, default=0.0, help="event-time speed-up factor (0: as fast as possible)")
    produce.add_argument("--rate", type=float, default=0.0, help="cap in events per second (0: none)")
    produce.add_argument("--limit", type=int, default=None, help="produce only the first N events")
    for name, default in (("users", 500), ("items", 1000), ("events", 20000), ("seed", 0)):
        produce.add_argument(f"--{name}", type=int, default=default, help=f"synthetic: {name}")

    consume = sub.add_parser("consume", help="print records of a topic for humans")
    consume.add_argument("topic", help="a role (events, items, recs, changelog, dead-letters) or a topic name")
    consume.add_argument("--max", type=int, default=10, help="stop after this many records")
    consume.add_argument("--timeout", type=float, default=10.0, help="stop after this many idle seconds")

    demo = sub.add_parser("demo", help="the main job on an embedded local broker (see README)")
    demo.add_argument("--dataset", type=Path, default=Path("../shared/data/ml-100k"), help="dataset to replay")
    demo.add_argument("--synthetic", action="store_true", help="replay generated data instead of a dataset")
    demo.add_argument("--limit", type=int, default=None, help="replay only the first N events")
    demo.add_argument("--keep-broker", action="store_true", help="leave the local broker running afterwards")
    demo.add_argument("--no-ray", action="store_true", help="only produce and print events (no Ray, no pipeline)")
    for name, default in (("users", 300), ("items", 400), ("events", 20000)):
        demo.add_argument(f"--{name}", type=int, default=default, help=f"synthetic: {name}")
    _pipeline_flags(demo)

    run = sub.add_parser("run", help="run the pipeline (encoder shards + profile workers) until Ctrl-C or SIGTERM")
    serve = sub.add_parser("serve", help="like run, plus the ranking API on Ray Serve (HTTP)")
    for p in (run, serve):
        _pipeline_flags(p)
        _setting_flag(p, "--ray-address", "pipeline.ray_address", "Ray cluster address (ray://host:10001, auto); "
                      "unset: a local Ray")  # fmt: skip
        p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
        p.add_argument("--status-every", type=float, default=5.0, help="seconds between status lines")
    _setting_flag(serve, "--host", "api.host", "API bind address (anything but localhost needs an API key)")
    _setting_flag(serve, "--port", "api.port", "API port", type=int)

    model = sub.add_parser("model", help="the model registry: publish and list encoder versions")
    msub = model.add_subparsers(dest="action", required=True, metavar="ACTION")
    pub = msub.add_parser("publish", help="copy an encoder directory in as the next version (atomic, hashed)")
    pub.add_argument("path", type=Path, nargs="?", default=None, help="a Hugging Face model directory "
                     "(default: the shipped MiniLM)")  # fmt: skip
    pub.add_argument("--note", default="", help="free text stored in the manifest")
    lst = msub.add_parser("list", help="versions with their hashes")
    for p in (pub, lst):
        _setting_flag(p, "--registry", "models.registry", "model registry root", type=Path)
    roll = sub.add_parser("rollout", help="make the running pipeline's encoder shards re-encode with a model version")
    roll.add_argument("version", type=int, nargs="?", default=None, help="registry version (default: the latest)")
    roll.add_argument("--dtype", default=None, choices=["auto", "fp32", "bf16", "fp16"], help="encoder precision")
    roll.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for every shard")
    _setting_flag(roll, "--registry", "models.registry", "model registry root", type=Path)
    _setting_flag(roll, "--ray-address", "pipeline.ray_address", "Ray cluster address (default: auto)")

    tr = sub.add_parser("train", help="fine-tune the item encoder on interactions (Ray Train), gate it, publish it")
    tr.add_argument("--dataset", type=Path, default=None,
                    help="learn from a dataset (same formats as produce) instead of the events and items topics; "
                         "also reports the co-visitation baseline")  # fmt: skip
    tr.add_argument("--json", action="store_true", help="print one JSON object")
    tr.add_argument("--no-publish", action="store_true", help="train and evaluate only; the registry is untouched")
    tr.add_argument("--rollout", action="store_true",
                    help="after publishing, roll the running pipeline (encoder shards, profile workers) to it")  # fmt: skip
    _setting_flag(tr, "--train-workers", "train.workers", "Ray Train workers", type=int)
    _setting_flag(tr, "--epochs", "train.epochs", "passes over the next-item samples", type=int)
    _setting_flag(tr, "--window-events", "train.window_events", "newest events read per partition", type=int)
    _setting_flag(tr, "--registry", "models.registry", "model registry root", type=Path)
    _setting_flag(tr, "--ray-address", "pipeline.ray_address", "Ray cluster address (default: a local Ray)")

    ev = sub.add_parser("eval", help="offline/streaming evaluation of the recommenders on a dataset (in process)")
    ev.add_argument("--dataset", type=Path, required=True, help="a dataset path (same formats as produce)")
    ev.add_argument("--protocol", choices=["loo", "prequential"], default="loo",
                    help="loo: time-ordered leave-one-out; prequential: test-then-apply over the stream")  # fmt: skip
    ev.add_argument("--k", type=int, default=10, help="cut-off of HR/NDCG/MRR")
    ev.add_argument("--models", default="streamrec,covisit,pop,text", help="comma-separated models to evaluate")
    ev.add_argument("--phase", choices=["valid", "test"], default="test", help="loo target: validation (tuning) or test")
    ev.add_argument("--engine", choices=["inprocess", "pipeline", "cluster"], default="inprocess",
                    help="inprocess: the models above; pipeline: the pipeline's model folded in this process; "
                         "cluster: the pipeline through Kafka and Ray (loo only)")  # fmt: skip
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.add_argument("--plot", type=Path, default=None, help="prequential only: write HR@k over the stream as a PNG")

    bench = sub.add_parser("bench", help="benchmarks that print measured numbers (see docs/benchmarks.md)")
    bsub = bench.add_subparsers(dest="target", required=True, metavar="TARGET")
    core = bsub.add_parser("core", help="in-process profile updates: events/s (micro-batched) and bytes per profile")
    core.add_argument("--events", type=int, default=200_000, help="events to apply")
    core.add_argument("--users", type=int, default=10_000, help="distinct users")
    core.add_argument("--dim", type=int, default=384, help="embedding dimension")
    core.add_argument("--seed", type=int, default=0, help="random seed of the synthetic events")
    core.add_argument("--json", action="store_true", help="print one JSON object")
    enc = bsub.add_parser("encode", help="an encoder actor vs the bare model: items/s and their ratio")
    enc.add_argument("--items", type=int, default=2048, help="titles to encode")
    enc.add_argument("--batch-size", type=int, default=64, help="encoder batch size")
    enc.add_argument("--json", action="store_true", help="print one JSON object")
    srch = bsub.add_parser("search", help="scatter-gather over shard actors vs one Flat FAISS index: QPS, ratio, "
                                          "recall of the shards' index against Flat")  # fmt: skip
    srch.add_argument("--items", type=int, default=100_000, help="catalogue size (synthetic unit vectors)")
    srch.add_argument("--shards", type=int, default=2, help="shard actors")
    srch.add_argument("--queries", type=int, default=512, help="queries, sent in batches of 64")
    _setting_flag(srch, "--index", "pipeline.index", "the shards' index (hnsw_*/ivf_* settings apply)",
                  choices=["flat", "hnsw", "ivf"], metavar="{flat,hnsw,ivf}")  # fmt: skip
    srch.add_argument("--data", choices=["clustered", "uniform"], default="clustered",
                      help="clustered: low intrinsic dimension, like text embeddings; uniform: random directions, "
                           "the worst case for hnsw/ivf (see cluster/bench.py)")  # fmt: skip
    srch.add_argument("--json", action="store_true", help="print one JSON object")
    fresh = bsub.add_parser("freshness-items", help="upsert produced to Kafka -> searchable: p50/p99 latency")
    fresh.add_argument("--upserts", type=int, default=50, help="timed upserts")
    fresh.add_argument("--json", action="store_true", help="print one JSON object")

    pipe = bsub.add_parser("pipeline", help="pipeline vs bare consumer events/s, and freshness p50/p99 at 50%% load")
    pipe.add_argument("--events", type=int, default=60_000, help="backlog of synthetic events")
    pipe.add_argument("--users", type=int, default=5000, help="distinct users")
    pipe.add_argument("--items", type=int, default=1000, help="catalogue size")
    pipe.add_argument("--fresh-events", type=int, default=3000, help="timed events for the freshness part")
    pipe.add_argument("--load-fraction", type=float, default=0.5, help="freshness load, as a share of the max rate")
    pipe.add_argument("--plot", type=Path, default=None, help="write a freshness histogram (PNG)")
    _pipeline_flags(pipe)
    pipe.add_argument("--json", action="store_true", help="print one JSON object")
    srv = bsub.add_parser("serve", help="ranking API vs a bare Serve echo at the same open-loop rate; max QPS")
    srv.add_argument("--seconds", type=float, default=10.0, help="duration of the max-QPS and of each open-loop phase")
    srv.add_argument("--rounds", type=int, default=2, help="alternating echo/API open-loop rounds")
    srv.add_argument("--load-fraction", type=float, default=0.5, help="open-loop rate, as a share of the max QPS")
    srv.add_argument("--concurrency", type=int, default=8, help="closed-loop clients for the max QPS")
    _setting_flag(srv, "--haproxy", "api.haproxy", "Serve's HAProxy ingress instead of its Python proxy",
                  type=_boolean, metavar="BOOL")  # fmt: skip
    srv.add_argument("--json", action="store_true", help="print one JSON object")
    rest = bsub.add_parser("restore", help="profiles restored from the changelog per second, and bytes per profile")
    rest.add_argument("--users", type=int, default=20_000, help="profiles to write and restore")
    rest.add_argument("--events-per-user", type=int, default=20, help="events folded into each profile")
    rest.add_argument("--json", action="store_true", help="print one JSON object")

    chaos = sub.add_parser("chaos", help="inject faults into the pipeline under load and verify its outputs")
    chaos.add_argument("--cases", default=None, metavar="A,B",
                       help="comma-separated cases (default: all; see cluster/chaos.py)")  # fmt: skip
    chaos.add_argument("--events", type=int, default=20_000, help="events per case")
    chaos.add_argument("--json", action="store_true", help="print one JSON object")
    _setting_flag(chaos, "--workers", "pipeline.workers", "profile worker actors", type=int)
    _setting_flag(chaos, "--mode", "pipeline.mode", "delivery guarantee", choices=["exactly_once", "at_least_once"])

    config = sub.add_parser("config", help="print the effective settings (secrets redacted)")
    config.add_argument("--json", action="store_true", help="JSON instead of TOML-like text")
    return parser


# ---------------------------------------------------------------- commands


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    try:
        settings = load_settings(args.config, _overrides(args))
        handler = _COMMANDS[args.command]
        return handler(args, settings) or 0
    except StreamrecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except (FileNotFoundError, NotADirectoryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        from kafka.errors import KafkaError
        from pydantic import ValidationError

        if isinstance(exc, ValidationError):
            print(f"error: invalid settings:\n{exc}", file=sys.stderr)
            return 2
        if isinstance(exc, KafkaError):
            print(f"error: Kafka: {exc}. Check the bootstrap address (`streamrec kafka status`, "
                  "STREAMREC_BOOTSTRAP_SERVERS) and that the broker is up.", file=sys.stderr)  # fmt: skip
            return 2
        raise


class _RedactSecrets(logging.Filter):
    """Masks password-like values in log lines (kafka-python logs its whole config at DEBUG)."""

    _pattern = re.compile(r"""((?:password|secret|token)[\w]*['"]?\s*[:=]\s*)(['"]?)[^'",}\s]+""", re.I)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self._pattern.sub(r"\1\2***", message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


def _configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_RedactSecrets())
    # kafka-python logs connection churn (e.g. a cancelled metadata refresh on close) as errors
    logging.getLogger("kafka").setLevel(logging.CRITICAL if verbosity == 0 else logging.DEBUG if verbosity > 1
                                        else logging.WARNING)  # fmt: skip


def _broker(settings: Settings):
    from streams.broker import LocalBroker

    b = settings.broker
    return LocalBroker(
        b.resolved_state_dir(),
        b.resolved_cache_dir(),
        kafka_version=b.kafka_version,
        kafka_home=settings.kafka_home,
        host=b.host,
        port=b.port,
        controller_port=b.controller_port,
        heap=b.heap,
        start_timeout_s=b.start_timeout_s,
    )


def bootstrap_servers(settings: Settings) -> str:
    """The configured cluster, else the running local broker, else an error that says what to do."""
    if settings.bootstrap_servers:
        return settings.bootstrap_servers
    state = _broker(settings).status()
    if state is None:
        raise ConfigError(
            "no Kafka to talk to: start the local broker with `streamrec kafka start`, "
            "or point STREAMREC_BOOTSTRAP_SERVERS (or --bootstrap-servers) at a cluster"
        )
    return state.bootstrap_servers


def _cmd_kafka(args: argparse.Namespace, settings: Settings) -> int:
    if settings.bootstrap_servers and args.action in ("start", "stop", "fetch"):
        print(f"using the existing cluster at {settings.bootstrap_servers} (STREAMREC_BOOTSTRAP_SERVERS): "
              "no local broker is started or stopped")  # fmt: skip
        return 0
    broker = _broker(settings)
    if args.action == "fetch":
        print(f"Kafka broker class path: {broker.classpath(progress=lambda msg: print(msg, file=sys.stderr))}")
        return 0
    if args.action == "start":
        state, started = broker.start(reset=args.reset, progress=lambda msg: print(msg, file=sys.stderr))
        verb = "started" if started else "already running"
        print(f"Kafka {state.kafka_version} {verb} at {state.bootstrap_servers} (pid {state.pid}, data {state.data_dir})")
        return 0
    if args.action == "stop":
        print("stopped" if broker.stop() else "no local broker was running")
        return 0
    if args.action == "status":
        state = broker.status()
        if args.json:
            from dataclasses import asdict

            print(json.dumps({"running": state is not None, **(asdict(state) if state else {}),
                              "bootstrap_servers": state.bootstrap_servers if state else None}))  # fmt: skip
        elif state:
            print(state.bootstrap_servers)
        else:
            print("not running (start it with `streamrec kafka start`)", file=sys.stderr)
        return 0 if state else 1
    if args.action == "logs":
        print(broker.tail_log(args.lines))
        return 0
    raise AssertionError(args.action)


def _cmd_topics(args: argparse.Namespace, settings: Settings) -> int:
    from streams.client import make_admin
    from streams.topics import describe_topics, ensure_topics

    admin = make_admin(settings.connection(bootstrap_servers(settings)))
    try:
        specs = settings.topics.specs()
        if args.action == "create":
            for name, outcome in ensure_topics(admin, specs).items():
                print(f"{name}: {outcome}")
            return 0
        described = describe_topics(admin, specs)
        if args.json:
            print(json.dumps(described, indent=2))
        else:
            for t in described:
                state = f"{t['partitions']} partitions, rf {t['replication_factor']}" if t["exists"] else "MISSING"
                configs = ", ".join(f"{k}={v}" for k, v in sorted(t["configs"].items()))
                print(f"{t['name']:<28} {t['role']:<13} key={t['key']:<13} {state}  {configs}")
        return 0 if all(t["exists"] for t in described) else 1
    finally:
        admin.close()


def _load_source(args: argparse.Namespace):
    from streams import datasets

    if args.synthetic:
        return datasets.synthetic(users=args.users, items=args.items, events=args.events, seed=args.seed)
    mapping = dict(_split_mapping(m) for m in args.map) or None
    try:
        return datasets.load_dataset(args.dataset, fmt=args.format, mapping=mapping)
    except ValueError as exc:  # unknown format, bad mapping: the message says which
        raise ConfigError(f"cannot read dataset {args.dataset}: {exc}") from None


def _split_mapping(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise ConfigError(f"--map expects FIELD=COLUMN, got {text!r}")
    return key.strip(), value.strip()


def _cmd_produce(args: argparse.Namespace, settings: Settings) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from cluster.evaluate import stderr_console
    from streams.client import make_producer
    from streams.replay import replay

    dataset = _load_source(args)
    events = dataset.events[: args.limit] if args.limit is not None else dataset.events
    if dataset.skipped:
        print(f"warning: {len(dataset.skipped)} unparseable rows skipped (first: line {dataset.skipped[0][0]}: "
              f"{dataset.skipped[0][1]})", file=sys.stderr)  # fmt: skip
    producer = make_producer(settings.connection(bootstrap_servers(settings)))
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    try:
        with Progress(*columns, console=stderr_console(), transient=False) as progress:
            items_task = progress.add_task(f"items  → {settings.topics.name('items')}", total=len(dataset.items))
            events_task = progress.add_task(f"events → {settings.topics.name('events')}", total=len(events))
            stats = replay(
                producer,
                items=dataset.items,
                events=events,
                items_topic=settings.topics.name("items"),
                events_topic=settings.topics.name("events"),
                speed=args.speed,
                rate=args.rate,
                on_item=lambda n: progress.advance(items_task, n),
                on_event=lambda n: progress.advance(events_task, n),
            )
    finally:
        producer.close()
    rate = stats.events / stats.seconds if stats.seconds else 0.0
    print(f"produced {stats.items:,} items and {stats.events:,} events from {dataset.name} "
          f"in {stats.seconds:.1f} s ({rate:,.0f} events/s)")  # fmt: skip
    return 0


_ROLE_ALIASES = {"dead-letters": "dead_letters", "profiles-changelog": "changelog"}


def _cmd_consume(args: argparse.Namespace, settings: Settings) -> int:
    from streams.client import assign_from_beginning, make_consumer

    role = _ROLE_ALIASES.get(args.topic, args.topic)
    topic = settings.topics.name(role) if role in ("events", "items", "recs", "changelog", "dead_letters") else args.topic
    consumer = make_consumer(settings.connection(bootstrap_servers(settings)), group_id=None)
    try:
        assign_from_beginning(consumer, topic)
        shown, idle_since = 0, time.monotonic()
        while shown < args.max and time.monotonic() - idle_since < args.timeout:
            polled = consumer.poll(timeout_ms=500, max_records=args.max - shown)
            records = sorted((r for rs in polled.values() for r in rs), key=lambda r: (r.timestamp, r.partition))
            if records:
                idle_since = time.monotonic()
            for record in records[: args.max - shown]:
                print(_format_record(record))
                shown += 1
        if shown == 0:
            print(f"no records in {topic} (waited {args.timeout:.0f} s)", file=sys.stderr)
        return 0
    finally:
        consumer.close()


def _format_record(record: Any) -> str:
    key = record.key.decode("utf-8", "replace") if record.key is not None else None
    value = "null" if record.value is None else record.value[:2000].decode("utf-8", "replace")
    line = f"{record.topic}[{record.partition}]@{record.offset} key={key} {value}"
    if record.headers:
        headers = {k: v.decode("utf-8", "replace") if v is not None else None for k, v in record.headers}
        line += f"\n    headers: {json.dumps(headers, ensure_ascii=False)}"
    return line


def _cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from cluster.demo import run_demo
    from streams import datasets

    def load():
        if args.synthetic or not args.dataset.exists():
            if not args.synthetic:
                print(f"{args.dataset} not found: replaying synthetic data instead (see README for MovieLens)")
            return datasets.synthetic(users=args.users, items=args.items, events=args.events, seed=0)
        return datasets.load_dataset(args.dataset)

    return run_demo(settings, dataset=args.dataset, synthetic=args.synthetic, limit=args.limit,
                    keep_broker=args.keep_broker, ray_part=not args.no_ray, run=_run, broker_factory=_broker,
                    load=load)  # fmt: skip


def _cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    import signal
    import threading

    from cluster.runner import Progress, start_stack

    bootstrap = bootstrap_servers(settings)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        stack = start_stack(settings, bootstrap, progress=lambda m: print(m, flush=True), api=args.command == "serve")
        started = time.monotonic()
        progress = Progress()
        scheduler = None
        try:
            if settings.train.schedule:
                from cluster.scheduler import TrainScheduler

                scheduler = TrainScheduler(settings, bootstrap, stack, progress=lambda m: print(m, flush=True)).start()
                print(f"fine-tuning scheduled every {settings.train.every_minutes:g} min"
                      + (f" or {settings.train.every_events:,} new events" if settings.train.every_events else ""),
                      flush=True)  # fmt: skip
            print("running; Ctrl-C stops cleanly", flush=True)
            while not stop.wait(args.status_every):
                print(progress.line(stack.pipeline.stats()), flush=True)
                if args.duration is not None and time.monotonic() - started >= args.duration:
                    break
        finally:
            if scheduler is not None:
                scheduler.stop()
            stack.stop()
            print("stopped cleanly", flush=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _bench_user_side(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from cluster import bench_pipeline

    say = lambda m: print(m, file=sys.stderr)  # noqa: E731
    if args.target == "restore":
        return _with_broker(settings, lambda bs: bench_pipeline.bench_restore(
            settings, bs, users=args.users, events_per_user=args.events_per_user, progress=say))
    result = _with_broker(settings, lambda bs: bench_pipeline.bench_pipeline(
        settings, bs, users=args.users, items=args.items, events=args.events, fresh_events=args.fresh_events,
        load_fraction=args.load_fraction, progress=say))
    latencies = result.pop("latencies_ms")
    if args.plot is not None:
        print(f"wrote {bench_pipeline.plot_freshness(latencies, args.plot)}", file=sys.stderr)
    return result


def _cmd_model(args: argparse.Namespace, settings: Settings) -> int:
    from cluster.registry import ModelRegistry

    registry = ModelRegistry(settings.models.resolved_registry())
    if args.action == "publish":
        from actors.encoder import default_model_path

        source = args.path or default_model_path()
        version = registry.publish(source, {"note": args.note} if args.note else None)
        print(f"published {source} as model version {version.version} (sha256 {version.sha256[:16]}…) "
              f"in {registry.root}")  # fmt: skip
        return 0
    for v in registry.versions():
        mv = registry.get(v)
        print(f"v{v}  sha256 {mv.sha256[:16]}…  {time.strftime('%Y-%m-%d %H:%M', time.gmtime(mv.created_ms / 1000))}"
              f"  {json.dumps(mv.metadata) if mv.metadata else ''}")  # fmt: skip
    if not registry.versions():
        print(f"no versions in {registry.root}: publish one with `streamrec model publish`")
    return 0


def _cmd_rollout(args: argparse.Namespace, settings: Settings) -> int:
    import ray

    ray.init(address=settings.pipeline.ray_address or "auto", namespace=settings.pipeline.namespace,
             log_to_driver=False, configure_logging=False)  # fmt: skip
    try:
        _rollout_version(settings, args.version, args.dtype, args.timeout)
    finally:
        ray.shutdown()
    return 0


def _rollout_version(settings: Settings, version_number: int | None, dtype: str | None, timeout: float) -> None:
    """Roll the running pipeline (found by name in Ray) to a registry version (default: the latest)."""
    import ray

    from cluster.encoders import ShardedSearch, shard_name
    from cluster.registry import ModelRegistry

    registry = ModelRegistry(settings.models.resolved_registry())
    version_number = version_number or (registry.versions() or [None])[-1]
    if version_number is None:
        raise ConfigError(f"no model versions in {registry.root}: publish one with `streamrec model publish`")
    version = registry.get(version_number, verify=True)  # the files still match their recorded sha256
    names = [shard_name(settings.topics.prefix, s) for s in range(settings.pipeline.encoder_shards)]
    try:
        search = ShardedSearch([ray.get_actor(n) for n in names], names)
    except ValueError:
        raise ConfigError(f"no running encoder shards {names} in Ray namespace {settings.pipeline.namespace!r}: "
                          "start the pipeline with `streamrec run`") from None  # fmt: skip
    print(f"rolling {len(names)} encoder shards to model version {version.version}...", flush=True)
    started = time.monotonic()
    stats = search.load_model(version.version, str(version.path), dtype, wait_s=timeout)
    print(f"every shard serves model version {version.version} ({sum(s['items'] for s in stats):,} items "
          f"re-encoded in {time.monotonic() - started:.1f} s)", flush=True)  # fmt: skip
    from cluster.pipeline import fit_clusters, worker_name

    workers = [ray.get_actor(worker_name(settings.topics.prefix, w)) for w in range(settings.pipeline.workers)]
    clusters = fit_clusters(search, settings.pipeline.n_clusters)
    ray.get([w.rollout.remote(version.version, clusters) for w in workers], timeout=timeout)
    print(f"{len(workers)} profile workers switched to model version {version.version}; each profile is "
          "rebuilt from its recent items when next used")  # fmt: skip


def _with_broker(settings: Settings, fn: Callable[[str], Any]) -> Any:
    """Run ``fn(bootstrap)`` against the configured cluster, or a local broker started (and stopped) for it."""
    if settings.bootstrap_servers:
        return fn(settings.bootstrap_servers)
    broker = _broker(settings)
    running = broker.status()
    if running is not None:
        return fn(running.bootstrap_servers)
    state, _ = broker.start(progress=lambda msg: print(msg, file=sys.stderr))
    try:
        return fn(state.bootstrap_servers)
    finally:
        broker.stop()


def _run(argv: list[str], settings: Settings) -> None:
    args = build_parser().parse_args(argv)
    code = _COMMANDS[args.command](args, settings)
    if code:
        raise StreamrecError(f"`streamrec {' '.join(argv)}` failed with exit code {code}")


def _cmd_chaos(args: argparse.Namespace, settings: Settings) -> int:
    import contextlib

    from cluster.chaos import CASES, run_chaos

    cases = [c.strip() for c in args.cases.split(",") if c.strip()] if args.cases else list(CASES)
    broker = None if settings.bootstrap_servers else _broker(settings)  # broker_restart needs the local one
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    with contextlib.redirect_stdout(sys.stderr):  # Ray prints its workers' deaths to stdout; keep --json parseable
        report = _with_broker(settings, lambda bs: run_chaos(settings, bs, cases, events=args.events, broker=broker,
                                                             progress=say))  # fmt: skip
    if args.json:
        print(json.dumps(report))
    else:
        for c in report["cases"]:
            print("  ".join(f"{k} {c.get(k)}" for k in ("name", "ok", "lost", "duplicate_effects", "duplicate_outputs",
                                                   "dlq", "injected", "recovery_s", "error") if k in c))  # fmt: skip
    return 0 if all(c["ok"] for c in report["cases"]) else 1


def _cmd_config(args: argparse.Namespace, settings: Settings) -> int:
    data = settings.model_dump(mode="json")  # SecretStr dumps as "**********"
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    for key, value in data.items():
        if not isinstance(value, dict):
            print(f"{key} = {json.dumps(value)}")
    for key, value in data.items():
        if isinstance(value, dict):
            print(f"\n[{key}]")
            for k, v in value.items():
                print(f"{k} = {json.dumps(v)}")
    return 0


def _cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    from cluster.runner import init_ray
    from cluster.train import Window, read_window, train_once

    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    if args.dataset is not None:
        from streams import datasets

        data = datasets.load_dataset(args.dataset)
        window = Window(list(data.events), [i for i in data.items if not i.deleted])
    else:
        window = _with_broker(settings, lambda bs: read_window(settings, bs, settings.train.window_events))
        if not window.events:
            raise ConfigError(f"topic {settings.topics.name('events')!r} holds no events to learn from")
    if args.rollout and not settings.pipeline.ray_address:  # the running pipeline's Ray, not a new one
        settings = settings.model_copy(update={"pipeline": settings.pipeline.model_copy(update={"ray_address": "auto"})})
    started_ray = init_ray(settings)
    try:
        result = train_once(settings, window, progress=say, publish=not args.no_publish).as_dict()
        if args.rollout and result["version"] is not None:
            _rollout_version(settings, result["version"], None, 1800.0)
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    if args.dataset is not None:
        from cluster.evaluate import run_eval

        covisit = run_eval(args.dataset, protocol="loo", k=10, models=["covisit"])["results"]["covisit"]
        result["covisit_ndcg10"] = covisit["NDCG@10"]
        result["dataset"] = data.name
    if args.json:
        print(json.dumps(result))
    else:
        print("  ".join(f"{k} {v}" for k, v in result.items() if k != "path"))
    return 0


def _cmd_eval(args: argparse.Namespace, settings: Settings) -> int:
    from cluster.evaluate import format_table, run_eval

    if args.plot is not None and args.protocol != "prequential":
        raise ConfigError("--plot needs --protocol prequential")
    if args.engine != "inprocess":
        return _eval_pipeline(args, settings)
    report = run_eval(
        args.dataset, protocol=args.protocol, k=args.k, phase=args.phase,
        models=[m.strip() for m in args.models.split(",") if m.strip()],
        progress=lambda msg: print(msg, file=sys.stderr),
    )  # fmt: skip
    print(json.dumps(report) if args.json else format_table(report))
    if args.plot is not None:
        from cluster.evaluate import plot_prequential

        print(f"wrote {plot_prequential([report], args.plot)}", file=sys.stderr)
    return 0


def _eval_pipeline(args: argparse.Namespace, settings: Settings) -> int:
    from cluster.evaluate_pipeline import evaluate_pipeline
    from streams import datasets

    if args.protocol != "loo":
        raise ConfigError(f"--engine {args.engine} evaluates the leave-one-out protocol only")
    data = datasets.load_dataset(args.dataset)
    say = lambda m: print(m, file=sys.stderr)  # noqa: E731
    if args.engine == "cluster":
        report = _with_broker(settings, lambda bs: evaluate_pipeline(settings, data, engine="cluster", k=args.k,
                                                                     bootstrap=bs, progress=say))  # fmt: skip
    else:
        report = evaluate_pipeline(settings, data, engine="pipeline", k=args.k, progress=say)
    report.pop("lists")
    report["dataset"] = data.name
    if args.json:
        print(json.dumps(report))
    else:
        metrics = report["results"]["pipeline"]
        print(f"{data.name} — loo via {args.engine} (k={args.k}, {metrics['users']} users): "
              + "  ".join(f"{name} {value:.4f}" for name, value in metrics.items() if name != "users"))
    return 0


def _cmd_bench(args: argparse.Namespace, settings: Settings) -> int:
    import torch

    from cluster import bench

    if args.target == "core":
        from actors.core.bench import bench_profile_updates

        torch.set_num_threads(1)  # "on one core": the goal is per core
        print(f"applying {args.events:,} synthetic events to {args.users:,} profiles (d={args.dim})...",
              file=sys.stderr)  # fmt: skip
        result = bench_profile_updates(args.events, args.users, args.dim, args.seed)
    elif args.target == "encode":
        result = bench.bench_encode(args.items, args.batch_size)
    elif args.target == "search":
        result = bench.bench_search(args.items, args.shards, args.queries, index=settings.pipeline.index_config(),
                                    data=args.data)  # fmt: skip
    elif args.target == "serve":
        from cluster.bench_serve import bench_serve

        result = _with_broker(settings, lambda bs: bench_serve(
            settings, bs, seconds=args.seconds, rounds=args.rounds, load_fraction=args.load_fraction,
            concurrency=args.concurrency, progress=lambda m: print(m, file=sys.stderr)))
    elif args.target in ("pipeline", "restore"):
        result = _bench_user_side(args, settings)
    else:
        result = _with_broker(settings, lambda bs: bench.bench_freshness_items(
            settings, bs, args.upserts, progress=lambda m: print(m, file=sys.stderr)))
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            shown = f"{value:,.1f}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else value
            print(f"{key:<24} {shown}")
    return 0


_COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], int | None]] = {
    "kafka": _cmd_kafka,
    "topics": _cmd_topics,
    "produce": _cmd_produce,
    "consume": _cmd_consume,
    "demo": _cmd_demo,
    "run": _cmd_run,
    "model": _cmd_model,
    "rollout": _cmd_rollout,
    "train": _cmd_train,
    "serve": _cmd_run,
    "config": _cmd_config,
    "eval": _cmd_eval,
    "bench": _cmd_bench,
    "chaos": _cmd_chaos,
}


if __name__ == "__main__":
    sys.exit(main())
