"""Replay formats: recorder prefix, envelopes, bare payloads, archive CSV (header or not, ms or µs)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from pulse.model import DeadLetter, GapEvent, Trade
from pulse.source.binance.wire import InvalidFrame, NotATrade, decode_frame
from pulse.source.replay import RecentIds, ReplayFormatError, ReplaySource, ReplayStats, read_replay_frames
from tests.support.recordings import ARCHIVE_CSV, SPOT_RAW, USDM_RAW, recording

AGG = {"e": "aggTrade", "E": 1617647797500, "a": 7, "s": "BTCUSDT", "p": "100.5", "q": "0.25", "f": 1, "l": 2,
       "T": 1617647797000, "m": False}


def trades_of(path: Path, symbol: str | None = None, stats: ReplayStats | None = None) -> list[Any]:
    trades, invalid = [], []
    for replay_frame in read_replay_frames(path, symbol, stats):
        if replay_frame.invalid_reason:
            invalid.append(replay_frame.invalid_reason)
            continue
        try:
            trades.append(decode_frame(replay_frame.text, symbol))
        except NotATrade:
            continue
        except InvalidFrame as error:
            invalid.append(error.reason)
    return trades if not invalid else [*trades, *invalid]


def test_every_json_shape_is_read(tmp_path):
    path = tmp_path / "mixed.jsonl"
    lines = [
        json.dumps(AGG),
        "1617647798.37: " + json.dumps({"stream": "btcusdt@aggTrade", "data": {**AGG, "a": 8}}),
        "1617647798.38: " + json.dumps({"stream": "btcusdt@depth@100ms", "data": {"e": "depthUpdate"}}),
        "configuration: {\"trades\": []}",
        "wss://fstream.binance.com/stream?streams=btcusdt@aggTrade <-> 1617647796.76969",
        "",
        json.dumps({"stream": "btcusdt@aggTrade", "data": {**AGG, "a": 9}}),
    ]
    path.write_text("\n".join(lines) + "\n")
    stats = ReplayStats()
    trades = trades_of(path, stats=stats)
    assert [t.a for t in trades] == [7, 8, 9]
    assert stats.skipped_lines == 3


@pytest.mark.parametrize("header", [True, False])
@pytest.mark.parametrize("unit", ["ms", "us"])
def test_archive_csv_with_or_without_header_in_ms_or_us(tmp_path, header, unit):
    scale = 1000 if unit == "us" else 1
    rows = [f"100,87648.21,0.08185,500,501,{1767225600039 * scale},True,True",
            f"101,87648.22,0.00013,502,502,{1767225600272 * scale},False,True"]
    if header:
        rows.insert(0, "agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,is_buyer_maker,"
                       "is_best_match")
    path = tmp_path / "archive.csv"
    path.write_text("\n".join(rows) + "\n")
    trades = trades_of(path, "BTCUSDT")
    assert [(t.a, t.T, t.m, t.p, t.s) for t in trades] == [
        (100, 1767225600039, True, "87648.21", "BTCUSDT"), (101, 1767225600272, False, "87648.22", "BTCUSDT")]


def test_csv_without_symbol_says_what_to_do(tmp_path):
    path = tmp_path / "archive.csv"
    path.write_text("100,1.0,1.0,1,1,1767225600039,True,True\n")
    with pytest.raises(ReplayFormatError, match="--symbol"):
        list(read_replay_frames(path, None))


def test_malformed_lines_are_reported_not_fatal(tmp_path):
    path = tmp_path / "bad.raw"
    path.write_text("\n".join([
        "1.0: {\"e\": \"aggTrade\", truncated",
        json.dumps({**AGG, "p": "-1"}),
        json.dumps(AGG),
    ]) + "\n")
    results = trades_of(path)
    assert [r.a for r in results if not isinstance(r, str)] == [7]
    reasons = [r for r in results if isinstance(r, str)]
    assert len(reasons) == 2
    assert any("not JSON" in r for r in reasons) and any("field 'p'" in r for r in reasons)


def test_malformed_csv_rows_become_invalid_frames(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("100,1.0,1.0,1,1,notatime,True,True\n101,1.0\n102,1.0,1.0,1,1,1767225600039,maybe,True\n")
    reasons = [f.invalid_reason for f in read_replay_frames(path, "BTCUSDT")]
    assert all(reasons) and len(reasons) == 3


@pytest.mark.parametrize(("name", "symbol", "counts"), [
    (USDM_RAW, None, {"NEOUSDT", "SANDUSDT", "CTKUSDT", "BATUSDT", "CHRUSDT"}),
    (SPOT_RAW, None, {"BTCUSDT": 1227, "ETHUSDT": 506, "DOTUSDT": 177}),
    (ARCHIVE_CSV, "BTCUSDT", {"BTCUSDT": 5000}),
])
def test_real_recordings_yield_their_documented_trades(name, symbol, counts):
    trades = trades_of(recording(name), symbol)
    assert all(not isinstance(t, str) for t in trades), "a real recording produced an invalid frame"
    by_symbol: dict[str, list[int]] = {}
    for trade in trades:
        by_symbol.setdefault(trade.s, []).append(trade.a)
    if isinstance(counts, dict):
        assert {s: len(ids) for s, ids in by_symbol.items()} == counts
    else:
        assert set(by_symbol) == counts and len(trades) == 574
    for ids in by_symbol.values():  # the recordings' README: ids run without gaps per symbol
        assert sorted(ids) == list(range(min(ids), max(ids) + 1))


class Collected:
    """The sources' output, kept in lists (what the producer's router would encode and enqueue)."""

    def __init__(self) -> None:
        self.trades: list[Trade] = []
        self.dead_letters: list[DeadLetter] = []
        self.gaps: list[GapEvent] = []

    def trade(self, trade: Trade) -> None:
        self.trades.append(trade)

    def dead_letter(self, letter: DeadLetter) -> None:
        self.dead_letters.append(letter)

    def gap(self, event: GapEvent) -> None:
        self.gaps.append(event)

    async def room(self) -> None:
        return None


def _replay(source: ReplaySource) -> Collected:
    async def scenario() -> Collected:
        out = Collected()
        await source.setup()
        await source.run(out, asyncio.Event())
        await source.stop()
        return out

    return asyncio.run(scenario())


def test_replay_source_emits_trades_and_dead_letters_and_paces_by_trade_time(tmp_path):
    path = tmp_path / "paced.jsonl"
    path.write_text("\n".join([json.dumps({**AGG, "a": 1, "T": 1617647797000}), '{"e": truncated',
                               json.dumps({**AGG, "a": 2, "T": 1617647797400})]) + "\n")
    started = time.monotonic()
    out = _replay(ReplaySource(path, speed=2.0))
    assert time.monotonic() - started >= 0.2 - 0.02, "400 ms of trade time at 2x must take ~200 ms"
    assert [t.agg_trade_id for t in out.trades] == [1, 2]
    assert [(d.raw, d.source) for d in out.dead_letters] == [('{"e": truncated', "replay:paced.jsonl")]
    assert "not JSON" in out.dead_letters[0].reason


def test_quarterly_and_coin_m_contract_symbols_are_binance_symbols(tmp_path):
    path = tmp_path / "quarterly.csv"
    path.write_text("100,87648.21,0.08185,500,501,1767225600039,True,True\n")
    for symbol in ("BTCUSDT_260327", "BTCUSD_PERP", "ETHUSD_260327"):
        out = _replay(ReplaySource(path, symbol, None))
        assert [t.symbol for t in out.trades] == [symbol] and not out.dead_letters


def test_a_missing_recording_fails_at_setup(tmp_path):
    with pytest.raises(FileNotFoundError, match="no recording"):
        asyncio.run(ReplaySource(tmp_path / "absent.raw").setup())


def test_a_repeated_aggregate_id_is_replayed_once_as_live_would_pass_it(tmp_path):
    path = tmp_path / "repeats.jsonl"
    frames = [json.dumps({**AGG, "a": a, "s": s}) for a, s in
              [(1, "BTCUSDT"), (2, "BTCUSDT"), (1, "BTCUSDT"), (1, "ETHUSDT"), (3, "BTCUSDT"), (2, "BTCUSDT")]]
    path.write_text("\n".join(frames) + "\n")
    source = ReplaySource(path)
    out = _replay(source)
    assert [(t.symbol, t.agg_trade_id) for t in out.trades] == [("BTCUSDT", 1), ("BTCUSDT", 2), ("ETHUSDT", 1),
                                                                ("BTCUSDT", 3)]
    assert source.telemetry().counters["duplicates"] == 2 and not out.dead_letters


def test_recent_ids_forget_only_ids_far_below_the_highest():
    ids = RecentIds(window=10)
    assert all(ids.first("X", i) for i in range(100))
    assert not ids.first("X", 99) and not ids.first("X", 91)
    assert ids.first("Y", 99)
