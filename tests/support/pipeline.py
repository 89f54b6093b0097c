"""Drive the real pipeline (producer -> Kafka -> Spark -> chDB) over a recording, for tests."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from pulse.broker.local_kafka import end_offsets
from pulse.compute.job import start_queries, wait_until_caught_up
from pulse.producer import replay_to_kafka
from pulse.settings import PulseSettings
from pulse.storage.clickhouse import ClickHouseTransport


def publish_recording(settings: PulseSettings, bootstrap: str, path: Path, symbol: str | None = None) -> int:
    router, publisher = asyncio.run(replay_to_kafka(settings, bootstrap, path, symbol, speed=None))
    assert publisher.stats.published == router.counters.trades + router.counters.invalid
    return router.counters.trades


def process_topic(spark: Any, settings: PulseSettings, bootstrap: str, transport: ClickHouseTransport,
                  timeout_s: float = 180) -> None:
    """Run the Spark job until it has consumed everything in the trades topic, then stop it."""
    queries = start_queries(spark, settings, bootstrap, transport)
    try:
        offsets = asyncio.run(end_offsets(bootstrap, settings.kafka.trades_topic))
        wait_until_caught_up(queries, {settings.kafka.trades_topic: offsets}, timeout_s=timeout_s)
    finally:
        queries.stop()


def metrics_rows(transport: ClickHouseTransport) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = transport.query_arrow(
        "SELECT *, toUnixTimestamp64Milli(window_start) AS window_start_ms,"
        " toUnixTimestamp64Milli(window_end) AS window_end_ms FROM pulse_metrics FINAL"
        " ORDER BY symbol, window_start"
    ).to_pylist()
    return rows
