"""`pulse process`: the Spark job as a headless service.

The same job definition as the notebook and the demo (`pulse.compute.job.start_queries`), run
against the configured broker and ClickHouse until asked to stop (SIGINT/SIGTERM at the entry
point set `stop`), or, for replays and tests, until the topic has been consumed and stayed quiet
for `until_idle_s`. Queries are stopped cleanly, so the checkpoint is consistent on exit; a crash
(kill -9) is also safe because every batch is replayed with the same version.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from pyspark.sql.streaming import StreamingQuery

from pulse.compute.job import PulseQueries, kafka_offsets, running_job
from pulse.settings import PulseSettings
from pulse.storage.clickhouse import ClickHouseTransport, apply_schema, open_transport

Say = Callable[[str], None]


@dataclass
class IdleTracker:
    """Decides when a replay is over: everything in the topic processed, and nothing new for a while."""

    idle_after_s: float
    _quiet_since: float | None = None

    def observe(self, caught_up: bool, now: float) -> bool:
        """Feed one poll; True once the queries have stayed caught up for `idle_after_s`."""
        if not caught_up:
            self._quiet_since = None
            return False
        if self._quiet_since is None:
            self._quiet_since = now
        return now - self._quiet_since >= self.idle_after_s


def query_caught_up(query: StreamingQuery) -> bool:
    """The last batch read up to the latest offsets Kafka had, and the source reports nothing newer.

    Uses Spark's own view of the topic (the progress's latestOffset and the status's
    isDataAvailable), which is what the query will actually read next.
    """
    progress = query.lastProgress
    status = query.status
    if not progress or status.get("isDataAvailable") or status.get("isTriggerActive"):
        return False
    for source in progress.get("sources", []):
        latest = kafka_offsets(source.get("latestOffset"))
        if latest and kafka_offsets(source.get("endOffset")) != latest:
            return False
    return True


def wait_until_idle(queries: PulseQueries, idle_s: float, stop: threading.Event | None = None,
                    timeout_s: float | None = None, poll_s: float = 0.25) -> bool:
    """Block until every query is caught up and stayed so for `idle_s` (True), or `stop` is set (False)."""
    tracker = IdleTracker(idle_s)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    stop = stop or threading.Event()
    while not stop.wait(poll_s):
        queries.raise_if_failed()
        if tracker.observe(all(query_caught_up(q) for q in queries.all()), time.monotonic()):
            return True
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"Spark queries did not go idle within {timeout_s:.0f}s")
    return False


def run_processor(settings: PulseSettings, bootstrap: str, stop: threading.Event, say: Say,
                  until_idle_s: float | None = None, create_schema: bool = True, poll_s: float = 0.5) -> None:
    """Run the metrics and rejects queries until `stop` is set (or the topic went idle)."""
    transport: ClickHouseTransport = open_transport(settings.clickhouse, settings.chdb_path)
    try:
        if create_schema:
            apply_schema(transport, settings.schema_dir)
        say(f"starting Spark ({settings.spark.master}); topic {settings.kafka.trades_topic} on {bootstrap}, "
            f"ClickHouse via {settings.clickhouse.transport} database {settings.clickhouse.database}")
        with running_job(settings, bootstrap, transport) as queries:
            say(f"processing: trigger {settings.spark.trigger_ms} ms, watermark {settings.spark.watermark_s:g} s, "
                f"starting offsets {settings.spark.starting_offsets}, checkpoints {settings.checkpoint_dir}")
            if until_idle_s is None:
                while not stop.wait(poll_s):
                    queries.raise_if_failed()
            elif wait_until_idle(queries, until_idle_s, stop, poll_s=poll_s):
                say(f"topic consumed and idle for {until_idle_s:g} s: stopping")
            queries.raise_if_failed()
    finally:
        transport.close()
    say("stopped")
