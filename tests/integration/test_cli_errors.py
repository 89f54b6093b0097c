"""What a user can get wrong, as they would get it wrong: each case runs the real `pulse` command
and checks the exit code (2 for usage, 1 otherwise), one line on stderr that says what happened
and what to do, and no traceback unless asked for (`--debug`, PULSE_DEBUG=1).

Most cases fail before any JVM starts (that is the point of checking first); two need the whole
pipeline: a recording in which nothing becomes a trade, and Binance refusing the websocket.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pulse.broker.local_kafka import free_port
from tests.support.binance_double import double_in_thread
from tests.support.names import on_broker
from tests.support.producer_harness import recorded_tape
from tests.support.recordings import ARCHIVE_CSV, recording

pytestmark = pytest.mark.integration
PULSE = str(Path(sys.executable).with_name("pulse"))


def pulse(*args: str, cwd: Path, env: dict[str, str] | None = None,
          timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PULSE, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout, check=False,
                          env={**os.environ, **(env or {})})


def assert_one_line(result: subprocess.CompletedProcess[str], code: int, command: str, *phrases: str) -> str:
    """Exit `code`, exactly one line on stderr naming the command and holding each phrase, no traceback."""
    lines = result.stderr.splitlines()
    assert result.returncode == code, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    assert len(lines) == 1, f"one line on stderr, got:\n{result.stderr}"
    assert lines[0].startswith(f"pulse {command}: "), lines[0]
    for phrase in phrases:
        assert phrase in lines[0], (phrase, lines[0])
    assert "Traceback" not in result.stdout + result.stderr
    return lines[0]


@pytest.fixture
def cwd(tmp_path: Path) -> Path:
    here = tmp_path / "cwd"
    here.mkdir()
    return here


def test_a_missing_input_file(cwd):
    result = pulse("demo", "--input", "no-such.raw", cwd=cwd)
    assert_one_line(result, 2, "demo", "no file at no-such.raw", "--input")


def test_a_folder_as_input(cwd):
    result = pulse("produce", "--source", "replay", "--input", str(cwd), cwd=cwd)
    assert_one_line(result, 2, "produce", "is a folder")


def test_an_archive_still_zipped(cwd):
    archive = cwd / "BTCUSDT-aggTrades-2026-01-01.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.write(recording(ARCHIVE_CSV), "BTCUSDT-aggTrades-2026-01-01.csv")
    result = pulse("demo", "--input", str(archive), "--symbol", "BTCUSDT", cwd=cwd)
    assert_one_line(result, 2, "demo", "is a zip archive", "unzip it")


def test_a_file_in_no_format_pulse_reads(cwd):
    notes = cwd / "notes.txt"
    notes.write_text("my trades for today\nbought some BTC\n")
    result = pulse("demo", "--input", str(notes), cwd=cwd)
    assert_one_line(result, 2, "demo", "in no format Pulse reads", "archive CSV")


def test_archive_csv_without_a_symbol(cwd):
    result = pulse("demo", "--input", str(recording(ARCHIVE_CSV)), cwd=cwd)
    assert_one_line(result, 2, "demo", "carry no symbol", "--symbol")


def test_no_store_yet(cwd):
    result = pulse("sql", "SELECT 1", "--data-dir", str(cwd.parent / "nothing-here"), cwd=cwd)
    assert_one_line(result, 2, "sql", "no results at", "pulse demo")


def test_bad_sql_and_debug_shows_the_traceback(cwd):
    data_dir = cwd.parent / "store"
    (data_dir / "chdb").mkdir(parents=True)
    assert pulse("sql", "SELECT 1", "--data-dir", str(data_dir), cwd=cwd).returncode == 0
    result = pulse("sql", "SELECT symbol FROM pulse_metrics WHERE", "--data-dir", str(data_dir), cwd=cwd)
    line = assert_one_line(result, 1, "sql", "ClickHouse refused the query", "Syntax error")
    assert len(line) < 400, "ClickHouse's list of expected tokens is cut"
    for debug in (["--debug"], []):
        traced = pulse("sql", "SELEC 1", "--data-dir", str(data_dir), *debug, cwd=cwd,
                       env={} if debug else {"PULSE_DEBUG": "1"})
        assert traced.returncode == 1 and "Traceback" in traced.stderr


def test_an_unreachable_broker(cwd):
    closed = f"127.0.0.1:{free_port()}"
    result = pulse("process", "--bootstrap-servers", closed, "--data-dir", str(cwd.parent / "d"), cwd=cwd,
                   timeout=60)
    assert_one_line(result, 1, "process", f"cannot reach Kafka at {closed}", "--bootstrap-servers")
    result = pulse("live", "--data-dir", str(cwd.parent / "d"), cwd=cwd, timeout=60,
                   env={"PULSE_KAFKA__BOOTSTRAP_SERVERS": closed})
    assert_one_line(result, 1, "live", "cannot reach Kafka", "PULSE_KAFKA__BOOTSTRAP_SERVERS")
    assert list(cwd.iterdir()) == []


def test_java_missing(cwd):
    result = pulse("demo", "--data-dir", str(cwd.parent / "d"), cwd=cwd, env={"PATH": str(cwd.parent / "empty")})
    assert_one_line(result, 1, "demo", "Java was not found on PATH", "Java 17")


def test_jars_missing_and_maven_too(cwd, tmp_path):
    bin_dir = tmp_path / "bin"  # java, but no mvn
    bin_dir.mkdir()
    java = shutil.which("java")
    assert java is not None
    (bin_dir / "java").symlink_to(java)
    env = {"PATH": str(bin_dir), "PULSE_JARS_DIR": str(tmp_path / "no-jars")}
    result = pulse("demo", "--data-dir", str(tmp_path / "d"), cwd=cwd, env=env)
    assert_one_line(result, 1, "demo", "Kafka broker jars are not in", "make setup", "Maven, which is not installed")
    result = pulse("process", "--bootstrap-servers", "127.0.0.1:1", cwd=cwd, env=env, timeout=60)
    assert result.returncode == 1, "a missing broker is found before missing jars, and both are one line"


@pytest.mark.parametrize("status", [451, 403, 429])
def test_binance_refusing_the_rest_api(cwd, status):
    with double_in_thread(recorded_tape()) as double:
        double.refuse_rest_with = status
        double.retry_after_s = 0
        result = pulse("live", "--symbols", "BTCUSDT", "--data-dir", str(cwd.parent / "d"), cwd=cwd, timeout=120,
                       env={"PULSE_PRODUCER__REST_BASE_URL": double.rest_base_url,
                            "PULSE_PRODUCER__WS_BASE_URL": double.ws_host_url})
    hint = {451: "refuses connections from this region (HTTP 451)", 403: "HTTP 403", 429: "rate-limits this IP"}
    assert_one_line(result, 1, "live", hint[status])


def test_symbols_binance_does_not_list(cwd):
    with double_in_thread(recorded_tape(), listed={"BTCUSDT_250328": "SETTLING"}) as double:
        env = {"PULSE_PRODUCER__REST_BASE_URL": double.rest_base_url, "PULSE_PRODUCER__WS_BASE_URL": double.ws_host_url}
        typo = pulse("live", "--symbols", "BTCUSDT,BTCUSTD", cwd=cwd, env=env, timeout=120)
        expired = pulse("live", "--symbols", "btcusdt_250328", cwd=cwd, env=env, timeout=120)
    assert_one_line(typo, 2, "live", "BTCUSTD is not a USD-M futures symbol (did you mean BTCUSDT?)")
    assert_one_line(expired, 2, "live", "BTCUSDT_250328 is not trading on USD-M futures (status SETTLING)")
    assert_one_line(pulse("live", "--symbols", "BTC/USDT", cwd=cwd), 2, "live", "not spelled as Binance spells")


def test_symbols_of_other_venues_are_checked_against_what_a_trade_may_carry(cwd):
    assert_one_line(pulse("live", "--venue", "kraken", "--symbols", "BTC/USD,BTC'USD", cwd=cwd), 2, "live",
                    "BTC'USD: neither a symbol (A-Z 0-9 _ . -, 1 to 20 long) nor a pair")


def test_symbols_of_several_venues_name_a_venue_each_spelled_its_way(cwd):
    assert_one_line(pulse("live", "--symbols", "okx:BTC-USDT,nowhere:BTC-USD", cwd=cwd), 2, "live",
                    "nowhere:BTC-USD: nowhere is not a venue (one of binance-usdm,")
    assert_one_line(pulse("live", "--symbols", "okx:BTC-USDT,binance-spot:BTC/USDT", cwd=cwd), 2, "live",
                    "BTC/USDT: not spelled as Binance spells symbols")


def test_symbols_of_another_market(cwd):
    with double_in_thread([], market="coinm", listed={"BTCUSD_PERP": "TRADING"}) as double:
        env = {"PULSE_PRODUCER__REST_BASE_URL": double.rest_base_url, "PULSE_PRODUCER__WS_BASE_URL": double.ws_host_url}
        result = pulse("live", "--market", "coinm", "--symbols", "BTCUSDT", cwd=cwd, env=env, timeout=120)
    assert_one_line(result, 2, "live", "BTCUSDT is not a COIN-M futures symbol (did you mean BTCUSD_PERP?)")


def test_bad_arguments_and_settings(cwd):
    assert_one_line(pulse("demo", "--speed", "fast", cwd=cwd), 2, "demo", "speed must be a number", "--help")
    assert_one_line(pulse("live", "--market", "moon", cwd=cwd), 2, "live", "invalid choice")
    assert_one_line(pulse("sql", "SELECT 1", cwd=cwd, env={"PULSE_PRODUCER__MARKET": "moon"}), 2, "sql",
                    "invalid setting PULSE_PRODUCER__MARKET")


def test_a_recording_in_which_nothing_becomes_a_trade_fails_with_its_dead_letters(cwd, tmp_path, kafka):
    # A USD-M quarterly contract's frames, each broken the same way (a negative price): every one is
    # dead-lettered, and the run says so instead of ending well with nothing.
    broken = tmp_path / "broken.jsonl"
    frames = [{"stream": "btcusdt_260327@aggTrade", "data": {
        "e": "aggTrade", "E": 1767225600000 + i, "s": "BTCUSDT_260327", "a": i, "p": "-87648.2", "q": "0.01",
        "f": i, "l": i, "T": 1767225600000 + i, "m": i % 2 == 0}} for i in range(50)]
    broken.write_text("".join(json.dumps(frame) + "\n" for frame in frames))
    data_dir = tmp_path / "d"
    result = pulse("demo", "--input", str(broken), "--speed", "max", "--data-dir", str(data_dir), cwd=cwd,
                   env=on_broker(kafka.bootstrap))
    line = assert_one_line(result, 1, "demo", "no trade came out of broken.jsonl", "50 records dead-lettered",
                           "field 'p'")
    assert "the summary above" in line
    assert "dead letters by reason:\n  50 x field 'p'" in result.stdout
    assert "e.g. field 'p': must be a decimal string > 0 |" in result.stdout, "one example per reason"
    assert "windows out:      0 " in result.stdout
    assert list(cwd.iterdir()) == []


def test_binance_refusing_the_websocket_ends_the_live_run(cwd, tmp_path):
    with double_in_thread(recorded_tape()) as double:
        double.refuse_ws_with = 451
        result = pulse("live", "--symbols", "BTCUSDT,ETHUSDT", "--data-dir", str(tmp_path / "d"), cwd=cwd,
                       env={"PULSE_PRODUCER__REST_BASE_URL": double.rest_base_url,
                            "PULSE_PRODUCER__WS_BASE_URL": double.ws_host_url})
        refused = double.refused_handshakes
    assert_one_line(result, 1, "live", "Binance refuses connections from this region (HTTP 451)",
                    "replay a recording")
    assert refused >= 1
    assert list(cwd.iterdir()) == []
