"""Errors a user can cause are types: each carries its exit code and its one line, and the CLI
prints what the type says (no matching on module or class names)."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiokafka.errors import KafkaConnectionError

from pulse.broker.local_kafka import KafkaStartError
from pulse.cli import explain
from pulse.errors import JobFailed, JobStalled, PulseError, SparkStartFailed, StoreError, Unavailable, UsageError
from pulse.settings import PulseSettings
from pulse.source.binance.live import StreamRefused, UnknownSymbols
from pulse.source.binance.rest import BinanceRefused, RestError
from pulse.source.replay import ReplayFormatError
from pulse.storage.clickhouse import ChdbTransport
from tests.support.names import unique_name

LOGS = Path("/data/logs")
SETTINGS = PulseSettings(_env_file=None, data_dir=Path("/data"))  # type: ignore[call-arg]


@pytest.mark.parametrize(("error", "code", "line"), [
    (UsageError("pass --symbol"), 2, "pass --symbol"),
    (ReplayFormatError("archive CSV needs --symbol"), 2, "archive CSV needs --symbol"),
    (UnknownSymbols("BTCUSDX: did you mean BTCUSDT?"), 2, "BTCUSDX: did you mean BTCUSDT?"),
    (Unavailable("Java 17+ is required"), 1, "Java 17+ is required"),
    (StreamRefused("HTTP 451: restricted region"), 1, "HTTP 451: restricted region"),
    (RestError("exchangeInfo: HTTP 500 b''"), 1,
     "Binance's REST API did not answer as expected (exchangeInfo: HTTP 500 b''): check the network"
     " (or PULSE_PRODUCER__REST_BASE_URL)"),
    (KafkaStartError("node 1 exited with 1\nmore"), 1, "the Kafka broker did not start: node 1 exited with 1"),
    (JobFailed("streaming query pulse_metrics failed: boom"), 1,
     "the Spark job failed: streaming query pulse_metrics failed: boom; Spark's log: /data/logs/spark.log"),
    (JobStalled("no progress for 12 s in Real-Time Mode"), 1,
     "the Spark job stalled: no progress for 12 s in Real-Time Mode; Spark's log: /data/logs/spark.log"),
    (SparkStartFailed("JAVA_GATEWAY_EXITED"), 1,
     "Spark failed to start: JAVA_GATEWAY_EXITED; see /data/logs/spark-jvm.log"),
    (StoreError("Code: 60. Unknown table", over_http=True), 1,
     "ClickHouse (HTTP) failed: Code: 60. Unknown table; check PULSE_CLICKHOUSE__* settings"),
    (KafkaConnectionError("no broker"), 1,
     "Kafka failed: KafkaConnectionError: no broker; is the broker running and reachable?"),
])
def test_each_error_carries_its_exit_code_and_line(error: BaseException, code: int, line: str) -> None:
    assert explain(error, SETTINGS) == (code, line)


def test_binance_refusing_says_what_may_work() -> None:
    refused = BinanceRefused(451)
    assert isinstance(refused, PulseError) and explain(refused, SETTINGS) == (1, refused.hint)


def test_anything_else_is_unexpected_and_points_at_the_log() -> None:
    code, line = explain(ZeroDivisionError("division by zero"), SETTINGS)
    assert code == 1 and line.startswith("unexpected error: ZeroDivisionError: division by zero")
    assert str(LOGS / "pulse.log") in line


def test_the_engine_refusing_sql_is_a_store_error(chdb_engine, base_settings) -> None:
    transport = ChdbTransport(base_settings.chdb_path, unique_name("errors"))
    with pytest.raises(StoreError) as refused:
        transport.query_arrow("SELEC 1")
    code, line = explain(refused.value, SETTINGS)
    assert code == 1 and line.startswith("ClickHouse refused the query: ") and "Syntax error" in line
