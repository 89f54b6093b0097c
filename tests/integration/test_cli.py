"""The documented commands, run as a user runs them (`make demo` in test_make_demo.py): `pulse demo
--input` (archive CSV, a quarterly contract), `pulse sql`, `pulse process`, and an interrupted demo
that must leave no broker or Spark JVM behind. No JVM line reaches the terminal, nothing lands in
the working directory."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest

from pulse.broker.local_kafka import free_port
from pulse.settings import KafkaSettings
from tests.support.producer_harness import consume_all, fresh_topics, ids_by_symbol
from tests.support.recordings import ARCHIVE_CSV, ROOT, USDM_RAW, recording
from tests.support.reference import reference_windows, trades_from_recording
from tests.support.terminal import JVM_LINE

pytestmark = pytest.mark.integration
PULSE = str(Path(sys.executable).with_name("pulse"))


def run(*args: str, timeout: float = 300, cwd: Path = ROOT,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`args` with this environment plus `env`; it must exit 0."""
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, cwd=cwd, check=False,
                            env={**os.environ, **(env or {})})
    assert result.returncode == 0, f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def sql_rows(data_dir: Path, query: str) -> list[dict[str, Any]]:
    output = run(PULSE, "sql", query, "--data-dir", str(data_dir), "--format", "JSONEachRow").stdout
    return [json.loads(line) for line in output.splitlines() if line.strip()]


def java_processes_under(folder: Path) -> list[str]:
    listing = subprocess.run(["ps", "-eww", "-o", "pid,args"], capture_output=True, text=True, check=True).stdout
    return [line for line in listing.splitlines() if "java" in line and str(folder) in line]


def jvm_children(pid: int) -> list[psutil.Process]:
    return [child for child in psutil.Process(pid).children(recursive=True) if "java" in child.name()]


def test_pulse_demo_replays_an_archive_csv(tmp_path):
    data_dir = tmp_path / "csv"
    path = recording(ARCHIVE_CSV)
    result = run(PULSE, "demo", "--input", str(path), "--symbol", "BTCUSDT", "--speed", "max",
                 "--data-dir", str(data_dir), "--no-live-view")
    expected = reference_windows(trades_from_recording(path, "BTCUSDT"))
    assert "trades in:        5000 " in result.stdout
    rows = sql_rows(data_dir, "SELECT toUnixTimestamp64Milli(window_start) AS ws, signal, trade_count"
                              " FROM pulse_metrics ORDER BY ws")
    assert {(r["ws"], r["signal"], r["trade_count"]) for r in rows} == {
        (w.window_start_ms, w.signal, w.trade_count) for w in expected.values()}
    assert "CSV" not in run(PULSE, "sql", "SELECT 1", "--data-dir", str(data_dir), "--format", "CSV").stdout


def test_pulse_demo_turns_a_quarterly_contracts_archive_into_windows(tmp_path):
    # A USD-M delivery contract's archive file as Binance publishes them: a header row, times in ms.
    # (The trades are the bundled archive's; delivery names like BTCUSDT_260327 were once refused.)
    source = recording(ARCHIVE_CSV)
    archive = tmp_path / "BTCUSDT_260327-aggTrades-2026-01-01.csv"
    rows = [line.split(",") for line in source.read_text().splitlines() if line.strip()]
    archive.write_text("agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,is_buyer_maker\n" +
                       "".join(f"{r[0]},{r[1]},{r[2]},{r[3]},{r[4]},{int(r[5]) // 1000},{r[6]}\n" for r in rows))
    data_dir, cwd = tmp_path / "data", tmp_path / "cwd"
    cwd.mkdir()
    result = run(PULSE, "demo", "--input", str(archive), "--symbol", "BTCUSDT_260327", "--speed", "max",
                 "--data-dir", str(data_dir), cwd=cwd)
    expected = reference_windows(trades_from_recording(source, "BTCUSDT_260327"))
    assert "trades in:        5000 (published 5000, dead-lettered 0" in result.stdout
    assert "dead letters:     none" in result.stdout
    assert f"windows out:      {len(expected)} " in result.stdout
    rows_out = sql_rows(data_dir, "SELECT symbol, toUnixTimestamp64Milli(window_start) AS ws, signal, trade_count"
                                  " FROM pulse_metrics")
    assert {(r["symbol"], r["ws"], r["signal"], r["trade_count"]) for r in rows_out} == {
        ("BTCUSDT_260327", w.window_start_ms, w.signal, w.trade_count) for w in expected.values()}
    assert list(cwd.iterdir()) == []


def test_pulse_process_leaves_the_working_directory_empty(kafka, tmp_path):
    topics = fresh_topics(kafka.bootstrap)
    cwd, data_dir = tmp_path / "cwd", tmp_path / "data"
    cwd.mkdir()
    env = produce_env(topics)
    subprocess.run([PULSE, "produce", "--source", "replay", "--input", str(recording(USDM_RAW)), "--bootstrap-servers",
                    kafka.bootstrap, "--metrics-port", "0", "--data-dir", str(data_dir)],
                   env=env, cwd=cwd, check=True, timeout=120, capture_output=True)
    result = subprocess.run([PULSE, "process", "--bootstrap-servers", kafka.bootstrap, "--topic", topics.trades_topic,
                             "--starting-offsets", "earliest", "--until-idle", "2", "--data-dir", str(data_dir)],
                            env={**env, "PULSE_SPARK__HEALTH_PORT": "0"}, cwd=cwd, capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert list(cwd.iterdir()) == [], "Spark's artifacts/ (and anything else) belong under the data directory"
    assert not [line for line in (result.stdout + result.stderr).splitlines() if JVM_LINE.search(line)]
    expected = reference_windows(trades_from_recording(recording(USDM_RAW)))
    (row,) = sql_rows(data_dir, "SELECT count() AS n FROM pulse_metrics FINAL")
    assert int(row["n"]) == len(expected)


def test_interrupted_demo_leaves_no_process_behind(tmp_path):
    data_dir = tmp_path / "interrupted"
    demo = subprocess.Popen([PULSE, "demo", "--data-dir", str(data_dir), "--speed", "1"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert demo.stdout is not None
        seen = []
        for line in demo.stdout:
            seen.append(line)
            if line.startswith("[4/5]"):
                break
        jvms = jvm_children(demo.pid)
        assert len(jvms) >= 2, f"expected the broker and Spark JVMs while replaying, found {jvms}:\n{''.join(seen)}"
        # A replay ends by itself: its JVMs compile with C1 only (PULSE_JIT=auto).
        assert all("-XX:TieredStopAtLevel=1" in jvm.cmdline() for jvm in jvms), [jvm.cmdline() for jvm in jvms]
        os.kill(demo.pid, signal.SIGINT)
        output = demo.communicate(timeout=120)[0]
        assert demo.returncode == 130, output[-2000:]
        _, alive = psutil.wait_procs(jvms, timeout=30)
        assert not alive, f"JVMs outlived the interrupted demo: {alive}"
        assert not java_processes_under(data_dir)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()


def test_make_help_lists_the_entry_points():
    output = run("make", "help").stdout
    for target in ("setup", "demo", "test", "lint", "bench"):
        assert f"make {target} " in output


def produce_env(topics: KafkaSettings) -> dict[str, str]:
    return {**os.environ, "PULSE_KAFKA__TRADES_TOPIC": topics.trades_topic,
            "PULSE_KAFKA__DEAD_LETTER_TOPIC": topics.dead_letter_topic,
            "PULSE_KAFKA__GAPS_TOPIC": f"{topics.trades_topic}.gaps"}


def test_pulse_produce_replay_publishes_every_recorded_trade(kafka, tmp_path):
    topics = fresh_topics(kafka.bootstrap)
    path = recording(USDM_RAW)
    subprocess.run([PULSE, "produce", "--source", "replay", "--input", str(path), "--bootstrap-servers",
                    kafka.bootstrap, "--metrics-port", "0", "--data-dir", str(tmp_path)],
                   env=produce_env(topics), cwd=ROOT, check=True, timeout=120, capture_output=True)
    records = asyncio.run(consume_all(kafka.bootstrap, topics.trades_topic))
    want = sorted((t.symbol, t.agg_id) for t in trades_from_recording(path))
    assert sorted((r.value["symbol"], r.value["agg_trade_id"]) for r in records) == want


def test_pulse_produce_synthetic_publishes_the_requested_total(kafka, tmp_path):
    topics = fresh_topics(kafka.bootstrap)
    subprocess.run([PULSE, "produce", "--source", "synthetic", "--rate", "20000", "--total", "20000",
                    "--bootstrap-servers", kafka.bootstrap, "--metrics-port", "0", "--data-dir", str(tmp_path)],
                   env=produce_env(topics), cwd=ROOT, check=True, timeout=120, capture_output=True)
    records = asyncio.run(consume_all(kafka.bootstrap, topics.trades_topic))
    assert len(records) == 20000
    for symbol_ids in ids_by_symbol(records).values():
        assert symbol_ids == sorted(set(symbol_ids)), "synthetic ids must be unique and in order per symbol"


def test_jupyter_lab_serves_the_notebook(tmp_path):
    port = free_port()
    token = "pulse-test"
    lab = subprocess.Popen([str(Path(sys.executable).with_name("jupyter")), "lab", "--no-browser", "--ip=127.0.0.1",
                            f"--port={port}", f"--IdentityProvider.token={token}", "--ServerApp.open_browser=False",
                            # CI runs as root, which JupyterLab refuses unless told.
                            "--allow-root",
                            "notebooks/"],
                           cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env={**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path), "HOME": str(tmp_path)})
    try:
        url = f"http://127.0.0.1:{port}/api/contents/pulse.ipynb?token={token}"
        for _ in range(120):
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    notebook = json.loads(response.read())
                break
            except OSError:
                time.sleep(0.5)
        else:
            raise AssertionError("JupyterLab did not serve notebooks/pulse.ipynb within 60 s")
        assert notebook["type"] == "notebook"
        assert any(cell["cell_type"] == "code" for cell in notebook["content"]["cells"])
    finally:
        lab.terminate()
        lab.wait(timeout=30)
