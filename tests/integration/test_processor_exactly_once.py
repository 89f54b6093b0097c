"""Exactly-once effect: a process killed with SIGKILL mid-stream and restarted leaves the same table,
window by window, as an uninterrupted run over the same input.

- The job (`pulse process`, its store writer inside when the store is chDB), in both modes: in
  Real-Time Mode killed after its store writer inserted windows of a batch that Spark had not
  committed, so the restart replays that batch; in micro-batch mode killed with a batch in flight.
- The store writer alone (`pulse store`), killed between inserts: the restart inserts again from
  its last committed offset.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from pulse.broker.local_kafka import end_offsets
from pulse.runtime import Plan, Runtime, Until
from tests.support.pipeline import process_topic, publish_recording
from tests.support.processor_process import (
    METRIC_COLUMNS,
    WINDOWS_SQL,
    pulse_sql,
    start_process,
    start_store,
)
from tests.support.recordings import ARCHIVE_CSV, recording
from tests.support.reference import reference_windows, trades_from_recording
from tests.support.topic_writer import write_messages

pytestmark = pytest.mark.integration

BATCH = "500"  # micro-batch mode: offsets per batch, ~10 batches over the input
REJECTS_SQL = "SELECT offset, reason FROM pulse_rejects FINAL ORDER BY offset"
WRITER_GROUP = "pulse-store-writer"


def _batches(checkpoint: Path, kind: str) -> int:
    folder = checkpoint / "pulse_metrics" / kind
    return len([p for p in folder.glob("[0-9]*")]) if folder.exists() else 0


def _inserted(bootstrap: str, topic: str) -> int:
    """Offsets of `topic` the store writer inserted and committed (its consumer group's offsets)."""
    async def committed() -> int:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            offsets = await admin.list_consumer_group_offsets(WRITER_GROUP)
        finally:
            await admin.close()
        return sum(meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset > 0)
    return asyncio.run(committed())


def _output_end(bootstrap: str, topic: str) -> int:
    return sum(asyncio.run(end_offsets(bootstrap, topic)).values())


def _run_until_idle(data_dir: Path, bootstrap: str, topic: str, log: Path, env: dict[str, str]) -> None:
    process = start_process(data_dir, bootstrap, topic, log, "--until-idle", "2", **env)
    try:
        assert process.wait(timeout=240) == 0, log.read_text()[-3000:]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


def _wait_for_line(process: subprocess.Popen[bytes], log: Path, line: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while line not in log.read_text():
        assert process.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"no {line!r} in the log within {timeout_s:g} s"
        time.sleep(0.2)


def _kill_when(process: subprocess.Popen[bytes], ready: Callable[[], bool], log: Path,
               outcome: dict[str, object]) -> None:
    """SIGKILL the process group (the driver and its Spark JVM, no shutdown) once `ready()`."""
    deadline = time.monotonic() + 180
    try:
        while not ready():
            if process.poll() is not None:
                outcome["error"] = "the process exited early:\n" + log.read_text()[-3000:]
                return
            if time.monotonic() > deadline:
                outcome["error"] = "the moment to kill never came:\n" + log.read_text()[-3000:]
                return
            time.sleep(0.02)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def _assert_same_windows(actual: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    columns = [c.split(" AS ")[-1] for c in METRIC_COLUMNS]
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected, strict=True):
        assert (got["symbol"], int(got["window_start_ms"])) == (want["symbol"], want["window_start_ms"])
        for column in columns:
            left, right = got[column], want[column]
            if isinstance(right, float):
                assert math.isclose(float(left), right, rel_tol=1e-12, abs_tol=1e-12), (column, got, want)
            else:
                assert str(left) == str(right), (column, got, want)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["realtime", "microbatch"])
def test_kill_minus_nine_of_the_job_and_restart_equals_an_uninterrupted_run(
        mode, kafka, spark, database, settings, tmp_path):
    topic = settings.kafka.trades_topic
    data_dir = tmp_path / "crashing"
    data_dir.mkdir()
    log = tmp_path / "process.log"
    checkpoint = data_dir / "checkpoints"
    if mode == "realtime":
        # One long batch: the kill lands after windows were inserted and before Spark commits.
        env = {"PULSE_SPARK__REALTIME_BATCH_S": "120"}
        uninterrupted = settings
        metrics_topic = f"{topic}.metrics"

        def ready() -> bool:
            return _inserted(kafka.bootstrap, metrics_topic) > 0 and _batches(checkpoint, "commits") == 0
    else:
        # The rejects query reads the same small batches, on the reference's short trigger (the
        # `settings` fixture's): at its default 10 s the restart would wait ~100 s for it.
        env = {"PULSE_SPARK__MODE": "microbatch", "PULSE_SPARK__MAX_OFFSETS_PER_TRIGGER": BATCH,
               "PULSE_SPARK__TRIGGER_MS": "200", "PULSE_SPARK__REJECTS_TRIGGER_MS": "500"}
        uninterrupted = settings.override(spark={"mode": "microbatch", "max_offsets_per_trigger": int(BATCH)})

        def ready() -> bool:
            return _batches(checkpoint, "commits") >= 2 and _batches(checkpoint, "offsets") > _batches(
                checkpoint, "commits")

    # The crashing run starts first: its Spark starts up while this process runs the reference. In
    # Real-Time Mode the trades come once it streams: a backlog found at the start is read in
    # micro-batches first (tests/integration/test_processor_backlog.py), and no Real-Time Mode batch
    # would be left to kill.
    crashing = start_process(data_dir, kafka.bootstrap, topic, log, **env)
    if mode == "realtime":
        _wait_for_line(crashing, log, "processing ")
    published = publish_recording(settings, recording(ARCHIVE_CSV), "BTCUSDT")
    write_messages(kafka.bootstrap, topic, [b"{broken", b'{"schema_version": 9}'], partition=2)
    outcome: dict[str, object] = {}
    killer = threading.Thread(target=_kill_when, args=(crashing, ready, log, outcome))
    killer.start()

    process_topic(uninterrupted)
    expected = database.query_arrow(WINDOWS_SQL).to_pylist()
    expected_rejects = database.query_arrow(REJECTS_SQL).to_pylist()
    assert sum(r["trade_count"] for r in expected) == published
    assert len(expected_rejects) == 2

    killer.join(timeout=200)
    assert "error" not in outcome, outcome["error"]
    committed, planned = _batches(checkpoint, "commits"), _batches(checkpoint, "offsets")
    if mode == "microbatch":
        assert committed < math.ceil((published + 2) / int(BATCH)), "killed too late to prove anything"
    else:
        # Real-Time Mode logs a batch's offsets when it ends: nothing logged, nothing committed, yet
        # the store writer had inserted (and committed) windows of it, so the restart replays them.
        assert committed == 0 and planned == 0, "the kill must land inside the first batch"

    _run_until_idle(data_dir, kafka.bootstrap, topic, log, {k: v for k, v in env.items() if "REALTIME" not in k})
    assert "topic consumed and idle" in log.read_text()
    _assert_same_windows(pulse_sql(data_dir, WINDOWS_SQL), expected)
    rejects = pulse_sql(data_dir, REJECTS_SQL)
    assert [(int(r["offset"]), r["reason"]) for r in rejects] == [(r["offset"], r["reason"]) for r in expected_rejects]
    stats = pulse_sql(data_dir, "SELECT count() AS rows, uniqExact(symbol, window_start) AS windows "
                                "FROM pulse_metrics")[0]
    # Progress reports reached pulse_health (Spark calls the listener back into Python, in both modes).
    reports = pulse_sql(data_dir, "SELECT count() AS n FROM pulse_health WHERE query_name = 'pulse_metrics'")
    assert int(reports[0]["n"]) > 0
    print(f"{mode}: killed with {committed} committed / {planned} planned batches; {stats['rows']} rows "
          f"written for {stats['windows']} windows")


def test_kill_minus_nine_of_the_store_writer_and_restart_equals_an_uninterrupted_run(
        kafka, spark, database, settings, tmp_path):
    """The job writes its window updates to Kafka (no writer inside); `pulse store`, its own process
    and store, is killed between inserts and started again."""
    topic = settings.kafka.trades_topic
    # The output topics `pulse store` reads (tests.support.processor_process names them).
    outputs = {"metrics_topic": f"{topic}.metrics", "rejects_topic": f"{topic}.rejects"}
    job = settings.override(kafka=outputs, writer={"in_process": False})
    # The trades come while the job streams (a backlog would be read in micro-batches first).
    with Runtime(Plan(job, compute=True)).start() as run:
        published = publish_recording(job, recording(ARCHIVE_CSV), "BTCUSDT")
        write_messages(kafka.bootstrap, topic, [b"{broken"], partition=1)
        assert run.wait(Until.CAUGHT_UP, timeout_s=180) == Until.CAUGHT_UP
    updates = _output_end(kafka.bootstrap, outputs["metrics_topic"])
    assert updates >= published, "Real-Time Mode emits an update per trade"

    data_dir = tmp_path / "store"
    data_dir.mkdir()
    log = tmp_path / "store.log"
    # Small inserts, so that the kill lands between two of them.
    env = {"PULSE_WRITER__MAX_RECORDS": "50", "PULSE_WRITER__HEALTH_PORT": "0"}
    outcome: dict[str, object] = {}
    _kill_when(start_store(data_dir, kafka.bootstrap, topic, log, **env),
               lambda: 0 < _inserted(kafka.bootstrap, outputs["metrics_topic"]) < updates // 2, log, outcome)
    assert "error" not in outcome, outcome["error"]
    killed_at = _inserted(kafka.bootstrap, outputs["metrics_topic"])
    assert 0 < killed_at < updates

    store = start_store(data_dir, kafka.bootstrap, topic, log, **env)
    try:
        deadline = time.monotonic() + 120
        while _inserted(kafka.bootstrap, outputs["metrics_topic"]) < updates:
            assert store.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the restarted store writer did not catch up"
            time.sleep(0.2)
        os.killpg(store.pid, signal.SIGINT)
        assert store.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        if store.poll() is None:
            os.killpg(store.pid, signal.SIGKILL)
    assert "stopped" in log.read_text()

    assert database.query_arrow(WINDOWS_SQL).num_rows == 0, "the job had no writer of its own"
    reference = reference_windows(trades_from_recording(recording(ARCHIVE_CSV), "BTCUSDT"))
    actual = pulse_sql(data_dir, WINDOWS_SQL)
    assert {(r["symbol"], int(r["window_start_ms"])) for r in actual} == set(reference)
    for row in actual:
        want = reference[(row["symbol"], int(row["window_start_ms"]))]
        assert int(row["trade_count"]) == want.trade_count and row["signal"] == want.signal
        assert math.isclose(float(row["vwap"]), float(want.vwap), rel_tol=1e-9)
        assert math.isclose(float(row["net_delta"]), float(want.net_delta), rel_tol=1e-9, abs_tol=1e-9)
    assert [r["reason"] for r in pulse_sql(data_dir, REJECTS_SQL)] == ["value is not valid JSON"]
    print(f"store writer killed after {killed_at} of {updates} updates; {len(actual)} windows exact")
