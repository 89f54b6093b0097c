"""Other venues' real recordings (../shared/data/venues: recorded by the cryptofeed project, Bryant
Moscon, XFree86 1.1) through the real broker, Spark and chDB: every window equals the independent
reference, which applies each venue's side rule and contract values itself.

No recording of Bybit v5, Coinbase Advanced Trade or Binance COIN-M is at hand: their replays are
real trades of the other recordings in those venues' frames, as their doubles send them."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from tests.integration.test_cli import PULSE, run, sql_rows
from tests.support.binance_double import COINM_NAMES, agg_trades_from_recording, coinm_contract_usd, relabel
from tests.support.names import on_broker
from tests.support.recordings import SPOT_RAW, USDM_RAW, recording
from tests.support.reference import RefTrade, assert_windows_match, reference_windows
from tests.support.venue_double import write_recording
from tests.support.venue_reference import (
    BINANCE_US,
    COINBASE,
    OKX,
    OKX_INSTRUMENTS,
    binance_us_trades,
    bybit_tape,
    coinbase_tape,
    coinbase_trades,
    kraken_tape,
    okx_trades,
    tape_trades,
    venue_recording,
)

pytestmark = pytest.mark.integration


def test_pulse_demo_of_okx_swaps_futures_and_spot_matches_the_reference(tmp_path, kafka):
    """The acceptance path: `pulse demo --input F --venue okx --instruments I`. Inverse contracts (a
    delivery future, a perpetual swap) become base units with each instrument's contract value."""
    data_dir = tmp_path / "okx"
    path, instruments = venue_recording(OKX), venue_recording(OKX_INSTRUMENTS)
    result = run(PULSE, "demo", "--input", str(path), "--venue", "okx", "--instruments", str(instruments),
                 "--speed", "max", "--data-dir", str(data_dir), "--no-live-view", env=on_broker(kafka.bootstrap))
    trades = okx_trades(path, instruments)
    reference = reference_windows(trades)
    assert f"trades in:        {len(trades)} (published {len(trades)}, dead-lettered 0" in result.stdout
    rows = sql_rows(data_dir, "SELECT *, toUnixTimestamp64Milli(window_start) AS window_start_ms"
                              " FROM pulse_metrics FINAL")
    assert {r["venue"] for r in rows} == {"okx"}
    assert {r["symbol"] for r in rows} == {"BTC-USD-220527", "UNI-USD-SWAP", "BTC-USDT"}
    assert_windows_match(rows, reference)


@pytest.mark.parametrize(("name", "venue", "read"), [
    (COINBASE, "coinbase", coinbase_trades),
    (BINANCE_US, "binance-us", binance_us_trades),
])
def test_pulse_demo_of_each_venue_matches_the_reference(tmp_path, kafka, name, venue, read):
    """`pulse demo --input F --venue V` on Coinbase's Exchange-feed matches (the maker's side, snapshot
    `last_match` trades counted once) and Binance.US's aggTrades."""
    data_dir, path = tmp_path / venue, venue_recording(name)
    result = run(PULSE, "demo", "--input", str(path), "--venue", venue, "--speed", "max", "--data-dir",
                 str(data_dir), "--no-live-view", env=on_broker(kafka.bootstrap))
    trades = read(path)
    assert f"trades in:        {len(trades)} (published {len(trades)}, dead-lettered 0" in result.stdout
    rows = sql_rows(data_dir, "SELECT *, toUnixTimestamp64Milli(window_start) AS window_start_ms"
                              " FROM pulse_metrics FINAL")
    assert {r["venue"] for r in rows} == {venue}
    assert_windows_match(rows, reference_windows(trades))


def _coinm(folder: Path) -> tuple[Path, Path, list[RefTrade]]:
    """The USD-M recording's trades under COIN-M names, their `q` as contracts, and an exchangeInfo
    reply with each contract's size; the reference's base quantity is q x contractSize / p."""
    tape = relabel(agg_trades_from_recording(recording(USDM_RAW)), COINM_NAMES)
    frames = folder / "coinm.raw"
    frames.write_text("".join(f"{p['T'] / 1000 + 0.005:.3f}: "
                              f"{json.dumps({'stream': p['s'].lower() + '@aggTrade', 'data': p})}\n" for p in tape))
    info = folder / "coinm-exchangeinfo.json"
    info.write_text(json.dumps({"timezone": "UTC", "symbols": [
        {"symbol": s, "contractStatus": "TRADING", "contractSize": coinm_contract_usd(s)}
        for s in COINM_NAMES.values()]}))
    trades = [RefTrade(p["s"], p["a"], Decimal(p["p"]), Decimal(p["q"]) * coinm_contract_usd(p["s"]) / Decimal(p["p"]),
                       p["T"], p["m"]) for p in tape]
    return frames, info, trades


@pytest.mark.parametrize("venue", ["bybit-linear", "bybit-spot", "coinbase", "binance-coinm", "kraken"])
def test_pulse_demo_of_the_venues_without_a_recording_matches_the_reference(tmp_path, kafka, venue):
    """Bybit's linear UUID ids (open and close follow time), Bybit spot, Coinbase Advanced Trade's
    `market_trades` (its snapshot trade sent again as an update counts once), COIN-M contracts, and
    Kraken v2 (`BTC/USD` names, numbers for price and size, a snapshot trade and heartbeats)."""
    instruments: list[str] = []
    if venue == "binance-coinm":
        path, info, trades = _coinm(tmp_path)
        instruments = ["--instruments", str(info)]
    else:
        tape = (coinbase_tape(venue_recording(COINBASE)) if venue == "coinbase"
                else kraken_tape(venue_recording(COINBASE)) if venue == "kraken"
                else bybit_tape(recording(SPOT_RAW), {"BTCUSDT", "DOTUSDT"}, uuids=venue == "bybit-linear"))
        path = tmp_path / f"{venue}.raw"
        write_recording(venue, tape, path)
        trades = tape_trades(tape)
    data_dir = tmp_path / "data"
    result = run(PULSE, "demo", "--input", str(path), "--venue", venue, *instruments, "--speed", "max",
                 "--data-dir", str(data_dir), "--no-live-view", env=on_broker(kafka.bootstrap))
    assert f"trades in:        {len(trades)} (published {len(trades)}, dead-lettered 0" in result.stdout
    rows = sql_rows(data_dir, "SELECT *, toUnixTimestamp64Milli(window_start) AS window_start_ms"
                              " FROM pulse_metrics FINAL")
    assert {r["venue"] for r in rows} == {venue}
    assert_windows_match(rows, reference_windows(trades))
