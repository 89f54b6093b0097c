"""The pure metric and signal definitions against the independent decimal reference."""

from __future__ import annotations

import math
import random
from decimal import Decimal

import pytest

from pulse.compute.metrics import Signal, classify_signal, window_metrics
from tests.support.reference import RefTrade, reference_windows


def check_against_reference(trades: list[tuple[float, float, bool]]) -> Signal:
    ours = window_metrics(trades)
    ref_trades = [RefTrade("X", i, Decimal(str(p)), Decimal(str(q)), 0, m) for i, (p, q, m) in enumerate(trades)]
    (ref,) = reference_windows(ref_trades).values()
    for name, want in [("vwap", ref.vwap), ("net_delta", ref.net_delta), ("buy_pressure_pct", ref.buy_pressure_pct),
                       ("total_volume", ref.total_volume), ("avg_price", ref.avg_price)]:
        assert math.isclose(getattr(ours, name), want, rel_tol=1e-12, abs_tol=1e-12), name
    assert ours.trade_count == ref.trade_count
    assert ours.signal.value == ref.signal
    return ours.signal


def test_definitions_on_a_hand_checked_window():
    # Taker buys 2 @ 100 (m=False), taker sells 1 @ 103 (m=True): vwap 101, avg 101.5, delta +1.
    result = window_metrics([(100.0, 2.0, False), (103.0, 1.0, True)])
    assert (result.vwap, result.avg_price, result.net_delta, result.total_volume) == (101.0, 101.5, 1.0, 3.0)
    assert result.buy_pressure_pct == pytest.approx(200 / 3)
    assert result.signal is Signal.STRONG_BUY


@pytest.mark.parametrize(("trades", "signal"), [
    ([(100.0, 2.0, False), (103.0, 1.0, True)], Signal.STRONG_BUY),      # avg > vwap, buying
    ([(100.0, 2.0, True), (103.0, 1.0, False)], Signal.DISTRIBUTING),    # avg > vwap, selling
    ([(100.0, 1.0, False), (103.0, 2.0, True)], Signal.STRONG_SELL),     # avg < vwap, selling
    ([(100.0, 1.0, True), (103.0, 2.0, False)], Signal.ACCUMULATING),    # avg < vwap, buying
    ([(0.1, 3.0, False), (0.1, 7.0, True), (0.1, 1.0, False)], Signal.NEUTRAL),  # one price: avg == vwap
    ([(100.0, 0.1, False), (101.0, 0.2, True), (102.0, 0.1, False)], Signal.NEUTRAL),  # buy == sell
])
def test_every_signal_kind(trades, signal):
    assert check_against_reference(trades) is signal


def test_float_noise_never_flips_a_signal():
    # 0.1 + 0.2 style sums make avg and vwap differ in the last bits although they are equal.
    trades = [(0.1, 0.1, False), (0.1, 0.2, False), (0.1, 0.3, True), (0.1, 0.7, False)]
    metrics = window_metrics(trades)
    assert metrics.signal is Signal.NEUTRAL
    assert classify_signal(1.0, 1.0 + 1e-15, 1.0, 0.5) is Signal.NEUTRAL
    assert classify_signal(1.0, 1.0 - 1e-6, 1.0, 0.5) is Signal.STRONG_BUY


def test_dead_bands_widen_neutral():
    assert classify_signal(100.01, 100.0, 10.0, 9.0) is Signal.STRONG_BUY
    assert classify_signal(100.01, 100.0, 10.0, 9.0, price_deadband_rel=1e-3) is Signal.NEUTRAL
    assert classify_signal(100.5, 100.0, 10.0, 9.0, price_deadband_rel=1e-3, delta_deadband_rel=0.1) is Signal.NEUTRAL
    wide = {"price_deadband_rel": 1e-3, "delta_deadband_rel": 0.1}
    assert classify_signal(100.5, 100.0, 10.0, 5.0, **wide) is Signal.STRONG_BUY


def test_random_windows_match_the_reference():
    rng = random.Random(20260101)
    for _ in range(300):
        trades = [(round(rng.uniform(10, 60000), 2), round(rng.uniform(0.001, 50), 3), rng.random() < 0.5)
                  for _ in range(rng.randint(1, 40))]
        check_against_reference(trades)


def test_empty_window_is_an_error():
    with pytest.raises(ValueError, match="at least one trade"):
        window_metrics([])
