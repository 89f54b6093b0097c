"""The dashboard's pure parts: numbers fitted to their columns, a frame that fits 80 columns
whatever the symbols, CVD kept exactly while windows are rewritten, the plain progress line."""

from __future__ import annotations

import logging
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from pulse.dashboard import BoardState, SymbolState, WarningCount, asset_rows, compact, plain_line, render

SIGNALS = ["STRONG BUY", "ACCUMULATING", "NEUTRAL", "DISTRIBUTING", "STRONG SELL"]


# Up to ~1e14: prices, volumes and deltas of any Binance symbol, with room to spare.
@given(st.floats(min_value=-9e13, max_value=9e13, allow_nan=False), st.integers(min_value=5, max_value=10),
       st.booleans())
def test_compact_numbers_never_exceed_their_width(value, width, signed):
    text = compact(value, width, signed)
    assert len(text) <= width, (value, width, text)
    assert "#" not in text


def test_compact_keeps_what_fits_and_shortens_the_rest():
    assert compact(87648.21, 8) == "87648.21"
    assert compact(0.69067, 8) == "0.69067"
    assert compact(2950.5, 8) == "2950.5"
    assert compact(-12345.678, 7, signed=True) == "-12346"
    assert compact(3.2, 7, signed=True) == "+3.2"
    assert compact(123456789.0, 8) == "123457k"
    assert compact(None, 8) == "-"


def _row(window_start: int, net_delta: float, signal: str = "NEUTRAL", price: float = 100.0) -> dict[str, object]:
    return {"ws": window_start, "close": price, "vwap": price, "net_delta": net_delta, "buy": 50.0, "signal": signal}


def test_cvd_counts_each_window_once_however_often_it_is_rewritten():
    state = SymbolState("BTCUSDT")
    state.apply(_row(1000, 2.0), 1.0)
    state.apply(_row(2000, -1.0), 1.0)
    state.apply(_row(1000, 5.0), 2.0)  # a late trade rewrote window 1000: replaced, not added
    assert state.cvd == 4.0 and state.windows == 2
    assert state.window_start_ms == 2000 and state.net_delta == -1.0, "an older window never becomes the newest"
    # Hours later: old windows are folded into the base, the sum and count stay exact.
    state.apply(_row(10_000_000, 0.5), 3.0)
    assert state.cvd == 4.5 and state.windows == 3
    assert list(state.recent_deltas) == [10_000_000]


def _busy_board(symbols: int) -> BoardState:
    board = BoardState(title="Pulse live · Binance USD-M futures · many symbols", live=True)
    for i in range(symbols):
        real = ["BTCUSDT_260327", "1000PEPEUSDT", "ETHUSD_260327", "BTCUSD_PERP"]
        name = real[i] if i < len(real) else f"S{i:02d}USDT_260327"
        state = board.symbol(name)
        state.apply(_row(1000 * i, (-1) ** i * 123456.789 * i, SIGNALS[i % 5], 87648.21 / (i + 1)), 1.0)
        state.trades_per_s = 1234.5 / (i + 1)
    board.windows, board.producer_rate, board.dropped, board.gaps, board.dead_letters = 123456, 54321.0, 7, 3, 12
    board.batch_ms, board.freshness_p50_ms = 1234, 987.0
    board.warnings, board.log_path = 2, Path(".pulse/logs/pulse.log")
    board.problem = "Binance rate-limits this IP (HTTP 429): wait before reconnecting, and open fewer connections"
    return board


def _screen(board: BoardState, height: int) -> list[str]:
    console = Console(width=80, height=height, record=True, force_terminal=True, color_system=None)
    console.print(render(board, now=2.5, height=height, width=80))
    return console.export_text().splitlines()


def test_a_frame_fits_80_columns_and_the_terminal_height():
    board = _busy_board(40)
    lines = _screen(board, 24)
    assert max(len(line) for line in lines) <= 80
    assert len(lines) <= 23, "one row stays free for the cursor"
    assert any("more symbols" in line for line in lines), "what does not fit is counted, not cut silently"
    shown = [line for line in lines if line.split(" ")[0] in board.symbols]
    assert len(shown) == 24 - 3 - 5 - 1
    assert shown[0].startswith("BTCUSDT_260327 "), "the busiest symbol comes first"
    for signal in SIGNALS:
        assert any(signal in line for line in shown)
    assert any("2 warnings logged: see .pulse/logs/pulse.log" in line for line in lines)
    assert any("HTTP 429" in line for line in lines)


def test_a_small_board_shows_every_symbol_with_its_numbers():
    board = BoardState(title="Pulse demo", live=False)
    board.symbol("BTCUSDT").apply(_row(1000, 1.5, "STRONG BUY", 87648.21), 1.0)
    board.symbol("ETHUSDT")  # subscribed, no window yet
    lines = _screen(board, 24)
    btc = next(line for line in lines if line.startswith("BTCUSDT"))
    assert "87648.21" in btc and "STRONG BUY" in btc and "+1.5" in btc
    assert any(line.startswith("ETHUSDT") and line.rstrip().endswith("-") for line in lines)
    assert "read → visible" in "\n".join(lines), "a replay's freshness is measured from reading, not trade time"


def test_the_plain_line_names_the_busiest_symbols_and_the_health():
    line = plain_line(_busy_board(10))
    assert line.count("|") == 2 and "(+7 more)" in line
    assert "dead letters 12" in line and "dropped 7" in line and "HTTP 429" in line
    assert "no windows yet" in plain_line(BoardState(title="x", live=True))


def test_warning_count_counts_warnings_and_worse():
    counter = WarningCount(Path("pulse.log"))
    logger = logging.getLogger("pulse.test_dashboard")
    logger.addHandler(counter)
    try:
        logger.warning("one")
        logger.error("two")
        logger.info("not this")
    finally:
        logger.removeHandler(counter)
    assert counter.count == 2


def _venue_row(venue: str, symbol: str, asset: str, quote: str, vwap: float, volume: float, buy_volume: float,
               net_delta: float, window_start: int = 1000) -> dict[str, object]:
    return {"venue": venue, "symbol": symbol, "asset": asset, "quote": quote, "ws": window_start, "close": vwap,
            "vwap": vwap, "net_delta": net_delta, "buy": 100 * buy_volume / volume, "volume": volume,
            "buy_volume": buy_volume, "signal": "NEUTRAL"}


def _venues_board() -> BoardState:
    board = BoardState(title="Pulse live · OKX + Coinbase + Binance.US spot", live=True, by_venue=True)
    for row, seen, rate_ in [(_venue_row("okx", "BTC-USDT", "BTC", "USDT", 100_000.0, 3.0, 2.0, 1.0), 1.0, 30.0),
                             (_venue_row("coinbase", "BTC-USD", "BTC", "USD", 100_050.0, 1.0, 0.25, -0.5), 2.0, 10.0),
                             (_venue_row("coinbase", "ETH-EUR", "ETH", "EUR", 3_000.0, 4.0, 1.0, -2.0), 1.5, 5.0)]:
        state = board.symbol(str(row["symbol"]), str(row["venue"]))
        state.apply(row, seen)
        state.trades_per_s = rate_
    board.symbol("BTCUSDT", "binance-us")  # subscribed, no window yet
    return board


def test_several_venues_group_by_asset_with_the_usd_family_as_one_quote():
    btc, eth = asset_rows(_venues_board())
    assert (btc.name, [s.venue for s in btc.venues], eth.name) == ("BTC", ["okx", "coinbase"], "ETH/EUR")
    # By hand: (100000 x 3 + 100050 x 1) / 4; buys (2 + 0.25) / 4; the spread over the lower VWAP.
    assert btc.vwap == 100_012.5 and btc.buy_pct == 56.25 and btc.net_delta == 0.5 and btc.trades_per_s == 40.0
    assert btc.spread_bps is not None and abs(btc.spread_bps - 5.0) < 1e-9
    assert btc.last_price == 100_050.0, "the venue updated last"
    assert eth.spread_bps is None and eth.vwap == 3_000.0 and eth.buy_pct == 25.0


def test_a_board_of_several_venues_shows_each_asset_then_its_venues_in_80_columns():
    lines = _screen(_venues_board(), 24)
    assert max(len(line) for line in lines) <= 80
    body = [line for line in lines if line.startswith(("BTC", "ETH", " "))]
    heads = [line.split()[0] for line in body]
    assert heads == ["BTC", "okx", "coinbase", "ETH/EUR", "coinbase", "binance-us"], lines
    assert "100012.5" in body[0] and "spr 5.0bp" in body[0] and "+0.5" in body[0]
    assert "okx BTC-USDT " in body[1] and "coinbase BTC-USD " in body[2] and "coinbase ETH-EUR " in body[4]
    assert "binance-us BTCUSDT " in body[5] and body[5].rstrip().endswith("-")


def test_the_plain_line_of_several_venues_names_each_asset_across_them():
    line = plain_line(_venues_board())
    assert "BTC 100012.5 ×2 spr 5.0bp | ETH/EUR 3000.0 ×1 ·" in line
