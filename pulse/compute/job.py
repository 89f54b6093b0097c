"""The Pulse Spark job: Kafka -> 1-second windows -> ClickHouse, plus rejects and health.

One definition, used by the notebook, by `pulse process` (headless) and by `pulse demo`.
Two streaming queries share the source topic: `pulse_metrics` (stateful, update mode) and
`pulse_rejects` (stateless). Both write through `foreachBatch` with the Spark batch id as the
row version, so a batch replayed after a crash overwrites itself instead of adding to the table.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery, StreamingQueryListener

from pulse.compute.columns import (
    late_trades,
    parse_messages,
    rejected_messages,
    valid_trades,
    window_aggregates,
    window_metrics_columns,
    with_write_time,
)
from pulse.compute.spark_session import build_spark_session
from pulse.settings import PulseSettings
from pulse.storage.clickhouse import ClickHouseTransport

METRICS_QUERY = "pulse_metrics"
REJECTS_QUERY = "pulse_rejects"


def read_kafka(spark: SparkSession, settings: PulseSettings, bootstrap: str) -> DataFrame:
    reader = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", bootstrap)
        .option("subscribe", settings.kafka.trades_topic)
        .option("startingOffsets", settings.spark.starting_offsets)
        # A deleted or compacted offset range is counted (pulse_health.data_loss_offsets), not fatal.
        .option("failOnDataLoss", "false")
    )
    if settings.spark.max_offsets_per_trigger:
        reader = reader.option("maxOffsetsPerTrigger", str(settings.spark.max_offsets_per_trigger))
    return reader.load()


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class MetricsSink:
    """foreachBatch targets writing Spark micro-batches as Arrow into ClickHouse."""

    def __init__(self, transport: ClickHouseTransport) -> None:
        self._transport = transport

    def write_metrics(self, batch: DataFrame, batch_id: int) -> None:
        stamped = with_write_time(batch, _now_ms(), batch_id)
        self._transport.insert_arrow("pulse_metrics", stamped.toArrow())

    def write_rejects(self, batch: DataFrame, batch_id: int) -> None:
        stamped = batch.select(
            F.timestamp_millis(F.lit(_now_ms())).alias("rejected_at"), "*",
            F.lit(batch_id).cast("long").alias("version"),
        )
        self._transport.insert_arrow("pulse_rejects", stamped.toArrow())


def kafka_offsets(progress_offsets: str | None) -> dict[str, dict[str, int]]:
    """A progress report's offsets ({topic: {partition: offset}}); {} when there are none.

    PySpark renders a missing offset (the first batch's start) as the string "None".
    """
    if not progress_offsets or not progress_offsets.lstrip().startswith("{"):
        return {}
    parsed: dict[str, dict[str, int]] = json.loads(progress_offsets)
    return parsed


def offset_range_size(start_offsets: str | None, end_offsets: str | None) -> int:
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


class LateTradeCounter:
    """Counts, trade by trade, what one metrics micro-batch dropped behind the watermark.

    Spark reports late rows after partial aggregation (one row per window and partition, however
    many trades it held). When it reports any, this re-reads the batch's exact offset range and
    applies Spark's rule: a row is late when its window ended at or before the previous batch's
    watermark (`pulse.compute.metrics.is_late`).
    """

    def __init__(self, spark: SparkSession, settings: PulseSettings, bootstrap: str, checkpoint: Path) -> None:
        self._spark = spark
        self._settings = settings
        self._bootstrap = bootstrap
        self._checkpoint = checkpoint

    def count(self, batch_id: int, start_offsets: str | None, end_offsets: str | None) -> int:
        late_watermark = batch_watermark_ms(self._checkpoint, batch_id - 1)
        if late_watermark <= 0 or not kafka_offsets(start_offsets) or not kafka_offsets(end_offsets):
            return 0
        rows = (
            self._spark.read.format("kafka")
            .option("kafka.bootstrap.servers", self._bootstrap)
            .option("subscribe", self._settings.kafka.trades_topic)
            .option("startingOffsets", start_offsets)
            .option("endingOffsets", end_offsets)
            .option("failOnDataLoss", "false")
            .load()
        )
        return late_trades(valid_trades(parse_messages(rows)), late_watermark).count()


class HealthListener(StreamingQueryListener):
    """Writes one `pulse_health` row per micro-batch progress report."""

    def __init__(self, transport: ClickHouseTransport, late_counter: LateTradeCounter | None = None) -> None:
        self._transport = transport
        self._late_counter = late_counter
        # A Spark session may run other jobs' queries (tests, notebooks): report only ours.
        self.query_ids: set[str] = set()
        self.metrics_query_id = ""

    def onQueryStarted(self, event: Any) -> None:
        pass

    def onQueryIdle(self, event: Any) -> None:
        pass

    def onQueryTerminated(self, event: Any) -> None:
        pass

    def onQueryProgress(self, event: Any) -> None:
        import pyarrow as pa  # noqa: PLC0415

        progress = event.progress
        if str(progress.id) not in self.query_ids:
            return
        dropped = sum(op.numRowsDroppedByWatermark for op in progress.stateOperators)
        state_rows = sum(op.numRowsTotal for op in progress.stateOperators)
        watermark = (progress.eventTime or {}).get("watermark")
        late = 0
        if dropped and self._late_counter is not None and str(progress.id) == self.metrics_query_id:
            late = sum(self._late_counter.count(progress.batchId, source.startOffset, source.endOffset)
                       for source in progress.sources)
        # failOnDataLoss=false skips offsets that were deleted before they were read: the range
        # Spark planned minus the records it got is what was lost.
        in_range = sum(offset_range_size(source.startOffset, source.endOffset) for source in progress.sources)
        data_loss = max(0, in_range - int(progress.numInputRows)) if progress.batchId > 0 else 0
        row = {
            "reported_at": [_now_ms()],
            "query_name": [progress.name or ""],
            "batch_id": [progress.batchId],
            "input_rows": [progress.numInputRows],
            "input_rows_per_second": [float(progress.inputRowsPerSecond or 0.0)],
            "processed_rows_per_second": [float(progress.processedRowsPerSecond or 0.0)],
            "late_rows_dropped": [dropped],
            "late_trades": [late],
            "state_rows": [state_rows],
            "watermark": [_iso_to_ms(watermark)],
            "batch_duration_ms": [int((progress.durationMs or {}).get("triggerExecution", 0))],
            "data_loss_offsets": [data_loss],
        }
        table = pa.table(row).set_column(0, "reported_at", pa.array(row["reported_at"], pa.timestamp("ms", "UTC")))
        table = table.set_column(table.schema.get_field_index("watermark"), "watermark",
                                 pa.array(row["watermark"], pa.timestamp("ms", "UTC")))
        self._transport.insert_arrow("pulse_health", table)


def _iso_to_ms(value: str | None) -> int | None:
    if not value:
        return None
    from datetime import datetime  # noqa: PLC0415

    return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)


@dataclass
class PulseQueries:
    spark: SparkSession
    metrics: StreamingQuery
    rejects: StreamingQuery
    listener: HealthListener

    def all(self) -> list[StreamingQuery]:
        return [self.metrics, self.rejects]

    def stop(self) -> None:
        for query in self.all():
            query.stop()
        self.spark.streams.removeListener(self.listener)

    def raise_if_failed(self) -> None:
        for query in self.all():
            error = query.exception()
            if error is not None:
                raise RuntimeError(f"streaming query {query.name} failed: {error}")


def start_queries(spark: SparkSession, settings: PulseSettings, bootstrap: str,
                  transport: ClickHouseTransport) -> PulseQueries:
    """Start the metrics and rejects queries; they run until stopped."""
    sink = MetricsSink(transport)
    checkpoints = settings.checkpoint_dir
    listener = HealthListener(
        transport, LateTradeCounter(spark, settings, bootstrap, (checkpoints / METRICS_QUERY).resolve()))
    spark.streams.addListener(listener)
    trigger = f"{settings.spark.trigger_ms} milliseconds"
    parsed = parse_messages(read_kafka(spark, settings, bootstrap))

    windows = window_metrics_columns(
        window_aggregates(
            valid_trades(parsed).withWatermark("trade_time", f"{int(settings.spark.watermark_s * 1000)} milliseconds")
        ),
        settings.signal,
    )
    metrics = (
        windows.writeStream.queryName(METRICS_QUERY).outputMode("update")
        .trigger(processingTime=trigger)
        .option("checkpointLocation", str((checkpoints / METRICS_QUERY).resolve()))
        .foreachBatch(sink.write_metrics)
        .start()
    )
    rejects = (
        rejected_messages(parsed).writeStream.queryName(REJECTS_QUERY).outputMode("append")
        .trigger(processingTime=f"{settings.spark.rejects_trigger_ms} milliseconds")
        .option("checkpointLocation", str((checkpoints / REJECTS_QUERY).resolve()))
        .foreachBatch(sink.write_rejects)
        .start()
    )
    listener.query_ids.update({str(metrics.id), str(rejects.id)})
    listener.metrics_query_id = str(metrics.id)
    return PulseQueries(spark=spark, metrics=metrics, rejects=rejects, listener=listener)


def wait_until_caught_up(queries: PulseQueries, end_offsets: Mapping[str, Mapping[int, int]],
                         timeout_s: float, poll_s: float = 0.25) -> None:
    """Block until both queries have processed up to `end_offsets` ({topic: {partition: offset}})."""
    deadline = time.monotonic() + timeout_s
    pending = queries.all()
    while pending:
        queries.raise_if_failed()
        pending = [q for q in pending if not reached(q, end_offsets)]
        if not pending:
            return
        if time.monotonic() > deadline:
            names = ", ".join(q.name for q in pending)
            raise TimeoutError(f"Spark queries {names} did not catch up within {timeout_s:.0f}s")
        time.sleep(poll_s)


def reached(query: StreamingQuery, end_offsets: Mapping[str, Mapping[int, int]]) -> bool:
    """Whether the query's last completed batch ends at or beyond `end_offsets`."""
    progress = query.lastProgress
    if not progress:
        return False
    for source in progress.get("sources", []):
        processed = source.get("endOffset")
        if isinstance(processed, str):
            processed = json.loads(processed)
        if not isinstance(processed, dict):
            return False
        for topic, partitions in end_offsets.items():
            done = processed.get(topic, {})
            if any(int(done.get(str(p), 0)) < end for p, end in partitions.items()):
                return False
    return True


@contextmanager
def running_job(settings: PulseSettings, bootstrap: str, transport: ClickHouseTransport) -> Iterator[PulseQueries]:
    """A Spark session running the Pulse queries; both are stopped on exit, whatever happened."""
    spark = build_spark_session(settings)
    try:
        queries = start_queries(spark, settings, bootstrap, transport)
        try:
            yield queries
        finally:
            queries.stop()
    finally:
        spark.stop()
