"""Reading Spark's own account of a streaming query: offsets, watermarks, progress reports.

Everything that interprets a `StreamingQueryProgress` or a checkpoint lives here: whether a query
has caught up with the topic, when a replay is over (idle), the health row of a micro-batch,
and whether the job is healthy. Pure functions over Spark's JSON and the checkpoint files.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def kafka_offsets(progress_offsets: str | Mapping[str, Any] | None) -> dict[str, dict[str, int]]:
    """A progress report's offsets ({topic: {partition: offset}}); {} when there are none.

    PySpark renders a missing offset (the first batch's start) as the string "None".
    """
    if isinstance(progress_offsets, Mapping):
        return {topic: {str(p): int(o) for p, o in parts.items()} for topic, parts in progress_offsets.items()}
    if not progress_offsets or not progress_offsets.lstrip().startswith("{"):
        return {}
    parsed: dict[str, dict[str, int]] = json.loads(progress_offsets)
    return parsed


def offset_range_size(start_offsets: str | Mapping[str, Any] | None,
                      end_offsets: str | Mapping[str, Any] | None) -> int:
    """Kafka records in a micro-batch's offset range; 0 when the start is unknown."""
    start, end = kafka_offsets(start_offsets), kafka_offsets(end_offsets)
    if not start:
        return 0
    return sum(int(offset) - int(start.get(topic, {}).get(partition, offset))
               for topic, partitions in end.items() for partition, offset in partitions.items())


def batch_watermark_ms(checkpoint: Path, batch_id: int) -> int:
    """The event-time watermark Spark recorded for a batch in its offset log (0 before any)."""
    log = checkpoint / "offsets" / str(batch_id)
    if batch_id < 0 or not log.exists():
        return 0
    metadata = json.loads(log.read_text().splitlines()[1])
    return int(metadata.get("batchWatermarkMs", 0))


def checkpoint_offsets(checkpoint: Path) -> dict[str, dict[str, int]]:
    """Where a query resumes: the source offsets of the newest entry of its offset log ({} before any)."""
    logs = sorted((int(p.name), p) for p in (checkpoint / "offsets").glob("[0-9]*")) if checkpoint.exists() else []
    return kafka_offsets(logs[-1][1].read_text().splitlines()[2]) if logs else {}


def behind_retention(resume_at: Mapping[str, Mapping[str, int]], log_start: Mapping[int, int], topic: str) -> bool:
    """Whether retention deleted offsets the checkpoint has yet to read, in any partition of `topic`."""
    return any(int(offset) < log_start.get(int(partition), 0)
               for partition, offset in resume_at.get(topic, {}).items())


def unread(resume_at: Mapping[str, Mapping[str, int]], fresh_start: Mapping[int, int], ends: Mapping[int, int],
           topic: str) -> int:
    """Records of `topic` a query has yet to read: from where its checkpoint resumes, or from
    `fresh_start` (where a query without a checkpoint begins) in partitions it has not read yet."""
    resumed = {int(partition): int(offset) for partition, offset in resume_at.get(topic, {}).items()}
    return sum(max(0, end - resumed.get(partition, fresh_start.get(partition, end)))
               for partition, end in ends.items())


def reached(progress: Mapping[str, Any] | None, end_offsets: Mapping[str, Mapping[int, int]]) -> bool:
    """Whether a query's last completed batch (its `lastProgress`) ends at or beyond `end_offsets`."""
    if not progress:
        return False
    for source in progress.get("sources", []):
        processed = kafka_offsets(source.get("endOffset"))
        if not processed:
            return False
        for topic, partitions in end_offsets.items():
            done = processed.get(topic, {})
            if any(int(done.get(str(p), 0)) < end for p, end in partitions.items()):
                return False
    return True


def caught_up(progress: Mapping[str, Any] | None, status: Mapping[str, Any]) -> bool:
    """The last batch read up to the latest offsets Kafka had, and the source reports nothing newer.

    Spark's own view of the topic (the progress's latestOffset and the status's isDataAvailable),
    which is what the query will actually read next.
    """
    if not progress or status.get("isDataAvailable") or status.get("isTriggerActive"):
        return False
    for source in progress.get("sources", []):
        latest = kafka_offsets(source.get("latestOffset"))
        if latest and kafka_offsets(source.get("endOffset")) != latest:
            return False
    return True


@dataclass
class IdleTracker:
    """Decides when a replay is over: everything in the topic processed, and nothing new for a while."""

    idle_after_s: float
    _quiet_since: float | None = None

    def observe(self, is_caught_up: bool, now: float) -> bool:
        """Feed one poll; True once the queries have stayed caught up for `idle_after_s`."""
        if not is_caught_up:
            self._quiet_since = None
            return False
        if self._quiet_since is None:
            self._quiet_since = now
        return now - self._quiet_since >= self.idle_after_s


def _iso_to_ms(value: str | None) -> int | None:
    if not value:
        return None
    return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)


def health_row(progress: Mapping[str, Any], late_trades: int) -> pa.Table:
    """The `pulse_health` row of one progress report (Spark's JSON, as `query.lastProgress`)."""
    operators = progress.get("stateOperators", [])
    dropped = sum(op.get("numRowsDroppedByWatermark", 0) for op in operators)
    # failOnDataLoss=false skips offsets that were deleted before they were read: the range
    # Spark planned minus the records it got is what was lost.
    in_range = sum(offset_range_size(source.get("startOffset"), source.get("endOffset"))
                   for source in progress.get("sources", []))
    batch_id = int(progress["batchId"])
    data_loss = max(0, in_range - int(progress.get("numInputRows", 0))) if batch_id > 0 else 0
    ms = pa.timestamp("ms", "UTC")
    return pa.table({
        "reported_at": pa.array([now_ms()], ms),
        "query_name": [progress.get("name") or ""],
        "batch_id": [batch_id],
        "input_rows": [int(progress.get("numInputRows", 0))],
        # Spark leaves out a rate it cannot compute (NaN): 0.
        "input_rows_per_second": [float(progress.get("inputRowsPerSecond") or 0.0)],
        "processed_rows_per_second": [float(progress.get("processedRowsPerSecond") or 0.0)],
        "late_rows_dropped": [dropped],
        "late_trades": [late_trades],
        "state_rows": [sum(op.get("numRowsTotal", 0) for op in operators)],
        "watermark": pa.array([_iso_to_ms(progress.get("eventTime", {}).get("watermark"))], ms),
        "batch_duration_ms": [int(progress.get("durationMs", {}).get("triggerExecution", 0))],
        "data_loss_offsets": [data_loss],
    })


def silent_for(last_progress_at: float | None, started_at: float, now: float) -> float:
    """Seconds since the last progress report, or since the queries started when none came yet."""
    return now - (started_at if last_progress_at is None else max(last_progress_at, started_at))


def job_health(queries: Sequence[Any], last_progress_at: float | None, stale_after_s: float,
               now: float) -> dict[str, Any]:
    """Ready only while every query is active and a progress report came within `stale_after_s`.

    A streaming query reports progress after each trigger, data or not (idle queries report every
    `spark.sql.streaming.noDataProgressEventInterval`), so silence means the job is stuck.
    """
    active = {query.name: bool(query.isActive) for query in queries}
    age = None if last_progress_at is None else now - last_progress_at
    ready = bool(active) and all(active.values()) and age is not None and age < stale_after_s
    return {"ready": ready, "queries": active, "last_progress_age_s": age}
