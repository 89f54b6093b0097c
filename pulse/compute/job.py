"""The Pulse Spark job: Kafka -> 1-second windows -> sinks, plus rejects and health.

This module builds and starts the queries, nothing else: the session comes from
`spark_session`, the sinks from `pulse.storage.sinks`, and reading progress from `progress`.
Two streaming queries share the source topic: `pulse_metrics` (stateful, update mode) and
`pulse_rejects` (stateless). How they write depends on `spark.mode`:

- realtime (default): Spark's Real-Time Mode. Long-running tasks process each trade as it
  arrives, and Spark's own Kafka sink writes each window update and reject to the metrics and
  rejects topics; the store writer (`pulse.writer`) inserts them. No Python on the per-row path.
- microbatch: a batch per trigger, collected to Arrow in a `foreachBatch` callback and written
  through the sinks.

Either way a row's version is its window's trade count, so a replay overwrites itself instead of
adding to the table.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from py4j.protocol import Py4JJavaError
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.streaming import StreamingQuery

from pulse.compute.columns import (
    late_trades,
    parse_messages,
    reject_records,
    rejected_messages,
    valid_trades,
    window_aggregates,
    window_metrics_columns,
    window_update_records,
)
from pulse.compute.progress import (
    batch_watermark_ms,
    health_row,
    job_health,
    kafka_offsets,
    now_ms,
    silent_for,
)
from pulse.compute.stamps import stamp_metrics, stamp_rejects, with_first_trade_time
from pulse.errors import JobFailed, JobStalled, StoreError
from pulse.settings import PulseSettings
from pulse.storage.sinks import PulseSinks

log = logging.getLogger(__name__)

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


class LateTradeCounter:
    """Counts, trade by trade, what one metrics micro-batch dropped behind the watermark.

    Spark reports late rows after partial aggregation (one row per window and partition, however
    many trades it held). When it reports any, this re-reads the batch's exact offset range and
    applies Spark's rule: a row is late when its window ended at or before the previous batch's
    watermark (`columns.late_trades`).
    """

    def __init__(self, spark: SparkSession, settings: PulseSettings, bootstrap: str, checkpoint: Path) -> None:
        self._spark = spark
        self._settings = settings
        self._bootstrap = bootstrap
        self._checkpoint = checkpoint

    def count(self, batch_id: int, start_offsets: Any, end_offsets: Any) -> int:
        late_watermark = batch_watermark_ms(self._checkpoint, batch_id - 1)
        start, end = kafka_offsets(start_offsets), kafka_offsets(end_offsets)
        if late_watermark <= 0 or not start or not end:
            return 0
        rows = (
            self._spark.read.format("kafka")
            .option("kafka.bootstrap.servers", self._bootstrap)
            .option("subscribe", self._settings.kafka.trades_topic)
            .option("startingOffsets", json.dumps(start))
            .option("endingOffsets", json.dumps(end))
            .option("failOnDataLoss", "false")
            .load()
            # One task, not one per partition: in Real-Time Mode every other slot is held by the
            # queries' long-running tasks (PulseSettings.task_slots keeps one free for this).
            .coalesce(1)
        )
        return late_trades(valid_trades(parse_messages(rows)), late_watermark).count()


@dataclass
class BatchTimings:
    """Where the Python side of each metrics micro-batch spends its time (ms), for the benchmarks.

    `collect` is `toArrow()`, which runs the batch's plan (the stateful aggregation included) and
    converts it to Arrow; `insert` is the sink's write; `callback` the whole foreachBatch function;
    `listener` the health listener per progress report (it runs on Spark's listener thread).
    """

    collect: list[float] = field(default_factory=list)
    insert: list[float] = field(default_factory=list)
    callback: list[float] = field(default_factory=list)
    listener: list[float] = field(default_factory=list)

    def add(self, name: str, started: float) -> float:
        now = time.perf_counter()
        values: list[float] = getattr(self, name)
        values.append((now - started) * 1000)
        del values[:-1000]  # the newest thousand are plenty for a mean
        return now


class HealthListener:
    """Writes one `pulse_health` row per micro-batch progress report of our queries.

    Spark calls it on its listener thread with each report as Spark's own JSON (the form of
    `query.lastProgress`). PySpark's `StreamingQueryListener` would first rebuild the report from
    the JVM object field by field: ~60 py4j calls per report, each resolved by reflection, which
    took a sixth of the driver JVM's CPU at two reports a second (docs/benchmarks.md). One call
    for the JSON costs next to nothing.
    """

    def __init__(self, sinks: PulseSinks, late_counter: LateTradeCounter | None = None) -> None:
        self._sinks = sinks
        self._late_counter = late_counter
        # A Spark session may run other jobs' queries (tests, notebooks): report only ours.
        self.query_ids: set[str] = set()
        self.metrics_query_id = ""
        self.last_progress_at: float | None = None
        self.last_batch_ms = 0
        self.timings = BatchTimings()
        self._jlistener: Any = None
        self.health_rows_lost = 0

    def attach(self, spark: SparkSession) -> None:
        from pyspark.java_gateway import ensure_callback_server_started  # noqa: PLC0415

        jvm = spark.sparkContext._jvm
        assert jvm is not None
        # The JVM calls this listener through py4j's callback server. foreachBatch starts that server
        # too, but Real-Time Mode has no foreachBatch: without this, every report fails unseen.
        ensure_callback_server_started(spark.sparkContext._gateway)  # type: ignore[no-untyped-call]
        self._jlistener = jvm.org.apache.spark.sql.streaming.PythonStreamingQueryListenerWrapper(_JsonEvents(self))
        spark._jsparkSession.streams().addListener(self._jlistener)

    def detach(self, spark: SparkSession, drain_s: float = 60.0) -> None:
        """Once the queries stopped: the reports already posted are written first. Spark delivers
        them on its listener thread, the last batches' ones (and the late-trade count, a Spark read
        of its own) often after `stop()` returned; removing the listener earlier drops their rows."""
        if self._jlistener is None:
            return
        try:
            spark.sparkContext._jsc.sc().listenerBus().waitUntilEmpty(int(drain_s * 1000))
        except Py4JJavaError as error:  # the JVM's TimeoutException
            log.warning("pulse_health rows of the last batches may be missing: Spark's listener did not"
                        f" drain within {drain_s:g} s", extra={"error": repr(error)})
        spark._jsparkSession.streams().removeListener(self._jlistener)
        self._jlistener = None

    def on_idle(self, query_id: str) -> None:
        if query_id in self.query_ids:
            self.last_progress_at = time.monotonic()

    def on_progress(self, progress: dict[str, Any]) -> None:
        query_id = progress["id"]
        if query_id not in self.query_ids:
            return
        started = time.perf_counter()
        self.last_progress_at = time.monotonic()
        late = 0
        dropped = sum(op.get("numRowsDroppedByWatermark", 0) for op in progress.get("stateOperators", []))
        if dropped and self._late_counter is not None and query_id == self.metrics_query_id:
            late = sum(self._late_counter.count(progress["batchId"], source.get("startOffset"), source.get("endOffset"))
                       for source in progress.get("sources", []))
        if query_id == self.metrics_query_id:
            self.last_batch_ms = int(progress.get("durationMs", {}).get("triggerExecution", 0))
        try:
            self._sinks.health.write(health_row(progress, late))
        except StoreError as error:
            # The store is down (the writer retries the windows, /health says so): a progress row is
            # telemetry, counted as lost rather than thrown into Spark's listener thread.
            if not self.health_rows_lost:
                log.warning("pulse_health rows are lost while the store refuses them", extra={"error": repr(error)})
            self.health_rows_lost += 1
        self.timings.add("listener", started)


class _JsonEvents:
    """The Python side of Spark's `PythonStreamingQueryListener`, handing reports on as JSON."""

    def __init__(self, listener: HealthListener) -> None:
        self._listener = listener

    def onQueryStarted(self, event: Any) -> None:
        pass

    def onQueryProgress(self, event: Any) -> None:
        self._listener.on_progress(json.loads(event.progress().json()))

    def onQueryIdle(self, event: Any) -> None:
        self._listener.on_idle(event.id().toString())

    def onQueryTerminated(self, event: Any) -> None:
        pass

    class Java:
        implements: ClassVar[list[str]] = ["org.apache.spark.sql.streaming.PythonStreamingQueryListener"]


@dataclass
class PulseQueries:
    spark: SparkSession
    metrics: StreamingQuery
    rejects: StreamingQuery
    listener: HealthListener
    stopped: bool = field(default=False)
    started_at: float = field(default_factory=time.monotonic)

    def all(self) -> list[StreamingQuery]:
        return [self.metrics, self.rejects]

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        with quiet_stop(self.spark):
            for query in self.all():
                query.stop()
        self.listener.detach(self.spark)

    def raise_if_failed(self) -> None:
        for query in self.all():
            error = query.exception()
            if error is None:
                continue
            if "CONCURRENT_SCHEDULER_INSUFFICIENT_SLOT" in str(error):
                # Spark's documented error class: Real-Time Mode runs all its tasks at once.
                raise JobFailed(f"streaming query {query.name} needs more task slots than the cluster offers: "
                                   f"give it 2 x partitions + shuffle partitions + 1 per job (docs/scaling.md) "
                                   f"or set PULSE_SPARK__MODE=microbatch; Spark said: {error}")
            if "ExecutorLostFailure" in str(error):
                # Spark's failure reason for a lost executor: RTM fails the query rather than retry.
                raise JobFailed(f"streaming query {query.name} lost an executor (Real-Time Mode does not retry its "
                                   f"tasks): start the job again once the cluster has its task slots; it resumes "
                                   f"from its checkpoint (docs/scaling.md). Spark said: {error}")
            raise JobFailed(f"streaming query {query.name} failed: {error}")

    def raise_if_stalled(self, after_s: float | None) -> None:
        """Real-Time Mode: no progress report for `after_s` (None: never checked) is a stuck batch."""
        if after_s is None:
            return
        silent = silent_for(self.listener.last_progress_at, self.started_at, time.monotonic())
        if silent > after_s:
            raise JobStalled(f"no progress for {silent:.0f} s in Real-Time Mode, whose batches end on time"
                             " whatever they read: a batch waits for tasks that never launch (a worker lost)."
                             " Start the job again once the cluster has its task slots; it resumes from its"
                             " checkpoint (docs/scaling.md)")

    def health(self, stale_after_s: float) -> dict[str, Any]:
        return job_health(self.all(), self.listener.last_progress_at, stale_after_s, time.monotonic())


_STATE_STORES = {
    "hdfs": "org.apache.spark.sql.execution.streaming.state.HDFSBackedStateStoreProvider",
    "rocksdb": "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider",
}


def _configure(spark: SparkSession, settings: PulseSettings) -> None:
    """Streaming SQL settings, read by a query when it starts (a checkpoint keeps its own)."""
    job = settings.spark
    spark.conf.set("spark.sql.shuffle.partitions", str(job.shuffle_partitions))
    # Spark refuses Real-Time Mode batches under 5 s unless told: the tests use shorter ones, so
    # that waiting for a batch's end (caught up, idle) takes less; the setting is the one guard.
    spark.conf.set("spark.sql.streaming.realTimeMode.minBatchDuration", f"{int(job.realtime_batch_s * 1000)}ms")
    spark.conf.set("spark.sql.streaming.noDataMicroBatches.enabled", str(job.no_data_batches).lower())
    spark.conf.set("spark.sql.streaming.stateStore.providerClass", _STATE_STORES[job.state_store_provider])
    spark.conf.set("spark.sql.streaming.stateStore.rocksdb.changelogCheckpointing.enabled",
                   str(job.state_store_provider == "rocksdb").lower())
    # Micro-batch mode keeps Spark's defaults for the next two: a shared session (a notebook, the
    # tests) may run both modes.
    if settings.realtime:
        # Real-Time Mode resumes only checkpoints of state format v2 (RocksDB's); so must the
        # micro-batches that catch a backlog up before it (start_queries), on a fresh checkpoint too.
        spark.conf.set("spark.sql.streaming.stateStore.checkpointFormatVersion", "2")
        # A job killed in its first Real-Time Mode batch leaves state metadata and an empty offset
        # log; the catch-up's first micro-batch would take that for a folder another query uses.
        # Pulse gives each query a folder of its own (checkpoint_dir / query name).
        spark.conf.set("spark.sql.streaming.verifyCheckpointDirectoryEmptyOnStart", "false")
    else:
        spark.conf.unset("spark.sql.streaming.stateStore.checkpointFormatVersion")
        spark.conf.unset("spark.sql.streaming.verifyCheckpointDirectoryEmptyOnStart")


@contextlib.contextmanager
def quiet_stop(spark: SparkSession) -> Iterator[None]:
    """Stopping a Real-Time Mode query cancels its long-running tasks, and Spark logs that as errors
    (the shuffle writer closed, the job cancelled, a broadcast block gone): a requested stop is no
    failure, so Spark's log is kept to fatal lines while the queries stop."""
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    configurator = jvm.org.apache.logging.log4j.core.config.Configurator
    level = jvm.org.apache.logging.log4j.Level
    configurator.setRootLevel(level.FATAL)
    try:
        yield
    finally:
        configurator.setRootLevel(level.WARN)


def _kafka_sink(records: DataFrame, name: str, topic: str, settings: PulseSettings, bootstrap: str,
                catch_up: bool = False) -> StreamingQuery:
    writer: Any = (
        records.writeStream.queryName(name).outputMode("update").format("kafka")
        .option("kafka.bootstrap.servers", bootstrap).option("topic", topic)
        # Every record is on its way as soon as it is produced; Spark flushes at each batch's commit.
        .option("kafka.linger.ms", "0")
        .option("checkpointLocation", str((settings.checkpoint_dir / name).resolve()))
    )
    if catch_up:
        query: StreamingQuery = writer.trigger(availableNow=True).start()
        return query
    # pyspark's type stubs do not know the realTime trigger yet.
    query = writer.trigger(realTime=f"{settings.spark.realtime_batch_s:g} seconds").start()
    return query


def start_queries(spark: SparkSession, settings: PulseSettings, bootstrap: str, sinks: PulseSinks,
                  catch_up: bool = False) -> PulseQueries:
    """Start the metrics and rejects queries; they run until stopped.

    `catch_up` (Real-Time Mode, when trades wait in the topic): the same queries first run as
    micro-batches over what the topic holds, then in Real-Time Mode on the same checkpoints. A
    micro-batch keeps one watermark for all partitions it reads (Real-Time Mode would drop the trades
    of a partition it reaches late, `Runtime._catch_up`); and the Real-Time Mode reader fails on a
    deleted offset whatever failOnDataLoss says (Spark 4.3 with the 4.2.0 connector), where a
    micro-batch skips the deleted range and its progress counts it.
    """
    _configure(spark, settings)
    checkpoints = settings.checkpoint_dir
    listener = HealthListener(
        sinks, LateTradeCounter(spark, settings, bootstrap, (checkpoints / METRICS_QUERY).resolve()))
    listener.attach(spark)
    parsed = parse_messages(read_kafka(spark, settings, bootstrap))

    timings = listener.timings
    windows = window_metrics_columns(
        window_aggregates(
            valid_trades(parsed).withWatermark("trade_time", f"{int(settings.spark.watermark_s * 1000)} milliseconds")
        ),
        settings.signal,
    )
    if settings.realtime:
        kafka = settings.kafka

        def sinks_to_kafka(once: bool) -> tuple[StreamingQuery, StreamingQuery]:
            metrics = _kafka_sink(window_update_records(windows), METRICS_QUERY, kafka.metrics_topic, settings,
                                  bootstrap, once)
            rejects = _kafka_sink(reject_records(rejected_messages(parsed)), REJECTS_QUERY, kafka.rejects_topic,
                                  settings, bootstrap, once)
            return metrics, rejects

        if catch_up:
            caught = _started(spark, *sinks_to_kafka(once=True), listener)
            for query in caught.all():
                query.awaitTermination()
            caught.raise_if_failed()
        return _started(spark, *sinks_to_kafka(once=False), listener)

    def write_metrics(batch: DataFrame, batch_id: int) -> None:
        started = time.perf_counter()
        rows = batch.toArrow()
        collected = timings.add("collect", started)
        sinks.metrics.write(stamp_metrics(with_first_trade_time(rows), now_ms()))
        timings.add("insert", collected)
        timings.add("callback", started)

    def write_rejects(batch: DataFrame, batch_id: int) -> None:
        sinks.rejects.write(stamp_rejects(batch.toArrow(), now_ms(), batch_id))

    metrics = (
        windows.writeStream.queryName(METRICS_QUERY).outputMode("update")
        .trigger(processingTime=f"{settings.spark.trigger_ms} milliseconds")
        .option("checkpointLocation", str((checkpoints / METRICS_QUERY).resolve()))
        .foreachBatch(write_metrics)
        .start()
    )
    rejects = (
        rejected_messages(parsed).writeStream.queryName(REJECTS_QUERY).outputMode("append")
        .trigger(processingTime=f"{settings.spark.rejects_trigger_ms} milliseconds")
        .option("checkpointLocation", str((checkpoints / REJECTS_QUERY).resolve()))
        .foreachBatch(write_rejects)
        .start()
    )
    return _started(spark, metrics, rejects, listener)


def _started(spark: SparkSession, metrics: StreamingQuery, rejects: StreamingQuery,
             listener: HealthListener) -> PulseQueries:
    listener.query_ids.update({str(metrics.id), str(rejects.id)})
    listener.metrics_query_id = str(metrics.id)
    return PulseQueries(spark=spark, metrics=metrics, rejects=rejects, listener=listener)
