"""The profiles changelog: one compacted record per user holding its latest profile snapshot.

Snapshot/restore contract
-------------------------
* The changelog is co-partitioned with ``events``: the state of a user whose
  events live in events partition *p* is written to changelog partition *p*
  (explicitly, not by the producer's partitioner), keyed by ``user_id``.
* Each value is ``CHANGELOG_MAGIC`` + format version + (source partition i32,
  source offset i64, model version u32) + the profile snapshot bytes
  (``actors.core.snapshot``, SRPF). The model version names the encoder whose item
  vectors the profile was folded from: a profile restored under a newer model is
  rebuilt from its recent-item ring with the new vectors before it is used. The offset is that of the **last event applied** to the profile, so a
  restored profile knows which events it already contains: an event of the same
  user at or below that offset is never applied again (at-least-once mode relies
  on it; exactly-once mode keeps it as a guard).
* Restore reads the owned changelog partitions from the beginning up to their end
  offsets with ``read_committed`` (so only committed transactions count); the last
  record of a key wins and a tombstone (null value) deletes the user. The consumer
  then resumes ``events`` from the committed offsets, "after the last applied offset".
* Records in this topic are written by streamrec only; one that does not decode is a
  corrupted store, reported with its ``topic[partition]@offset``, never skipped.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from streams.errors import KafkaSetupError

__all__ = ["ChangelogRecord", "CorruptChangelog", "CHANGELOG_MAGIC", "encode_changelog", "decode_changelog",
           "read_partitions"]  # fmt: skip

CHANGELOG_MAGIC = b"SRCL"
_VERSION = 2
_HEADER_V1 = struct.Struct("<4sBiq")  # magic, version, source partition, source offset
_HEADER = struct.Struct("<4sBiqI")  # ... and the model version whose item space the profile is in


class CorruptChangelog(KafkaSetupError):
    """A changelog record that streamrec cannot read (written by something else, or damaged)."""


@dataclass(frozen=True, slots=True)
class ChangelogRecord:
    user_id: str
    source_partition: int
    source_offset: int  # the last event applied to this profile
    profile: bytes  # SRPF snapshot (actors.core.snapshot)
    model_version: int = 0  # the encoder version of the item vectors folded into it


def encode_changelog(source_partition: int, source_offset: int, profile: bytes, model_version: int = 0) -> bytes:
    return _HEADER.pack(CHANGELOG_MAGIC, _VERSION, source_partition, source_offset, model_version) + profile


def decode_changelog(key: bytes | None, value: bytes, where: str = "") -> ChangelogRecord:
    """Decode a changelog value; format 1 (no model version: 0) and 2 are read."""
    if key is None or len(value) < _HEADER_V1.size or value[:4] != CHANGELOG_MAGIC:
        raise CorruptChangelog(f"{where}: not a streamrec changelog record; the topic must only be written by "
                               "streamrec's profile workers (delete and recreate it to rebuild from events)")  # fmt: skip
    version = value[4]
    if version == 1:
        _, _, partition, offset = _HEADER_V1.unpack_from(value)
        return ChangelogRecord(key.decode("utf-8"), partition, offset, value[_HEADER_V1.size:], 0)
    if version != _VERSION or len(value) < _HEADER.size:
        raise CorruptChangelog(f"{where}: changelog format version {version} is not supported (this build "
                               f"reads versions 1 and {_VERSION}); upgrade streamrec")  # fmt: skip
    _, _, partition, offset, model_version = _HEADER.unpack_from(value)
    return ChangelogRecord(key.decode("utf-8"), partition, offset, value[_HEADER.size:], model_version)


def read_partitions(consumer: Any, topic: str, partitions: list[int], *, until: dict[int, int] | None = None,
                    timeout_s: float = 300.0, last: int | None = None) -> Iterator[Any]:  # fmt: skip
    """Yield the raw records of ``topic``'s ``partitions`` from the beginning up to ``until``
    (partition -> exclusive end offset; default: the current end offsets, which under
    ``read_committed`` is the last stable offset). With ``last``, each partition starts at
    most ``last`` offsets before its end instead. The consumer must be group-less."""
    from kafka import TopicPartition

    tps = [TopicPartition(topic, p) for p in partitions]
    consumer.assign(tps)
    if not tps:
        return
    consumer.seek_to_beginning(*tps)
    ends = consumer.end_offsets(tps) if until is None else {TopicPartition(topic, p): o for p, o in until.items()}
    if last is not None:
        for tp in tps:
            if ends.get(tp, 0) - last > consumer.position(tp):
                consumer.seek(tp, ends[tp] - last)
    todo = {tp for tp in tps if ends.get(tp, 0) > 0}
    for tp in tps:
        if tp not in todo:
            consumer.pause(tp)
    deadline = time.monotonic() + timeout_s
    while todo:
        for tp, records in consumer.poll(timeout_ms=200, max_records=5000).items():
            for r in records:
                if r.offset < ends[tp]:
                    yield r
        for tp in list(todo):
            if consumer.position(tp) >= ends[tp]:
                todo.discard(tp)
                consumer.pause(tp)
        if todo and time.monotonic() > deadline:
            raise KafkaSetupError(f"reading {topic} partitions {sorted(tp.partition for tp in todo)} did not reach "
                                  f"their end offsets within {timeout_s} s: is the broker healthy?")  # fmt: skip
