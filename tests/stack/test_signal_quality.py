"""pulse_signal_quality (and the per-window pulse_signal_outcomes under it) against an independent
computation, over real recordings: every row, every horizon, exactly.

Windows come from the decimal reference (tests/support/reference.py) over each recording and are
written to pulse_metrics as the job writes them, with an older version of a third of them (other
close, other signal) written before and after the newest, so a view that read anything but the
newest version of each window would count and price the wrong rows. The expected rows come from
tests/support/signal_quality.py, which imports nothing from pulse.

The recordings cover what the definition has to get right: symbols with gaps of up to 16 s (the
forward price then comes from an earlier window, or the window itself), the last seconds of each
recording (excluded per symbol and horizon), and one symbol with a 90-second hole cut into it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from pulse.storage.clickhouse import ChdbTransport
from tests.support.metrics_rows import arrow_table, metrics_row, utc
from tests.support.recordings import ARCHIVE_CSV, SPOT_RAW, USDM_RAW, recording
from tests.support.reference import RefWindow, reference_windows, trades_from_recording
from tests.support.signal_quality import HORIZONS_S, RefOutcome, reference_outcomes, reference_signal_quality

pytestmark = pytest.mark.integration

COLUMNS = ["symbol", "signal", "horizon_s", "signals", "mean_return_bps", "hit_rate_pct"]
SIGNALS = ("STRONG BUY", "ACCUMULATING", "NEUTRAL", "DISTRIBUTING", "STRONG SELL")
HOLE_S = (200, 290)  # seconds after the archive's first window: cut out, a gap longer than every horizon


def _windows(name: str, symbol: str | None = None) -> dict[tuple[str, int], RefWindow]:
    return reference_windows(trades_from_recording(recording(name), symbol))


def _with_hole(windows: dict[tuple[str, int], RefWindow]) -> dict[tuple[str, int], RefWindow]:
    first = min(ms for _, ms in windows)
    return {key: w for key, w in windows.items()
            if not first + 1000 * HOLE_S[0] <= w.window_start_ms < first + 1000 * HOLE_S[1]}


RECORDINGS: dict[str, Callable[[], dict[tuple[str, int], RefWindow]]] = {
    "usdm": lambda: _windows(USDM_RAW),
    "spot": lambda: _windows(SPOT_RAW),
    "archive": lambda: _windows(ARCHIVE_CSV, "BTCUSDT"),
    "archive-with-hole": lambda: _with_hole(_windows(ARCHIVE_CSV, "BTCUSDT")),
}


def _stale(w: RefWindow) -> RefWindow:
    """An earlier write of the window: before late trades moved its close and flipped its signal."""
    return replace(w, close=w.close * 1.01 + 1, trade_count=1,
                   signal=SIGNALS[(SIGNALS.index(w.signal) + 1) % len(SIGNALS)])


def _write(database: ChdbTransport, windows: dict[tuple[str, int], RefWindow]) -> None:
    ordered = sorted(windows.values(), key=lambda w: (w.window_start_ms, w.symbol))
    stale = ordered[::3]
    written = [(w, utc(w.window_start_ms + 1000) + timedelta(milliseconds=250)) for w in ordered]
    # Older versions both before and after the newest, in separate parts: only `version` decides.
    database.insert_arrow("pulse_metrics", arrow_table([metrics_row(_stale(w), 1, at) for w, at in written[::6]]))
    database.insert_arrow("pulse_metrics", arrow_table([metrics_row(w, 2, at) for w, at in written]))
    database.insert_arrow("pulse_metrics", arrow_table([metrics_row(_stale(w), 1, at) for w, at in written[3::6]]))
    rows = database.query_arrow("SELECT count() AS all_rows, uniqExact(symbol, window_start) AS windows "
                                "FROM pulse_metrics").to_pylist()
    assert rows == [{"all_rows": len(ordered) + len(stale), "windows": len(ordered)}]


@pytest.fixture(params=sorted(RECORDINGS))
def case(request: pytest.FixtureRequest, database: ChdbTransport) -> tuple[ChdbTransport, list[RefOutcome]]:
    windows = RECORDINGS[request.param]()
    _write(database, windows)
    return database, reference_outcomes(windows.values())


def test_every_row_of_pulse_signal_quality_matches_the_reference(
        case: tuple[ChdbTransport, list[RefOutcome]]) -> None:
    database, outcomes = case
    expected = reference_signal_quality(outcomes)
    table = database.query_arrow("SELECT * FROM pulse_signal_quality")
    assert table.column_names == COLUMNS
    rows = table.to_pylist()
    got = {(r["symbol"], r["signal"], r["horizon_s"]): r for r in rows}
    assert len(got) == len(rows), "one row per symbol, signal and horizon"
    assert set(got) == set(expected)
    assert {key[2] for key in got} == set(HORIZONS_S)
    for key, ref in expected.items():
        row = got[key]
        assert row["signals"] == ref.signals, key
        assert row["mean_return_bps"] == pytest.approx(float(ref.mean_return_bps), rel=1e-9, abs=1e-9), key
        if ref.hits is None:
            assert row["hit_rate_pct"] is None, key
        else:
            assert row["hit_rate_pct"] == pytest.approx(float(ref.hit_rate_pct or 0), rel=1e-12, abs=1e-12), key
            # The rate is hits / signals: the number of hits it stands for is exact too.
            assert round(row["hit_rate_pct"] * row["signals"] / 100) == ref.hits, key


def test_every_window_and_horizon_has_the_reference_outcome(case: tuple[ChdbTransport, list[RefOutcome]]) -> None:
    database, outcomes = case
    rows = database.query_arrow(
        "SELECT symbol, toUnixTimestamp64Milli(window_start) AS start_ms, horizon_s, signal, close, forward_price, "
        "forward_return_bps, direction, hit FROM pulse_signal_outcomes").to_pylist()
    got: dict[tuple[str, int, int], dict[str, Any]] = {(r["symbol"], r["start_ms"], r["horizon_s"]): r for r in rows}
    assert len(got) == len(rows)
    expected = {(o.symbol, o.window_start_ms, o.horizon_s): o for o in outcomes}
    assert set(got) == set(expected)
    for key, ref in expected.items():
        row = got[key]
        assert (row["signal"], row["close"], row["forward_price"]) == (ref.signal, ref.close, ref.forward_price), key
        assert row["forward_return_bps"] == pytest.approx(float(ref.return_bps), rel=1e-9, abs=1e-9), key
        assert row["hit"] == (None if ref.hit is None else int(ref.hit)), key
        assert row["direction"] == (0 if ref.hit is None else 1 if ref.signal in SIGNALS[:2] else -1), key


@pytest.mark.parametrize("name", sorted(RECORDINGS))
def test_the_recordings_exercise_gaps_and_the_end_of_the_data(name: str) -> None:
    """What the comparisons above cover, stated: without it they could pass on easy data."""
    windows = RECORDINGS[name]()
    outcomes = reference_outcomes(windows.values())
    counted = {h: sum(1 for o in outcomes if o.horizon_s == h) for h in HORIZONS_S}
    # The last seconds of every symbol are left out, more of them the longer the horizon.
    assert len(windows) > counted[5] > counted[30] > counted[60] > 0
    last = {s: max(ms for sym, ms in windows if sym == s) for s, _ in windows}
    for o in outcomes:
        assert o.window_start_ms + 1000 + 1000 * o.horizon_s <= last[o.symbol] + 1000
    # Directed signals in every horizon, hits and misses among them.
    assert {o.horizon_s for o in outcomes if o.hit} == set(HORIZONS_S)
    assert {o.horizon_s for o in outcomes if o.hit is False} == set(HORIZONS_S)
    # Quiet stretches: no other window within the horizon, so the forward price is the window's own close.
    quiet = [o for o in outcomes if o.forward_start_ms == o.window_start_ms]
    if name == "usdm":
        assert {o.horizon_s for o in quiet} == {5}
    if name == "archive-with-hole":
        assert {o.horizon_s for o in quiet} == set(HORIZONS_S)
