"""Hostile input never stops a run and never displaces good data: a recording with every kind of
broken frame mixed into thousands of valid trades, replayed by `pulse demo` as a user would, exits 0
without a traceback, dead-letters each hostile frame with its reason (counted in the summary), counts
a repeated frame once, and leaves every window equal to the reference over the valid trades alone."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from pulse.broker.local_kafka import LocalKafkaBroker
from tests.support.names import on_broker
from tests.support.processor_process import PULSE, WINDOWS_SQL, pulse_env, pulse_sql
from tests.support.recordings import ROOT, USDM_RAW, recording
from tests.support.reference import assert_windows_match, reference_windows, trades_from_recording

pytestmark = pytest.mark.integration

NOW_MS = 1617647797000  # the recording's time: replays receive it now, years later, which is fine
VALID = {"e": "aggTrade", "E": NOW_MS, "a": 1, "s": "HOSTUSDT", "p": "1.5", "q": "2", "f": 1, "l": 1, "T": NOW_MS,
         "m": True}


def _frame(**changes: object) -> bytes:
    return json.dumps({"stream": "hostusdt@aggTrade", "data": {**VALID, **changes}}).encode()


# Each hostile line and the head of the reason it is dead-lettered with.
HOSTILE: list[tuple[bytes, str]] = [
    (_frame(p="1" + "0" * 400), "field 'p'"),
    (_frame(p="0." + "0" * 400 + "1"), "field 'p'"),
    (_frame(q="NaN"), "field 'q'"),
    (_frame(q="Infinity"), "field 'q'"),
    (_frame(q="0"), "field 'q'"),
    (_frame(p="-1.5"), "field 'p'"),
    (_frame(s="HOST'USDT"), "field 's'"),
    (_frame(s="HOST\u0000USDT"), "field 's'"),
    (_frame(s=""), "field 's'"),
    (_frame(s="H" * 50_000), "field 's'"),
    (_frame(s="HOST\x07USDT"), "field 's'"),
    (_frame(T=2**70), "field 'T'"),
    (_frame(T=-1), "field 'T'"),
    (_frame(T=1_400_000_000_000), "field 'T'"),  # 2014: before Binance
    (_frame(T=4102444800000, E=4102444800000), "field 'T'"),  # 2100: would move the watermark
    (_frame(T=NOW_MS + 3_600_000), "field 'T'"),  # an hour after its own event time
    (_frame(m="false"), "field 'm'"),
    (_frame(m=0), "field 'm'"),
    (b'{"stream": "hostusdt@aggTrade", "data": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_001, "not JSON Pulse reads"),
    (b'{"stream": "hostusdt@aggTrade", "data": {"s": "HOST\xff\xfe"}}', "not UTF-8 text"),
    (_frame(pad="x" * 3_000_000), "frame of"),
]


def test_a_replay_mixing_valid_trades_with_every_hostile_frame_keeps_every_window_exact(tmp_path: Path,
                                                                                    kafka: LocalKafkaBroker) -> None:
    path = recording(USDM_RAW)
    lines = path.read_bytes().splitlines()
    trade_lines = [i for i, line in enumerate(lines) if b'"e":"aggTrade"' in line]
    step = len(trade_lines) // (len(HOSTILE) + 1)
    after = {trade_lines[(k + 1) * step]: frame for k, (frame, _) in enumerate(HOSTILE)}
    repeated = trade_lines[10]  # the same frame twice, as a reconnect's overlap would record it
    mixed: list[bytes] = []
    for number, line in enumerate(lines):
        mixed += [line, *([after[number]] if number in after else []), *([line] if number == repeated else [])]
    assert len(mixed) == len(lines) + len(HOSTILE) + 1
    hostile = tmp_path / "hostile.raw"
    hostile.write_bytes(b"\n".join(mixed) + b"\n")

    data_dir = tmp_path / "run"
    result = subprocess.run([*PULSE, "demo", "--input", str(hostile), "--speed", "max", "--no-live-view",
                             "--data-dir", str(data_dir)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
                            env=pulse_env(**on_broker(kafka.bootstrap)))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Traceback" not in output

    reference = reference_windows(trades_from_recording(path))
    trades = sum(window.trade_count for window in reference.values())
    assert f"trades in:        {trades} (published {trades + len(HOSTILE)}, dead-lettered {len(HOSTILE)}" in output
    reasons = dict((reason, int(count)) for count, reason in re.findall(r"^  (\d+) x (.+)$", output, re.MULTILINE))
    for _, head in HOSTILE:
        assert any(reason.startswith(head) or head in reason for reason in reasons), (head, reasons)
    assert sum(reasons.values()) == len(HOSTILE)
    assert_windows_match(pulse_sql(data_dir, WINDOWS_SQL), reference)
