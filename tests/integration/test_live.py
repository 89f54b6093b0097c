"""`pulse live` as a user runs it, against the Binance double: the real broker, Spark and chDB,
started by Pulse itself in a subprocess, from an empty working directory that must stay empty.

- In a terminal (a pty read through a terminal emulator): the dashboard shows both symbols with
  their signals and every window of the recording, Ctrl-C (to the whole process group, as a
  terminal sends it) stops it with exit 0, no JVM outlives it, no JVM line reaches the screen,
  and `pulse sql` then finds exactly the windows the reference computes.
- Without a terminal, `--symbols all`, on a Kafka named in settings (no embedded broker, the
  new checkpoint starting at "latest"): 503 symbols from exchangeInfo over three connections,
  plain progress lines, every window, SIGINT stops it with exit 0.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from pulse.storage.clickhouse import ChdbTransport, apply_schema
from tests.support.binance_double import BinanceDouble, double_in_thread
from tests.support.clickhouse_http import ClickHouseHttp
from tests.support.names import unique_name
from tests.support.producer_harness import fresh_topics, recorded_tape
from tests.support.recordings import SPOT_RAW, USDM_RAW, recording
from tests.support.reference import RefWindow, reference_windows, trades_from_recording
from tests.support.terminal import JVM_LINE, Terminal

pytestmark = pytest.mark.integration
PULSE = str(Path(sys.executable).with_name("pulse"))
SIGNALS = ("STRONG BUY", "ACCUMULATING", "NEUTRAL", "DISTRIBUTING", "STRONG SELL")


def live_env(double: BinanceDouble, **extra: str) -> dict[str, str]:
    return {**os.environ, "PULSE_PRODUCER__WS_BASE_URL": double.ws_host_url,
            "PULSE_PRODUCER__REST_BASE_URL": double.rest_base_url,
            # The double's tape ends; quiet shards stay connected rather than reconnecting every 30 s.
            "PULSE_PRODUCER__STALL_TIMEOUT_S": "600", "PULSE_PRODUCER__RECONNECT_INITIAL_S": "0.05",
            "PULSE_PRODUCER__RECONNECT_MAX_S": "0.5",
            # A test's live run lasts seconds: its JVMs compile as a replay's do (C1 only), not for hours.
            "PULSE_JIT": "quick", **extra}


def expected_windows(symbols: set[str] | None = None) -> dict[tuple[str, int], RefWindow]:
    trades = [t for name in (USDM_RAW, SPOT_RAW) for t in trades_from_recording(recording(name))]
    return {key: w for key, w in reference_windows(trades).items() if symbols is None or key[0] in symbols}


def stored_windows(data_dir: Path, cwd: Path, env: dict[str, str] | None = None) -> set[tuple[str, int, str, int]]:
    result = subprocess.run([PULSE, "sql", "SELECT symbol, toUnixTimestamp64Milli(window_start) AS ws, signal,"
                             " trade_count FROM pulse_metrics FINAL", "--data-dir", str(data_dir), "--format", "TSV"],
                            capture_output=True, text=True, cwd=cwd, timeout=120, check=True, env=env)
    rows = (line.split("\t") for line in result.stdout.splitlines() if line.strip())
    return {(symbol, int(ws), signal, int(count)) for symbol, ws, signal, count in rows}


def as_rows(windows: dict[tuple[str, int], RefWindow]) -> set[tuple[str, int, str, int]]:
    return {(symbol, w.window_start_ms, w.signal, w.trade_count) for (symbol, _), w in windows.items()}


def jvm_children(pid: int) -> list[psutil.Process]:
    return [child for child in psutil.Process(pid).children(recursive=True) if "java" in child.name()]


def _row_with_signal(screen: str, symbol: str) -> str | None:
    for line in screen.splitlines():
        if line.startswith(symbol + " ") and any(signal in line for signal in SIGNALS):
            return line
    return None


def test_pulse_live_in_a_terminal_shows_the_dashboard_and_stops_cleanly_on_ctrl_c(tmp_path):
    symbols = {"BTCUSDT", "ETHUSDT"}
    tape = [payload for payload in recorded_tape() if payload["s"] in symbols]
    expected = expected_windows(symbols)
    data_dir, cwd = tmp_path / "data", tmp_path / "cwd"
    cwd.mkdir()
    started = time.monotonic()
    with double_in_thread(tape, frames_per_s=400) as double:
        terminal = Terminal([PULSE, "live", "--symbols", "BTCUSDT,ETHUSDT", "--data-dir", str(data_dir)], cwd,
                            live_env(double))
        try:
            terminal.wait_for(lambda t: "[4/4] streaming 2 symbols" in t.plain_output(), 240, "streaming to start")
            jvms = jvm_children(terminal.process.pid)
            assert len(jvms) >= 2, f"expected the broker and Spark JVMs, found {jvms}"
            # Every window of the recording, counted by the dashboard itself from the store.
            screen, code = terminal.windows_then_ctrl_c(len(expected))
            streaming_s = time.monotonic() - started
        finally:
            terminal.close()
    output = terminal.plain_output()
    assert code == 0, output[-3000:]
    rows = {symbol: _row_with_signal(screen, symbol) for symbol in symbols}
    assert all(rows.values()), f"both symbols with a signal on screen:\n{screen}"
    assert max(len(line) for line in screen.splitlines()) <= 80
    assert "Spark Real-Time Mode" in screen and "freshness p50" in screen and "dead letters 0" in screen
    # The frames redrew in place: many distinct screens, and the title once per screen, not once per redraw.
    assert len(terminal.frames) > 5 and screen.count("Pulse live") == 1
    jvm_lines = [line for line in output.splitlines() if JVM_LINE.search(line)]
    assert not jvm_lines, f"JVM output reached the terminal: {jvm_lines[:5]}"
    assert "Traceback" not in output
    assert f"windows out:      {len(expected)} " in output and "== Pulse live summary" in output
    _, alive = psutil.wait_procs(jvms, timeout=30)
    assert not alive, f"JVMs outlived Ctrl-C: {alive}"
    assert list(cwd.iterdir()) == [], "nothing may land in the working directory"
    assert (data_dir / "logs" / "spark.log").exists() and (data_dir / "logs" / "pulse.log").exists()
    assert stored_windows(data_dir, cwd) == as_rows(expected)
    print(f"pulse live in a pty: streaming after {streaming_s:.0f}s, {len(terminal.frames)} screens")


def _read_lines(stream: Any, into: list[str]) -> None:
    for line in stream:
        into.append(line)


def test_pulse_live_all_symbols_on_a_named_kafka_and_clickhouse_server_without_a_terminal(
        kafka, chdb_engine, base_settings, tmp_path):
    """The stack's shape: a named Kafka, and ClickHouse over HTTP (the test endpoint over the real
    engine); `pulse sql` reads the windows back over HTTP."""
    topics = fresh_topics(kafka.bootstrap)
    store = ChdbTransport(base_settings.chdb_path, unique_name("pulse_live"))
    apply_schema(store, base_settings.schema_dir)  # a server's tables exist before Pulse writes
    server = ClickHouseHttp(chdb_engine, user="pulse_writer", password="live").start()
    named_kafka = {"PULSE_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap, "PULSE_KAFKA__TRADES_TOPIC": topics.trades_topic,
                   "PULSE_KAFKA__DEAD_LETTER_TOPIC": topics.dead_letter_topic,
                   "PULSE_KAFKA__GAPS_TOPIC": topics.gaps_topic, **server.env(store.database)}
    quiet = {f"Q{i:03d}USDT": "TRADING" for i in range(495)}
    tape = recorded_tape()
    expected = expected_windows()
    data_dir, cwd = tmp_path / "data", tmp_path / "cwd"
    cwd.mkdir()
    with double_in_thread(tape, frames_per_s=1000, listed=quiet | {"BTCUSDT_250328": "SETTLING"}) as double:
        live = subprocess.Popen([PULSE, "live", "--symbols", "all", "--data-dir", str(data_dir)], cwd=cwd,
                                env=live_env(double, **named_kafka), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        out: list[str] = []
        reader = threading.Thread(target=_read_lines, args=(live.stdout, out), daemon=True)
        reader.start()
        try:
            deadline = time.monotonic() + 300
            while not any(f"· {len(expected)} windows" in line for line in out):
                assert live.poll() is None, "".join(out)
                assert time.monotonic() < deadline, "".join(out)
                time.sleep(0.5)
            os.kill(live.pid, signal.SIGINT)
            code = live.wait(timeout=180)
            reader.join(timeout=10)
            assert live.stderr is not None
            errors = live.stderr.read()
        finally:
            if live.poll() is None:
                live.kill()
                live.wait()
        connections = list(double.connection_symbols)
    output = "".join(out)
    assert code == 0, output[-3000:] + errors
    assert errors == "", "nothing on stderr in a clean run"
    assert f"[1/4] using Kafka at {kafka.bootstrap}" in output and not (data_dir / "kafka").exists()
    assert "[4/4] streaming 503 symbols from Binance USD-M futures over 3 connections" in output
    assert sorted(len(symbols) for symbols in connections) == [103, 200, 200]
    assert "BTCUSDT_250328" not in set().union(*connections), "a contract that no longer trades is left out"
    progress = [line for line in output.splitlines() if re.match(r"\[\d\d:\d\d:\d\d\] ", line)]
    assert progress, "plain progress lines while it runs"
    assert not [line for line in output.splitlines() if JVM_LINE.search(line)]
    assert "\x1b[" not in output, "no escape sequences when stdout is not a terminal"
    assert list(cwd.iterdir()) == []
    assert f"[2/4] opening ClickHouse (http) at 127.0.0.1:{server.port}" in output
    try:
        assert stored_windows(data_dir, cwd, {**os.environ, **server.env(store.database)}) == as_rows(expected)
    finally:
        server.stop()
