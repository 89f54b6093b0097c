"""The metric and signal definitions, as pure functions over plain values.

These are the reference semantics of Pulse; `pulse.compute.columns` expresses the same rules as
Spark columns. Per symbol and 1-second window:

- vwap = Σ(p·q) / Σq;  total_volume = Σq;  trade_count = number of aggTrades;  avg_price = mean(p)
- `m = true` means the buyer is the maker, so the taker SOLD;
  net_delta = Σq(taker buy) − Σq(taker sell);  buy_pressure_pct = 100 · Σq(taker buy) / Σq
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

# Differences smaller than this share of the magnitudes are float noise, never a signal.
RELATIVE_TOLERANCE = 1e-9


class Signal(StrEnum):
    STRONG_BUY = "STRONG BUY"
    STRONG_SELL = "STRONG SELL"
    ACCUMULATING = "ACCUMULATING"
    DISTRIBUTING = "DISTRIBUTING"
    NEUTRAL = "NEUTRAL"


def _sign(difference: float, magnitude: float, deadband_rel: float) -> int:
    tolerance = max(RELATIVE_TOLERANCE, deadband_rel) * magnitude
    if difference > tolerance:
        return 1
    if difference < -tolerance:
        return -1
    return 0


def classify_signal(avg_price: float, vwap: float, buy_volume: float, sell_volume: float,
                    price_deadband_rel: float = 0.0, delta_deadband_rel: float = 0.0) -> Signal:
    """The seed's rule: price above VWAP with net buying is STRONG BUY, and so on.

    Dead bands (relative to the price, and to the window's volume) widen the NEUTRAL zone;
    0 keeps the seed's behaviour up to the float tolerance.
    """
    price = _sign(avg_price - vwap, max(abs(avg_price), abs(vwap)), price_deadband_rel)
    delta = _sign(buy_volume - sell_volume, buy_volume + sell_volume, delta_deadband_rel)
    if price > 0 and delta > 0:
        return Signal.STRONG_BUY
    if price < 0 and delta < 0:
        return Signal.STRONG_SELL
    if price < 0 and delta > 0:
        return Signal.ACCUMULATING
    if price > 0 and delta < 0:
        return Signal.DISTRIBUTING
    return Signal.NEUTRAL


@dataclass(frozen=True, slots=True)
class WindowMetrics:
    vwap: float
    net_delta: float
    buy_pressure_pct: float
    total_volume: float
    trade_count: int
    avg_price: float
    buy_volume: float
    sell_volume: float
    quote_volume: float
    signal: Signal


def window_metrics(trades: Iterable[tuple[float, float, bool]], price_deadband_rel: float = 0.0,
                   delta_deadband_rel: float = 0.0) -> WindowMetrics:
    """Metrics of one window from `(price, quantity, buyer_is_maker)` triples."""
    prices: list[float] = []
    quote_parts: list[float] = []
    buy_parts: list[float] = []
    sell_parts: list[float] = []
    for price, quantity, buyer_is_maker in trades:
        prices.append(price)
        quote_parts.append(price * quantity)
        (sell_parts if buyer_is_maker else buy_parts).append(quantity)
    if not prices:
        raise ValueError("a window needs at least one trade")
    buy_volume, sell_volume = math.fsum(buy_parts), math.fsum(sell_parts)
    total_volume = buy_volume + sell_volume
    quote_volume = math.fsum(quote_parts)
    vwap = quote_volume / total_volume
    avg_price = math.fsum(prices) / len(prices)
    return WindowMetrics(
        vwap=vwap,
        net_delta=buy_volume - sell_volume,
        buy_pressure_pct=100.0 * buy_volume / total_volume,
        total_volume=total_volume,
        trade_count=len(prices),
        avg_price=avg_price,
        buy_volume=buy_volume,
        sell_volume=sell_volume,
        quote_volume=quote_volume,
        signal=classify_signal(avg_price, vwap, buy_volume, sell_volume,
                               price_deadband_rel, delta_deadband_rel),
    )


def window_end_ms(trade_time_ms: int, window_ms: int = 1000) -> int:
    """End (exclusive) of the tumbling window holding a trade."""
    return (trade_time_ms // window_ms + 1) * window_ms


def is_late(trade_time_ms: int, late_watermark_ms: int, window_ms: int = 1000) -> bool:
    """Whether the windowed aggregation drops a trade as too late.

    Spark drops an input row of a windowed aggregation when its window's end is at or before the
    watermark that applies to late events, which is the watermark of the previous micro-batch
    (max event time seen so far minus the delay). So a trade is late exactly when its whole window
    has been closed, not when the trade itself is older than the watermark.
    """
    return window_end_ms(trade_time_ms, window_ms) <= late_watermark_ms
