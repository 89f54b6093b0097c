"""Exactly-once effect: `pulse process` killed with SIGKILL mid-stream and restarted on the same
checkpoint leaves the same table, window by window, as an uninterrupted run over the same input."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from pulse.pipeline import Pipeline
from tests.support.pipeline import publish_recording
from tests.support.processor_process import METRIC_COLUMNS, WINDOWS_SQL, pulse_sql, start_process
from tests.support.recordings import ARCHIVE_CSV, recording
from tests.support.topic_writer import write_messages

pytestmark = pytest.mark.integration

BATCH = "500"  # offsets per micro-batch: ~10 batches over the input, so the kill lands mid-stream


def _batches(checkpoint: Path, kind: str) -> int:
    folder = checkpoint / "pulse_metrics" / kind
    return len([p for p in folder.glob("[0-9]*")]) if folder.exists() else 0


def _run_until_idle(data_dir: Path, bootstrap: str, topic: str, log: Path, env: dict[str, str]) -> None:
    process = start_process(data_dir, bootstrap, topic, log, "--until-idle", "2", **env)
    try:
        assert process.wait(timeout=240) == 0, log.read_text()[-3000:]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


def _kill_mid_batch(process: subprocess.Popen[bytes], checkpoint: Path, log: Path, outcome: dict[str, object]) -> None:
    """SIGKILL the process group once a few batches are committed and the next one is in flight."""
    deadline = time.monotonic() + 180
    try:
        while not (_batches(checkpoint, "commits") >= 2
                   and _batches(checkpoint, "offsets") > _batches(checkpoint, "commits")):
            if process.poll() is not None:
                outcome["error"] = "the processor exited early:\n" + log.read_text()[-3000:]
                return
            if time.monotonic() > deadline:
                outcome["error"] = "the processor committed no batches"
                return
            time.sleep(0.02)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the driver and its Spark JVM, no shutdown
        process.wait(timeout=30)
    outcome["committed"] = _batches(checkpoint, "commits")
    outcome["planned"] = _batches(checkpoint, "offsets")


def test_kill_minus_nine_and_restart_equals_an_uninterrupted_run(kafka, spark, database, settings, tmp_path):
    topic = settings.kafka.trades_topic
    published = publish_recording(settings, recording(ARCHIVE_CSV), "BTCUSDT")
    write_messages(kafka.bootstrap, topic, [b"{broken", b'{"schema_version": 9}'], partition=2)

    # The crashing run starts first: its Spark starts up while this process runs the reference.
    data_dir = tmp_path / "crashing"
    data_dir.mkdir()
    log = tmp_path / "process.log"
    env = {"PULSE_SPARK__MAX_OFFSETS_PER_TRIGGER": BATCH, "PULSE_SPARK__TRIGGER_MS": "200"}
    checkpoint = data_dir / "checkpoints"
    outcome: dict[str, object] = {}
    killer = threading.Thread(target=_kill_mid_batch, args=(start_process(data_dir, kafka.bootstrap, topic, log, **env),
                                                            checkpoint, log, outcome))
    killer.start()

    # The uninterrupted run: the same job in this process.
    uninterrupted = settings.override(spark={"max_offsets_per_trigger": int(BATCH)})
    with Pipeline(uninterrupted) as run:
        run.start_job()
        run.wait_idle(idle_s=1.0, timeout_s=180)
    expected = database.query_arrow(WINDOWS_SQL).to_pylist()
    rejects_sql = "SELECT offset, reason FROM pulse_rejects FINAL ORDER BY offset"
    expected_rejects = database.query_arrow(rejects_sql).to_pylist()
    assert sum(r["trade_count"] for r in expected) == published
    assert len(expected_rejects) == 2

    killer.join(timeout=200)
    assert "error" not in outcome, outcome["error"]
    committed, planned = int(str(outcome["committed"])), int(str(outcome["planned"]))
    assert committed < math.ceil((published + 2) / int(BATCH)), "killed too late to prove anything"

    _run_until_idle(data_dir, kafka.bootstrap, topic, log, env)
    assert "topic consumed and idle" in log.read_text()

    columns = [c.split(" AS ")[-1] for c in METRIC_COLUMNS]
    actual = pulse_sql(data_dir, WINDOWS_SQL)
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected, strict=True):
        assert (got["symbol"], got["window_start_ms"]) == (want["symbol"], want["window_start_ms"])
        for column in columns:
            left, right = got[column], want[column]
            if isinstance(right, float):
                assert math.isclose(float(left), right, rel_tol=1e-12, abs_tol=1e-12), (column, got, want)
            else:
                assert str(left) == str(right), (column, got, want)
    rejects = pulse_sql(data_dir, rejects_sql)
    assert [(int(r["offset"]), r["reason"]) for r in rejects] == [(r["offset"], r["reason"]) for r in expected_rejects]
    # The batch in flight at the kill was planned before it and replayed after it, same id.
    stats = pulse_sql(data_dir, "SELECT count() AS rows, max(version) AS last FROM pulse_metrics")[0]
    assert int(stats["last"]) >= planned - 1
    print(f"killed with {committed} committed / {planned} planned batches; {stats['rows']} rows written "
          f"for {len(actual)} windows")
