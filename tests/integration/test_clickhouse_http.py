"""ClickHouse over HTTP, and outages, for real: `HttpTransport` (clickhouse-connect) against an endpoint that speaks
ClickHouse's HTTP interface over the real engine (tests/support/clickhouse_http.py). `pulse process`
(the job and its store writer) applies the schema and writes through it, `pulse store` does, `pulse sql`
reads through it; refused logins, 5xx, a stalled server and an outage of the store mid-stream each end
the way a user can act on, and the table ends equal to the reference."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from pulse.broker.local_kafka import LocalKafkaBroker
from pulse.runtime import Plan, Runtime, Until
from pulse.storage.clickhouse import ChdbEngine, ChdbTransport
from tests.support.clickhouse_http import ClickHouseHttp
from tests.support.names import unique_name
from tests.support.pipeline import publish_recording
from tests.support.processor_process import METRIC_COLUMNS, PULSE, ROOT, pulse_env, start_process, start_store
from tests.support.producer_harness import fresh_topics
from tests.support.recordings import SPOT_RAW, recording
from tests.support.reference import assert_windows_match, reference_windows, trades_from_recording

pytestmark = pytest.mark.integration
PASSWORD = "not-the-default"
WINDOWS = f"SELECT {', '.join(METRIC_COLUMNS)} FROM pulse_metrics_latest ORDER BY symbol, window_start"


@pytest.fixture
def endpoint(chdb_engine: ChdbEngine) -> Iterator[ClickHouseHttp]:
    server = ClickHouseHttp(chdb_engine, user="pulse_writer", password=PASSWORD).start()
    yield server
    server.stop()


@pytest.fixture
def store_name(chdb_engine: ChdbEngine, base_settings: Any) -> tuple[str, ChdbTransport]:
    """A database the endpoint serves, empty (no schema: the commands apply it over HTTP)."""
    name = unique_name("pulse_http")
    return name, ChdbTransport(base_settings.chdb_path, name)


def _sql(endpoint: ClickHouseHttp, database: str, query: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PULSE, "sql", query, "--format", "JSONEachRow"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False,
                          env=pulse_env(**{**endpoint.env(database), **env}))


def _rows(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert result.returncode == 0, result.stderr
    return [orjson.loads(line) for line in result.stdout.splitlines() if line.strip()]


def test_pulse_process_applies_the_schema_and_writes_over_http_and_pulse_sql_reads_it(
        kafka, base_settings, endpoint, store_name, tmp_path):
    database, local = store_name
    topics = fresh_topics(kafka.bootstrap)
    path = recording(SPOT_RAW)
    publish_recording(base_settings.override(kafka=topics.model_dump()), path)
    log = tmp_path / "process.log"
    process = start_process(tmp_path, kafka.bootstrap, topics.trades_topic, log, "--until-idle", "2",
                            "--apply-schema", **endpoint.env(database))
    assert process.wait(timeout=300) == 0, log.read_text()[-3000:]
    assert "Traceback" not in log.read_text()
    reference = reference_windows(trades_from_recording(path))
    # What went over HTTP is in the engine itself, and `pulse sql` reads the same back over HTTP.
    assert_windows_match(local.query_arrow(WINDOWS).to_pylist(), reference)
    assert_windows_match(_rows(_sql(endpoint, database, WINDOWS)), reference)
    assert endpoint.requests > 10


@pytest.mark.parametrize(("fault", "env", "line"), [
    ("password", {"PULSE_CLICKHOUSE__PASSWORD": "wrong"}, "Authentication failed"),
    ("5xx", {}, "HTTP status 503"),
    ("stall", {"PULSE_CLICKHOUSE__TIMEOUT_S": "1"}, "did not answer in time"),
    ("down", {}, "connection refused at 127.0.0.1:"),
])
def test_http_failures_end_pulse_sql_with_one_line(endpoint, store_name, fault, env, line):
    database, _ = store_name
    if fault == "5xx":
        endpoint.status = 503
    elif fault == "stall":
        endpoint.delay_s = 3.0
    elif fault == "down":
        endpoint.down()
    result = _sql(endpoint, database, "SELECT 1", **env)
    assert result.returncode == 1, result.stdout + result.stderr
    (error,) = result.stderr.strip().splitlines()
    assert error.startswith("pulse sql: ClickHouse (HTTP) failed: ") and line in error, error
    assert error.endswith("check PULSE_CLICKHOUSE__* settings")


@pytest.mark.slow
def test_clickhouse_down_mid_stream_turns_health_red_and_loses_nothing(kafka, settings, endpoint, store_name,
                                                                     tmp_path):
    """The store is unreachable for OUTAGE_S while trades keep coming: the writer retries with backoff,
    /health is red while it is down, and afterwards every window is there once, as the reference has it."""
    database, local = store_name
    http = settings.override(clickhouse={**endpoint.settings(database), "apply_schema": True},
                             writer={"stale_s": 3.0, "retry_max_s": 1.0})
    path = recording(SPOT_RAW)
    # The recording in two halves: the first before the outage, the second while the store is down.
    before, during = _halves(path, tmp_path)
    with Runtime(Plan(http, compute=True, serve_health=True)).start() as run:
        assert run.health_port is not None
        publish_recording(http, before)
        assert run.wait(Until.CAUGHT_UP, timeout_s=120) == Until.CAUGHT_UP
        assert _health(run.health_port)[0] == 200
        endpoint.down()
        down_at = time.monotonic()
        publish_recording(http, during)
        deadline = time.monotonic() + 60
        while (health := _health(run.health_port))[1].get("writer", {}).get("ready") is not False:
            assert time.monotonic() < deadline, f"/health stayed green with the store down: {health}"
            time.sleep(0.5)
        assert health[0] == 503 and health[1]["queries"] == {"pulse_metrics": True, "pulse_rejects": True}
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
        endpoint.up()
        assert run.wait(Until.CAUGHT_UP, timeout_s=180) == Until.CAUGHT_UP
        assert _health(run.health_port)[0] == 200
    assert_windows_match(local.query_arrow(WINDOWS).to_pylist(), reference_windows(trades_from_recording(path)))
    doubled = local.query_arrow("SELECT count() AS n FROM (SELECT symbol, window_start FROM pulse_metrics FINAL"
                                " GROUP BY symbol, window_start HAVING count() > 1)").to_pylist()[0]["n"]
    assert doubled == 0


@pytest.mark.slow
def test_the_job_killed_while_clickhouse_is_down_restarts_exact(kafka, base_settings, endpoint, store_name, tmp_path):
    database, local = store_name
    topics = fresh_topics(kafka.bootstrap)
    path = recording(SPOT_RAW)
    log = tmp_path / "process.log"
    env = {**endpoint.env(database), "PULSE_CLICKHOUSE__APPLY_SCHEMA": "true", "PULSE_WRITER__RETRY_MAX_S": "1"}
    process = start_process(tmp_path, kafka.bootstrap, topics.trades_topic, log, **env)
    try:
        deadline = time.monotonic() + 180
        while "processing" not in log.read_text():
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the job did not start"
            time.sleep(0.5)
        endpoint.down()
        publish_recording(base_settings.override(kafka=topics.model_dump()), path)
        time.sleep(10)  # the job reads and writes its updates to Kafka; the writer cannot insert them
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    endpoint.up()
    restarted = start_process(tmp_path, kafka.bootstrap, topics.trades_topic, log, "--until-idle", "2", **env)
    assert restarted.wait(timeout=300) == 0, log.read_text()[-3000:]
    assert_windows_match(local.query_arrow(WINDOWS).to_pylist(), reference_windows(trades_from_recording(path)))


OUTAGE_S = 60


def _health(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as refused:
        return refused.code, orjson.loads(refused.read())



@pytest.mark.slow
def test_the_kafka_broker_down_under_the_job_loses_nothing(base_settings, database, tmp_path):
    """The job's broker is gone for OUTAGE_S between two halves of a recording: the job waits it out
    and the table ends equal to the reference (the producer's side of a broker outage is
    test_producer_resilience.py)."""
    broker = LocalKafkaBroker(base_settings.jars_dir, tmp_path / "own-broker", quick_jit=base_settings.quick_jit)
    broker.start()
    try:
        topics = fresh_topics(broker.bootstrap)
        settings = base_settings.override(
            kafka={**topics.model_dump(), "metrics_topic": f"{topics.trades_topic}.metrics",
                   "rejects_topic": f"{topics.trades_topic}.rejects"},
            clickhouse={"database": database.database},
            spark={"starting_offsets": "earliest", "checkpoint_dir": str(tmp_path / "checkpoints"),
                   "realtime_batch_s": 2.0})
        path = recording(SPOT_RAW)
        before, during = _halves(path, tmp_path)
        with Runtime(Plan(settings, compute=True)).start() as run:
            publish_recording(settings, before)
            assert run.wait(Until.CAUGHT_UP, timeout_s=120) == Until.CAUGHT_UP
            broker.kill()
            time.sleep(OUTAGE_S)
            broker.start()
            publish_recording(settings, during)
            assert run.wait(Until.CAUGHT_UP, timeout_s=240) == Until.CAUGHT_UP
    finally:
        broker.stop()
    assert_windows_match(database.query_arrow(WINDOWS).to_pylist(), reference_windows(trades_from_recording(path)))


def _halves(path: Path, folder: Path) -> tuple[Path, Path]:
    """The recording in two files: its first half of lines, and the rest."""
    lines = path.read_bytes().splitlines(keepends=True)
    before, during = folder / "before.raw", folder / "during.raw"
    before.write_bytes(b"".join(lines[:len(lines) // 2]))
    during.write_bytes(b"".join(lines[len(lines) // 2:]))
    return before, during


def test_pulse_store_writes_over_http_and_killed_while_clickhouse_is_down_restarts_exact(
        kafka, settings, endpoint, store_name, tmp_path):
    """The docker stack's shape: the job writes window updates to Kafka, `pulse store` (its own process)
    inserts them over HTTP. Killed (SIGKILL) while ClickHouse is down, it starts again and the table
    ends equal to the reference: nothing it had read but not inserted is lost."""
    database, local = store_name
    topic = settings.kafka.trades_topic
    job = settings.override(kafka={"metrics_topic": f"{topic}.metrics", "rejects_topic": f"{topic}.rejects"},
                            writer={"in_process": False})
    env = {**endpoint.env(database), "PULSE_CLICKHOUSE__APPLY_SCHEMA": "true", "PULSE_WRITER__RETRY_MAX_S": "1"}
    log = tmp_path / "store.log"
    store = start_store(tmp_path, kafka.bootstrap, topic, log, **env)
    deadline = time.monotonic() + 60
    while "storing from" not in log.read_text():
        assert store.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)
    endpoint.down()
    path = recording(SPOT_RAW)
    publish_recording(job, path)
    with Runtime(Plan(job, compute=True)).start() as run:  # the job alone: its output waits in Kafka
        assert run.wait(Until.CAUGHT_UP, timeout_s=180) == Until.CAUGHT_UP
    time.sleep(3)  # the writer has read the updates and retries their insert
    os.killpg(store.pid, signal.SIGKILL)
    store.wait(timeout=30)
    endpoint.up()
    store = start_store(tmp_path, kafka.bootstrap, topic, log, **env)
    try:
        reference = reference_windows(trades_from_recording(path))
        deadline = time.monotonic() + 120
        while _count(local, "pulse_metrics_latest") < len(reference):
            assert store.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        store.send_signal(signal.SIGTERM)
        assert store.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        if store.poll() is None:
            os.killpg(store.pid, signal.SIGKILL)
    assert "Traceback" not in log.read_text()
    assert_windows_match(local.query_arrow(WINDOWS).to_pylist(), reference)


def _count(store: ChdbTransport, table: str) -> int:
    try:
        return int(store.query_arrow(f"SELECT count() AS n FROM {table}").to_pylist()[0]["n"])
    except Exception:
        return 0
