"""An independent computation of `pulse_signal_quality`, from reference windows.

Like `reference.py`, it imports nothing from `pulse`: it applies the definitions of the trader's-view
issue to the windows of `reference_windows` in plain Python. Prices are the closes as ClickHouse
stores them (Float64), turned into Decimal exactly, so which price is the forward one, whether a
move is a hit and how many windows count are decided without rounding; only the mean return is a
(60-digit) Decimal division.

For a window w of a symbol with close c and end e, and a horizon h:
- forward price = close of the symbol's latest window with end <= e + h (w itself if none);
- forward return = (forward / c - 1) x 10 000 bps;
- w counts for h only if the symbol has a window with end >= e + h;
- STRONG BUY and ACCUMULATING point up, STRONG SELL and DISTRIBUTING down, NEUTRAL nowhere;
- a hit is a strictly positive return for up, strictly negative for down.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal, localcontext

from tests.support.reference import RefWindow

HORIZONS_S = (5, 30, 60)
UP = frozenset({"STRONG BUY", "ACCUMULATING"})
DOWN = frozenset({"STRONG SELL", "DISTRIBUTING"})
_PRECISION = 60


@dataclass(frozen=True)
class RefOutcome:
    """What followed one window, for one horizon."""

    symbol: str
    window_start_ms: int
    signal: str
    horizon_s: int
    close: Decimal
    forward_price: Decimal
    forward_start_ms: int  # the window whose close is the forward price
    return_bps: Decimal
    hit: bool | None  # None: the signal has no direction


@dataclass(frozen=True)
class RefQuality:
    symbol: str
    signal: str
    horizon_s: int
    signals: int
    hits: int | None
    mean_return_bps: Decimal

    @property
    def hit_rate_pct(self) -> Decimal | None:
        if self.hits is None:
            return None
        with localcontext() as context:
            context.prec = _PRECISION
            return 100 * Decimal(self.hits) / self.signals


def _hit(signal: str, close: Decimal, forward: Decimal) -> bool | None:
    if signal in UP:
        return forward > close
    if signal in DOWN:
        return forward < close
    return None


def reference_outcomes(windows: Iterable[RefWindow], window_ms: int = 1000,
                       horizons_s: Iterable[int] = HORIZONS_S) -> list[RefOutcome]:
    """One outcome per window and horizon that counts, ordered by symbol, window and horizon."""
    by_symbol: dict[str, list[RefWindow]] = defaultdict(list)
    for window in windows:
        by_symbol[window.symbol].append(window)
    outcomes = []
    for symbol in sorted(by_symbol):
        ordered = sorted(by_symbol[symbol], key=lambda w: w.window_start_ms)
        ends = [w.window_start_ms + window_ms for w in ordered]
        if len(set(ends)) != len(ends):
            raise ValueError(f"{symbol}: two windows end at the same time")
        for window, end in zip(ordered, ends, strict=True):
            for horizon in horizons_s:
                target = end + 1000 * horizon
                if ends[-1] < target:
                    continue  # the symbol's data does not reach e + h: the outcome is unknown
                forward = ordered[bisect.bisect_right(ends, target) - 1]
                close, forward_price = Decimal(window.close), Decimal(forward.close)
                with localcontext() as context:
                    context.prec = _PRECISION
                    return_bps = (forward_price / close - 1) * 10000
                outcomes.append(RefOutcome(symbol, window.window_start_ms, window.signal, horizon, close,
                                           forward_price, forward.window_start_ms, return_bps,
                                           _hit(window.signal, close, forward_price)))
    return outcomes


def reference_signal_quality(outcomes: Iterable[RefOutcome]) -> dict[tuple[str, str, int], RefQuality]:
    """Per (symbol, signal, horizon_s): the rows `pulse_signal_quality` must hold, keyed the same way."""
    groups: dict[tuple[str, str, int], list[RefOutcome]] = defaultdict(list)
    for outcome in outcomes:
        groups[(outcome.symbol, outcome.signal, outcome.horizon_s)].append(outcome)
    quality = {}
    for key, group in groups.items():
        directed = group[0].hit is not None
        with localcontext() as context:
            context.prec = _PRECISION
            mean = sum((o.return_bps for o in group), Decimal(0)) / len(group)
        quality[key] = RefQuality(*key, signals=len(group),
                                  hits=sum(1 for o in group if o.hit) if directed else None,
                                  mean_return_bps=mean)
    return quality
