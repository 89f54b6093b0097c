"""Other venues' real recordings (../shared/data/venues: recorded by the cryptofeed project, Bryant
Moscon, XFree86 1.1) through the real broker, Spark and chDB: every window equals the independent
reference, which applies each venue's side rule and contract values itself."""

from __future__ import annotations

import pytest

from tests.integration.test_cli import PULSE, run, sql_rows
from tests.support.reference import assert_windows_match, reference_windows
from tests.support.venue_reference import (
    BINANCE_US,
    COINBASE,
    OKX,
    OKX_INSTRUMENTS,
    binance_us_trades,
    coinbase_trades,
    okx_trades,
    venue_recording,
)

pytestmark = pytest.mark.integration


def test_pulse_demo_of_okx_swaps_futures_and_spot_matches_the_reference(tmp_path):
    """The acceptance path: `pulse demo --input F --venue okx --instruments I`. Inverse contracts (a
    delivery future, a perpetual swap) become base units with each instrument's contract value."""
    data_dir = tmp_path / "okx"
    path, instruments = venue_recording(OKX), venue_recording(OKX_INSTRUMENTS)
    result = run(PULSE, "demo", "--input", str(path), "--venue", "okx", "--instruments", str(instruments),
                 "--speed", "max", "--data-dir", str(data_dir), "--no-live-view")
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
def test_pulse_demo_of_each_venue_matches_the_reference(tmp_path, name, venue, read):
    """`pulse demo --input F --venue V` on Coinbase's Exchange-feed matches (the maker's side, snapshot
    `last_match` trades counted once) and Binance.US's aggTrades."""
    data_dir, path = tmp_path / venue, venue_recording(name)
    result = run(PULSE, "demo", "--input", str(path), "--venue", venue, "--speed", "max", "--data-dir",
                 str(data_dir), "--no-live-view")
    trades = read(path)
    assert f"trades in:        {len(trades)} (published {len(trades)}, dead-lettered 0" in result.stdout
    rows = sql_rows(data_dir, "SELECT *, toUnixTimestamp64Milli(window_start) AS window_start_ms"
                              " FROM pulse_metrics FINAL")
    assert {r["venue"] for r in rows} == {venue}
    assert_windows_match(rows, reference_windows(trades))
