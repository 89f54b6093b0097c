"""The job's /health, as the docker stack's healthcheck uses it: healthy while both queries run and
report progress; unhealthy when a query failed or stopped. The compose healthcheck command itself
is executed against the real job (its port swapped for the test's)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import yaml

from pulse.runtime import Plan, Runtime
from pulse.storage.clickhouse import ClickHouseTransport
from pulse.storage.sinks import PulseSinks
from tests.support.pipeline import scrape
from tests.support.topic_writer import trade_message, write_messages

pytestmark = pytest.mark.integration
COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


def compose_healthcheck(port: int) -> int:
    """Run the processor's compose healthcheck command here, aimed at `port`; its exit code."""
    test = yaml.safe_load(COMPOSE.read_text())["services"]["processor"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"] and "9109" in test[3]
    return subprocess.run([sys.executable, "-c", test[3].replace("9109", str(port))], capture_output=True,
                          timeout=30, check=False).returncode


def health(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def wait_for(port: int, status: int, until: Callable[[dict[str, Any]], bool] = lambda _: True,
             timeout_s: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        code, body = health(port)
        if code == status and until(body):
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"/health stayed {code} {body}, expected {status}")
        time.sleep(0.25)


def _one_trade(settings: Any, kafka: Any) -> int:
    """Publish one trade stamped now; its trade time (ms)."""
    trade_ms = int(time.time() * 1000)
    write_messages(kafka.bootstrap, settings.kafka.trades_topic,
                   [trade_message("BTCUSDT", 1, 100.0, 1.0, trade_ms, False)])
    return trade_ms


def test_running_job_is_healthy_and_a_stopped_query_is_not(kafka, spark, database, settings):
    with Runtime(Plan(settings, compute=True, serve_health=True)).start() as run:
        queries, port = run.queries, run.health_port
        assert queries is not None and port is not None
        trade_ms = _one_trade(settings, kafka)
        body = wait_for(port, 200, until=lambda b: b["writer"]["last_freshness_ms"] > 0)
        assert body["queries"] == {"pulse_metrics": True, "pulse_rejects": True}
        assert compose_healthcheck(port) == 0
        # Freshness, measured where the row becomes visible (the store writer): trade time -> the
        # insert returned. Bounded by the row's own write stamp and the moment this test saw it.
        seen_ms = time.time() * 1000
        written_ms = database.query_arrow(
            "SELECT toUnixTimestamp64Milli(written_at) AS w FROM pulse_metrics FINAL").to_pylist()[0]["w"]
        metrics = scrape(port, "pulse_processor_")
        assert metrics["writer_freshness_seconds_count"] == 1
        fresh_ms = metrics["writer_freshness_seconds_sum"] * 1000
        assert written_ms - trade_ms <= fresh_ms <= seen_ms - trade_ms
        assert body["writer"]["last_freshness_ms"] == pytest.approx(fresh_ms, abs=1)
        queries.rejects.stop()
        body = wait_for(port, 503, until=lambda b: b["queries"]["pulse_rejects"] is False, timeout_s=10)
        assert body["queries"]["pulse_metrics"] is True and body["ready"] is False
        assert compose_healthcheck(port) != 0


class _BrokenSink:
    def write(self, batch: pa.Table) -> None:
        raise RuntimeError("ClickHouse refused the insert")


def test_a_failed_query_makes_the_job_unhealthy(kafka, spark, database, settings):
    """Micro-batch mode: the metrics query inserts itself, and an insert that fails fails the query."""
    def sinks(transport: ClickHouseTransport) -> PulseSinks:
        working = PulseSinks.clickhouse(transport)
        return PulseSinks(metrics=_BrokenSink(), rejects=working.rejects, health=working.health)

    with Runtime(Plan(settings.override(spark={"mode": "microbatch"}), compute=True, serve_health=True,
                      sinks=sinks)).start() as run:
        queries, port = run.queries, run.health_port
        assert queries is not None and port is not None
        _one_trade(settings, kafka)
        wait_for(port, 503, until=lambda b: b["queries"]["pulse_metrics"] is False)
        assert queries.metrics.exception() is not None
        assert compose_healthcheck(port) != 0


def test_a_failing_store_writer_makes_the_job_unhealthy_and_then_catches_up(kafka, spark, database, settings):
    """Real-Time Mode: the queries write to Kafka and keep running; the store writer's inserts fail,
    it retries with backoff, and /health is red while they fail for longer than writer.stale_s.
    Once ClickHouse takes inserts again, the window arrives and /health is green."""
    refusing = threading.Event()
    refusing.set()

    class _Flaky:
        def __init__(self, sink: Any) -> None:
            self.sink = sink

        def write(self, batch: pa.Table) -> None:
            if refusing.is_set():
                raise RuntimeError("ClickHouse refused the insert")
            self.sink.write(batch)

    def sinks(transport: ClickHouseTransport) -> PulseSinks:
        working = PulseSinks.clickhouse(transport)
        return PulseSinks(metrics=_Flaky(working.metrics), rejects=working.rejects, health=working.health)

    with Runtime(Plan(settings.override(writer={"stale_s": 1.0, "retry_max_s": 0.5}), compute=True,
                      serve_health=True, sinks=sinks)).start() as run:
        queries, port = run.queries, run.health_port
        assert queries is not None and port is not None
        _one_trade(settings, kafka)
        body = wait_for(port, 503, until=lambda b: b.get("writer", {}).get("ready") is False)
        assert body["queries"] == {"pulse_metrics": True, "pulse_rejects": True}, "the queries keep running"
        assert compose_healthcheck(port) != 0
        refusing.clear()
        wait_for(port, 200, until=lambda b: b["writer"]["ready"] is True)
        assert queries.metrics.exception() is None
        deadline = time.monotonic() + 30
        while database.query_arrow("SELECT count() AS n FROM pulse_metrics FINAL").to_pylist()[0]["n"] != 1:
            assert time.monotonic() < deadline, "the window never arrived after the outage"
            time.sleep(0.2)
