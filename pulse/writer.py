"""The store writer: the Real-Time Mode job's Kafka output -> `pulse_metrics` and `pulse_rejects`.

In Real-Time Mode the Spark job writes every window update and every reject with Spark's own
Kafka sink (in the JVM: Python stays off the per-row path). This service reads both topics and
inserts what arrived since its last insert, as soon as it arrives (a poll waits at most
`writer.max_wait_ms` when nothing comes), through the same `write(batch)` sinks the micro-batch
job uses. Of the updates of one window in a batch only the newest is inserted.

Exactly-once effect: offsets are committed only after the insert returned, so a writer killed
between the two inserts the same rows again on restart; a job replayed from its checkpoint emits
the same window states again. Both write the same version (the window's trade count) for the same
state, and the ReplacingMergeTree keeps one row per window: the newest state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pyarrow as pa
from aiokafka import AIOKafkaConsumer, TopicPartition
from tenacity import AsyncRetrying, RetryCallState, wait_exponential

from pulse.broker.local_kafka import end_offsets
from pulse.compute.stamps import freshness_ms, stamp_metrics, stamp_rejects, with_first_trade_time
from pulse.model import RejectV1, WindowUpdateV1
from pulse.settings import PulseSettings
from pulse.storage.sinks import PulseSinks
from pulse.telemetry import LatencyHistogram, Telemetry

log = logging.getLogger(__name__)

_MS = pa.timestamp("ms", tz="UTC")
_decode_update = msgspec.json.Decoder(WindowUpdateV1).decode
_decode_reject = msgspec.json.Decoder(RejectV1).decode
_UPDATE_FIELDS = WindowUpdateV1.__struct_fields__
_REJECT_FIELDS = RejectV1.__struct_fields__


def newest_updates(records: Iterable[tuple[bytes, int]]) -> list[tuple[WindowUpdateV1, int]]:
    """Decoded window updates with their Kafka timestamps, one per (venue, symbol, window): the one with
    the most trades (the newest)."""
    newest: dict[tuple[str, str, int], tuple[WindowUpdateV1, int]] = {}
    for value, timestamp in records:
        update = _decode_update(value)
        key = (update.venue, update.symbol, update.window_start_ms)
        kept = newest.get(key)
        if kept is None or update.trade_count >= kept[0].trade_count:
            newest[key] = (update, timestamp)
    return list(newest.values())


def window_table(updates: list[WindowUpdateV1]) -> pa.Table:
    """Window updates -> the job's window rows (the columns `stamp_metrics` takes)."""
    columns: dict[str, Any] = {name: [getattr(u, name) for u in updates] for name in _UPDATE_FIELDS}
    columns["window_start"] = pa.array(columns.pop("window_start_ms"), _MS)
    columns["window_end"] = pa.array(columns.pop("window_end_ms"), _MS)
    return pa.table(columns)


def reject_table(values: Iterable[bytes]) -> pa.Table:
    """Reject records -> the job's reject rows (the columns `stamp_rejects` takes)."""
    rejects = [_decode_reject(value) for value in values]
    columns: dict[str, Any] = {name: [getattr(r, name) for r in rejects] for name in _REJECT_FIELDS}
    columns["partition"] = pa.array(columns["partition"], pa.int32())
    columns["kafka_time"] = pa.array(columns.pop("kafka_time_ms"), _MS)
    return pa.table(columns)


@dataclass
class WriterStats:
    windows_inserted: int = 0
    updates_read: int = 0
    rejects_inserted: int = 0
    inserts: int = 0
    insert_failures: int = 0
    # trade time of a window's newest trade -> its row visible in ClickHouse
    freshness: LatencyHistogram = field(default_factory=LatencyHistogram)
    last_freshness_ms: float = 0.0
    insert_ms: list[float] = field(default_factory=list)  # the newest thousand, for the benchmark
    commit_ms: list[float] = field(default_factory=list)
    # Where freshness goes, per inserted window (the newest thousand): trade time -> the job's update
    # in Kafka (Spark's sink stamps the record), and that -> visible in ClickHouse.
    job_ms: list[float] = field(default_factory=list)
    store_ms: list[float] = field(default_factory=list)
    last_insert_at: float | None = None
    failing_since: float | None = None


class StoreWriter:
    """One lifecycle: `run(bootstrap, stop)` sets the consumer up, inserts until `stop`, then drains."""

    def __init__(self, settings: PulseSettings, sinks: PulseSinks) -> None:
        self._settings = settings
        self._sinks = sinks
        self.stats = WriterStats()
        # Offsets inserted (and committed) per topic partition: what waits compare against.
        self.inserted: dict[tuple[str, int], int] = {}
        self.running = False
        self._commit: asyncio.Future[None] | None = None

    async def run(self, bootstrap: str, stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
        kafka, writer = self._settings.kafka, self._settings.writer
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=writer.group_id, enable_auto_commit=False,
            auto_offset_reset="earliest", fetch_max_wait_ms=writer.max_wait_ms, max_poll_records=writer.max_records)
        await consumer.start()
        try:
            # Assigned, not subscribed: the group only keeps offsets, so writers of other topics
            # (tests, a second stack) never rebalance each other.
            partitions = [TopicPartition(topic, p) for topic in (kafka.metrics_topic, kafka.rejects_topic)
                          for p in sorted(await end_offsets(bootstrap, topic))]
            consumer.assign(partitions)
            self.running = True
            if ready is not None:
                ready.set()
            while not stop.is_set():
                await self._poll_once(consumer, writer.max_wait_ms, stop)
            # Stopping: what the job wrote before it stopped is still inserted.
            while await self._poll_once(consumer, writer.max_wait_ms, stop, draining=True):
                pass
            await self._committed()
        finally:
            self.running = False
            await consumer.stop()

    async def _poll_once(self, consumer: AIOKafkaConsumer, wait_ms: int, stop: asyncio.Event,
                         draining: bool = False) -> int:
        batches = await consumer.getmany(timeout_ms=wait_ms)
        records = sum(len(records) for records in batches.values())
        if not records:
            return 0
        metrics_topic = self._settings.kafka.metrics_topic
        updates = [(r.value, r.timestamp) for tp, rs in batches.items() if tp.topic == metrics_topic for r in rs
                   if r.value]
        rejects = [r.value for tp, rs in batches.items() if tp.topic != metrics_topic for r in rs if r.value]
        await self._insert_with_retry(updates, rejects, stop, draining)
        offsets = {tp: rs[-1].offset + 1 for tp, rs in batches.items() if rs}
        # The commit runs while the next fetch waits (one in flight at a time, in order): a kill
        # before it lands only means those rows are inserted again, which replaces them.
        await self._committed()
        self._commit = asyncio.ensure_future(self._commit_offsets(consumer, offsets))
        if draining:
            await self._committed()
        return records

    async def _commit_offsets(self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
        committing = time.perf_counter()
        await consumer.commit(offsets)
        self.stats.commit_ms.append((time.perf_counter() - committing) * 1000)
        del self.stats.commit_ms[:-1000]
        for tp, offset in offsets.items():
            self.inserted[(tp.topic, tp.partition)] = offset

    async def _committed(self) -> None:
        """Wait for the commit in flight (raising what failed it)."""
        if self._commit is not None:
            commit, self._commit = self._commit, None
            await commit

    async def _insert_with_retry(self, updates: list[tuple[bytes, int]], rejects: list[bytes], stop: asyncio.Event,
                                 draining: bool) -> None:
        """Until the insert succeeds (a store outage is retried with exponential backoff, /health red
        meanwhile), or a stop request comes while not draining."""
        def give_up(state: RetryCallState) -> bool:
            return stop.is_set() and not draining

        def failed(state: RetryCallState) -> None:
            self.stats.insert_failures += 1
            if self.stats.failing_since is None:
                self.stats.failing_since = time.monotonic()
                error = state.outcome.exception() if state.outcome is not None else None
                log.warning("insert failed, retrying with backoff", extra={"error": repr(error)})

        retrying = AsyncRetrying(wait=wait_exponential(multiplier=0.1, max=self._settings.writer.retry_max_s),
                                 stop=give_up, after=failed, reraise=True)
        await retrying(asyncio.to_thread, self._insert, updates, rejects)
        self.stats.failing_since = None

    def _insert(self, updates: list[tuple[bytes, int]], rejects: list[bytes]) -> None:
        stats = self.stats
        started = time.perf_counter()
        if updates:
            newest = newest_updates(updates)
            windows = window_table([update for update, _ in newest])
            written = time.time_ns() // 1_000_000
            self._sinks.metrics.write(stamp_metrics(with_first_trade_time(windows), written))
            visible = time.time_ns() // 1_000_000
            for age in freshness_ms(windows, visible):
                stats.freshness.observe(age / 1000)
            stats.last_freshness_ms = min(freshness_ms(windows, visible))
            stats.job_ms.extend(float(at - update.max_trade_time_ms) for update, at in newest)
            stats.store_ms.extend(float(visible - at) for _, at in newest)
            del stats.job_ms[:-1000], stats.store_ms[:-1000]
            stats.updates_read += len(updates)
            stats.windows_inserted += windows.num_rows
        if rejects:
            table = reject_table(rejects)
            # Rows are immutable (keyed by where the message was): any version is the same row.
            self._sinks.rejects.write(stamp_rejects(table, time.time_ns() // 1_000_000, 0))
            stats.rejects_inserted += table.num_rows
        stats.inserts += 1
        stats.last_insert_at = time.monotonic()
        stats.insert_ms.append((time.perf_counter() - started) * 1000)
        del stats.insert_ms[:-1000]

    def caught_up(self, ends: dict[tuple[str, int], int]) -> bool:
        """Everything up to `ends` ({(topic, partition): end offset}) is inserted."""
        return all(self.inserted.get(key, 0) >= end for key, end in ends.items() if end > 0)

    def health(self) -> dict[str, Any]:
        """Red while the consumer is down, or inserts have failed for longer than `writer.stale_s`."""
        failing = self.stats.failing_since
        stale = failing is not None and time.monotonic() - failing > self._settings.writer.stale_s
        return {"ready": self.running and not stale, "running": self.running,
                "failing_for_s": None if failing is None else round(time.monotonic() - failing, 1),
                "last_freshness_ms": self.stats.last_freshness_ms}

    def telemetry(self) -> Telemetry:
        stats = self.stats
        return Telemetry(
            counters={"windows_inserted": stats.windows_inserted, "updates_read": stats.updates_read,
                      "rejects_inserted": stats.rejects_inserted, "inserts": stats.inserts,
                      "insert_failures": stats.insert_failures},
            gauges={"freshness_ms": stats.last_freshness_ms, "ready": float(self.health()["ready"])},
            histograms={"freshness_seconds": stats.freshness})
