"""Drive the real pipeline (producer -> Kafka -> Spark -> chDB) over a recording, for tests.

Everything goes through `pulse.runtime`: a plan, run by the runtime every entry point uses; the test
fixtures only provide the shared broker, Spark session and chDB engine it then finds.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pulse.producer import ProducerService
from pulse.runtime import Plan, Until, run
from pulse.settings import PulseSettings, VenueName
from pulse.source.replay import ReplaySource
from pulse.storage.clickhouse import ClickHouseTransport
from pulse.telemetry import TelemetryCollector


def publish_recording(settings: PulseSettings, path: Path, symbol: str | None = None,
                      venue: VenueName = "binance-usdm", instruments: Path | None = None) -> int:
    """Replay `path` flat out through the producer `pulse produce --source replay` runs; the trades published."""
    source = ReplaySource(path, symbol, venue=venue, instruments=instruments)
    service = run(Plan(settings, source, until=Until.SOURCE_ENDED)).producer
    assert service is not None
    assert service.published == service.router.trades + service.router.invalid
    return service.router.trades


def process_topic(settings: PulseSettings, timeout_s: float = 180) -> None:
    """Run the Spark job until it has consumed everything in the trades topic, then stop it."""
    run(Plan(settings, compute=True, until=Until.CAUGHT_UP, finish_s=timeout_s))


def metrics_rows(transport: ClickHouseTransport) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = transport.query_arrow(
        "SELECT *, toUnixTimestamp64Milli(window_start) AS window_start_ms,"
        " toUnixTimestamp64Milli(window_end) AS window_end_ms FROM pulse_metrics FINAL"
        " ORDER BY symbol, window_start"
    ).to_pylist()
    return rows


def scrape(port: int, prefix: str = "pulse_producer_") -> dict[str, float]:
    """A /metrics endpoint as {name{labels}: value}, read with Prometheus' own parser (counters without _total)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return parse_exposition(response.read().decode(), prefix)


def exported(service: ProducerService) -> dict[str, float]:
    """What the service's /metrics serves, rendered by the same collector: for a producer whose source
    has ended, whose endpoint is gone with it."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TelemetryCollector(service.snapshot, "pulse_producer_"))
    return parse_exposition(generate_latest(registry).decode(), "pulse_producer_")


def parse_exposition(text: str, prefix: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.startswith(prefix):
                continue
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            name = sample.name.removeprefix(prefix).removesuffix("_total")
            values[name + (f"{{{labels}}}" if labels else "")] = sample.value
    return values


def scrape_service(service: ProducerService) -> dict[str, float]:
    assert service.metrics_port is not None, "the producer serves /metrics while it runs"
    return scrape(service.metrics_port)
