"""`pulse process`: the Spark job as a headless service.

The same job definition as the notebook and the demo (`pulse.compute.job.start_queries`), run
against the configured broker and ClickHouse until asked to stop (SIGINT/SIGTERM at the entry
point set `stop`), or, for replays and tests, until the topic has been consumed and stayed quiet
for `until_idle_s`. Queries are stopped cleanly, so the checkpoint is consistent on exit; a crash
(kill -9) is also safe because every batch is replayed with the same version.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from pulse.broker.local_kafka import end_offsets
from pulse.compute.job import PulseQueries, reached, start_queries
from pulse.compute.spark_session import build_spark_session
from pulse.settings import PulseSettings
from pulse.storage.clickhouse import ClickHouseTransport, apply_schema, open_transport

Say = Callable[[str], None]


@dataclass
class IdleTracker:
    """Decides when a replay is over: everything in the topic processed, and nothing new for a while."""

    idle_after_s: float
    _last_offsets: dict[int, int] | None = None
    _quiet_since: float | None = None

    def observe(self, offsets: dict[int, int], caught_up: bool, now: float) -> bool:
        """Feed one poll; True once the topic has been fully processed and unchanged for `idle_after_s`."""
        if not caught_up or offsets != self._last_offsets:
            self._last_offsets = offsets
            self._quiet_since = now if caught_up else None
            return False
        if self._quiet_since is None:
            self._quiet_since = now
        return now - self._quiet_since >= self.idle_after_s


def _caught_up(queries: PulseQueries, topic: str, offsets: dict[int, int]) -> bool:
    if not any(offsets.values()):
        # An empty topic: nothing to wait for once the queries have run a first batch.
        return all(q.lastProgress is not None for q in queries.all())
    return all(reached(q, {topic: offsets}) for q in queries.all())


def run_processor(settings: PulseSettings, bootstrap: str, stop: threading.Event, say: Say,
                  until_idle_s: float | None = None, create_schema: bool = True, poll_s: float = 0.5) -> None:
    """Run the metrics and rejects queries until `stop` is set (or the topic went idle)."""
    transport: ClickHouseTransport = open_transport(settings.clickhouse, settings.chdb_path)
    queries: PulseQueries | None = None
    spark = None
    try:
        if create_schema:
            apply_schema(transport, settings.schema_dir)
        say(f"starting Spark ({settings.spark.master}); topic {settings.kafka.trades_topic} on {bootstrap}, "
            f"ClickHouse via {settings.clickhouse.transport} database {settings.clickhouse.database}")
        spark = build_spark_session(settings)
        queries = start_queries(spark, settings, bootstrap, transport)
        say(f"processing: trigger {settings.spark.trigger_ms} ms, watermark {settings.spark.watermark_s:g} s, "
            f"starting offsets {settings.spark.starting_offsets}, checkpoints {settings.checkpoint_dir}")
        idle = IdleTracker(until_idle_s) if until_idle_s is not None else None
        topic = settings.kafka.trades_topic
        while not stop.wait(poll_s):
            queries.raise_if_failed()
            if idle is None:
                continue
            offsets = asyncio.run(end_offsets(bootstrap, topic))
            if idle.observe(offsets, _caught_up(queries, topic, offsets), time.monotonic()):
                say(f"topic consumed and idle for {until_idle_s:g} s: stopping")
                break
        queries.raise_if_failed()
    finally:
        if queries is not None:
            queries.stop()
        if spark is not None:
            spark.stop()
        transport.close()
    say("stopped")
