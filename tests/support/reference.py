"""An independent computation of Pulse's window metrics, straight from raw recordings.

It deliberately imports nothing from `pulse`: it reads the recording files with its own parser
and applies the definitions of the foundation issue with exact decimal arithmetic, so a bug in
the code under test cannot hide in a shared helper.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from tests.support.recordings import recorded_payloads


@dataclass(frozen=True)
class RefTrade:
    symbol: str
    agg_id: int
    price: Decimal
    qty: Decimal
    time_ms: int
    buyer_maker: bool


def trades_from_recording(path: Path, symbol: str | None = None) -> list[RefTrade]:
    return [RefTrade(data["s"], int(data["a"]), Decimal(data["p"]), Decimal(data["q"]), int(data["T"]), bool(data["m"]))
            for data in recorded_payloads(path, symbol)]


@dataclass(frozen=True)
class RefWindow:
    symbol: str
    window_start_ms: int
    vwap: float
    net_delta: float
    buy_pressure_pct: float
    total_volume: float
    trade_count: int
    avg_price: float
    signal: str
    open: float
    high: float
    low: float
    close: float
    first_agg_id: int
    last_agg_id: int
    buy_volume: float = 0.0
    sell_volume: float = 0.0
    quote_volume: float = 0.0


_TOLERANCE = Decimal("1e-9")


def _compare(left: Decimal, right: Decimal, magnitude: Decimal, band: Decimal = Decimal(0)) -> int:
    """-1, 0, 1 as `left` is below, within max(1e-9, band) of `magnitude` of, or above `right`."""
    if abs(left - right) <= max(_TOLERANCE, band) * magnitude:
        return 0
    return 1 if left > right else -1


def _signal(avg: Decimal, vwap: Decimal, buy: Decimal, sell: Decimal,
            price_band: Decimal = Decimal(0), delta_band: Decimal = Decimal(0)) -> str:
    """The seed's rule; a dead band is a share of the price (avg vs VWAP) or of the volume (buy vs sell)."""
    price = _compare(avg, vwap, max(abs(avg), abs(vwap)), price_band)
    delta = _compare(buy, sell, buy + sell, delta_band)
    return {(1, 1): "STRONG BUY", (-1, -1): "STRONG SELL", (-1, 1): "ACCUMULATING",
            (1, -1): "DISTRIBUTING"}.get((price, delta), "NEUTRAL")


def reference_windows(trades: list[RefTrade], price_band: Decimal = Decimal(0),
                      delta_band: Decimal = Decimal(0)) -> dict[tuple[str, int], RefWindow]:
    groups: dict[tuple[str, int], list[RefTrade]] = defaultdict(list)
    for trade in trades:
        groups[(trade.symbol, trade.time_ms - trade.time_ms % 1000)].append(trade)
    windows = {}
    for key, group in groups.items():
        group.sort(key=lambda t: (t.time_ms, t.agg_id))  # open/close: first and last in time
        zero = Decimal(0)
        volume = sum((t.qty for t in group), zero)
        buy = sum((t.qty for t in group if not t.buyer_maker), zero)
        sell = volume - buy
        vwap = sum((t.price * t.qty for t in group), zero) / volume
        avg = sum((t.price for t in group), zero) / len(group)
        windows[key] = RefWindow(
            symbol=key[0], window_start_ms=key[1], vwap=float(vwap), net_delta=float(buy - sell),
            buy_pressure_pct=float(100 * buy / volume), total_volume=float(volume), trade_count=len(group),
            avg_price=float(avg), signal=_signal(avg, vwap, buy, sell, price_band, delta_band),
            open=float(group[0].price),
            high=float(max(t.price for t in group)), low=float(min(t.price for t in group)),
            close=float(group[-1].price), first_agg_id=min(t.agg_id for t in group),
            last_agg_id=max(t.agg_id for t in group),
            buy_volume=float(buy), sell_volume=float(sell), quote_volume=float(vwap * volume),
        )
    return windows


def is_late(trade_time_ms: int, late_watermark_ms: int, window_ms: int = 1000) -> bool:
    """Whether Spark's windowed aggregation drops a trade as too late.

    Spark drops an input row of a windowed aggregation when its window's end is at or before the
    watermark that applies to late events, which is the watermark of the previous micro-batch
    (max event time seen so far minus the delay). So a trade is late exactly when its whole window
    has been closed, not when the trade itself is older than the watermark.
    """
    return (trade_time_ms // window_ms + 1) * window_ms <= late_watermark_ms


def assert_windows_match(rows: list[dict[str, Any]], reference: dict[tuple[str, int], RefWindow]) -> None:
    """Every window of the table equals the reference's, and no window is missing or extra."""
    def close(actual: float, expected: float) -> bool:
        return math.isclose(actual, expected, rel_tol=1e-9, abs_tol=1e-9)

    # JSONEachRow (`pulse sql`) quotes 64-bit integers; Arrow does not.
    rows = [{**r, **{k: int(r[k]) for k in ("window_start_ms", "trade_count", "first_agg_trade_id",
                                           "last_agg_trade_id")}} for r in rows]
    assert {(r["symbol"], r["window_start_ms"]) for r in rows} == set(reference), "window keys differ"
    for row in rows:
        want = reference[(row["symbol"], row["window_start_ms"])]
        where = f"{row['symbol']} @ {row['window_start_ms']}"
        assert row["trade_count"] == want.trade_count, where
        assert row["signal"] == want.signal, where
        for column, expected in [("vwap", want.vwap), ("net_delta", want.net_delta),
                                 ("buy_pressure_pct", want.buy_pressure_pct), ("total_volume", want.total_volume),
                                 ("avg_price_1_sec", want.avg_price), ("open", want.open), ("high", want.high),
                                 ("low", want.low), ("close", want.close)]:
            assert close(row[column], expected), f"{where}: {column} {row[column]} != {expected}"
        assert (row["first_agg_trade_id"], row["last_agg_trade_id"]) == (want.first_agg_id, want.last_agg_id), where
