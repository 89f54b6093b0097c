"""Run `pulse process` and `pulse sql` as separate processes, each with its own chDB store.

chDB lets one process open a store, and the pytest process already holds one, so results of a
subprocess are read by another subprocess (`pulse sql`) after the writer stopped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PULSE = [sys.executable, "-m", "pulse.cli"]


def pulse_env(**settings: str) -> dict[str, str]:
    """The environment of a child `pulse`: this one without PULSE_* leftovers, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
    env["PYTHONPATH"] = str(ROOT)
    # Any free port for /health: children of tests run beside each other and beside a developer's stack.
    env.update({"PULSE_SPARK__HEALTH_PORT": "0", "PULSE_WRITER__HEALTH_PORT": "0", "PULSE_PRODUCER__METRICS_PORT": "0"})
    env.update(settings)
    return env


def output_topics(topic: str) -> dict[str, str]:
    """The Real-Time Mode output topics of a child run on `topic`, named after it: one test's store
    writer never reads another's window updates, and a restart on the same topic finds its own."""
    return {"PULSE_KAFKA__METRICS_TOPIC": f"{topic}.metrics", "PULSE_KAFKA__REJECTS_TOPIC": f"{topic}.rejects"}


def start_process(data_dir: Path, bootstrap: str, topic: str, log: Path, *extra: str,
                  **settings: str) -> subprocess.Popen[bytes]:
    """`pulse process` in its own session (so a kill of the group takes its Spark JVM along)."""
    settings = {**output_topics(topic), **settings}
    command = [*PULSE, "process", "--data-dir", str(data_dir), "--bootstrap-servers", bootstrap, "--topic", topic,
               "--starting-offsets", "earliest", *extra]
    with log.open("ab") as out:
        return subprocess.Popen(command, cwd=data_dir.parent, env=pulse_env(**settings), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def start_store(data_dir: Path, bootstrap: str, topic: str, log: Path, **settings: str) -> subprocess.Popen[bytes]:
    """`pulse store` for the output topics `start_process` names after `topic`."""
    env = {**output_topics(topic), **settings}
    command = [*PULSE, "store", "--data-dir", str(data_dir), "--bootstrap-servers", bootstrap]
    with log.open("ab") as out:
        return subprocess.Popen(command, cwd=data_dir.parent, env=pulse_env(**env), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def pulse_sql(data_dir: Path, query: str, timeout_s: float = 120) -> list[dict[str, Any]]:
    result = subprocess.run([*PULSE, "sql", query, "--format", "JSONEachRow", "--data-dir", str(data_dir)],
                            cwd=data_dir.parent, env=pulse_env(), capture_output=True, text=True,
                            timeout=timeout_s, check=True)
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


# Every pulse_metrics column that a replay must reproduce (not the write time, latency or version).
METRIC_COLUMNS = ("symbol", "toUnixTimestamp64Milli(window_start) AS window_start_ms", "vwap", "net_delta",
                  "buy_pressure_pct", "total_volume", "trade_count", "avg_price_1_sec", "signal", "open", "high",
                  "low", "close", "buy_volume", "sell_volume", "quote_volume", "first_agg_trade_id",
                  "last_agg_trade_id", "expected_trade_count", "avg_ingest_latency_ms", "max_ingest_latency_ms")
WINDOWS_SQL = f"SELECT {', '.join(METRIC_COLUMNS)} FROM pulse_metrics_latest ORDER BY symbol, window_start"
