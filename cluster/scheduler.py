"""Periodic fine-tuning inside `streamrec run`: a run every T minutes or N new events, then rollout.

The scheduler is a daemon thread beside the running stack. Each run reads the
newest window of ``events`` and the catalogue from Kafka, trains on Ray Train,
gates and publishes (``cluster.train.train_once``); a published version is rolled
out to the encoder shards (re-encode in the background, atomic swap) and then to
the profile workers (profiles rebuilt from their recent-item rings). A failed run
is logged and counted; serving stays on the previous version and the next run is
tried at the next trigger.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from cluster.settings import Settings

__all__ = ["TrainScheduler", "roll_out", "due"]

logger = logging.getLogger(__name__)


def due(*, now: float, last_run: float, every_minutes: float, events_now: int, events_at_last: int,
        every_events: int) -> bool:  # fmt: skip
    """Whether a run is due: ``every_minutes`` have passed, or ``every_events`` (> 0) new events arrived."""
    if now - last_run >= every_minutes * 60.0:
        return True
    return every_events > 0 and events_now - events_at_last >= every_events


def roll_out(search: Any, pipeline: Any, version: int, path: str, timeout_s: float = 1800.0) -> None:
    """Shards re-encode with ``version`` and swap; then every profile worker switches to it."""
    search.load_model(version, path, wait_s=timeout_s)
    pipeline.rollout(search, version, timeout_s=timeout_s)


class TrainScheduler:
    def __init__(self, settings: Settings, bootstrap: str, stack: Any,
                 progress: Callable[[str], None] = lambda m: logger.info("%s", m)):  # fmt: skip
        self.settings = settings
        self.bootstrap = bootstrap
        self.stack = stack
        self.progress = progress
        self.runs = 0
        self.failures = 0
        self.last_result: dict[str, Any] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="finetune-scheduler", daemon=True)

    def start(self) -> "TrainScheduler":
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)

    def _events_applied(self) -> int:
        return sum(int(s.get("events", 0)) for s in self.stack.pipeline.stats())

    def _loop(self) -> None:
        t = self.settings.train
        last_run, at_last = time.monotonic(), self._events_applied()
        while not self._stop.wait(1.0):
            try:
                applied = self._events_applied()
            except Exception:  # workers restarting: ask again later
                continue
            if not due(now=time.monotonic(), last_run=last_run, every_minutes=t.every_minutes, events_now=applied,
                       events_at_last=at_last, every_events=t.every_events):  # fmt: skip
                continue
            last_run, at_last = time.monotonic(), applied
            self.run_once()

    def run_once(self) -> dict[str, Any] | None:
        """One run now: train, gate, publish, roll out. Never raises (failures are logged and counted)."""
        from cluster.train import read_window, train_once

        self.runs += 1
        started = time.monotonic()
        try:
            window = read_window(self.settings, self.bootstrap, self.settings.train.window_events)
            result = train_once(self.settings, window, progress=self.progress)
            if result.version is not None:
                self.progress(f"rolling out model version {result.version}")
                roll_out(self.stack.search, self.stack.pipeline, result.version, result.path)
                if getattr(self.stack, "reconfigure_api", None) is not None:  # replicas report the new version
                    self.stack.reconfigure_api(model_version=result.version)
                self.progress(f"every shard and worker serves model version {result.version}, "
                              f"{time.monotonic() - started:.1f} s after the trigger")  # fmt: skip
            self.last_result = result.as_dict() | {"trigger_to_serving_s": round(time.monotonic() - started, 2)}
            return self.last_result
        except Exception:
            self.failures += 1
            logger.exception("fine-tuning run %d failed; serving stays on the current model version", self.runs)
            return None
