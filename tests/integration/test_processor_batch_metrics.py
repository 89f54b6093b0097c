"""The job's Spark column expressions in batch mode, against the independent decimal reference.

The same builders the stream uses (parse -> valid trades -> window aggregates -> metrics), fed a
batch DataFrame shaped like Kafka rows, so edge cases can be placed exactly.
"""

from __future__ import annotations

import json
import math
import random
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from pulse.compute.columns import parse_messages, valid_trades, window_aggregates, window_metrics_columns
from pulse.settings import SignalSettings
from tests.support.reference import RefTrade, reference_windows
from tests.support.topic_writer import trade_message

pytestmark = pytest.mark.integration

T0 = 1_704_067_200_000


def _kafka_rows(spark: Any, trades: list[RefTrade]) -> Any:
    # Each record appended to Kafka a moment after its trade, as the producer's would be.
    rows = [(json.dumps(trade_message(t.symbol, t.agg_id, float(t.price), float(t.qty), t.time_ms,
                                      t.buyer_maker)).encode(), "t", 0, i,
             datetime.fromtimestamp((t.time_ms + 50) / 1000, UTC))
            for i, t in enumerate(trades)]
    return spark.createDataFrame(rows, "value binary, topic string, partition int, offset long, timestamp timestamp")


def _metrics(spark: Any, trades: list[RefTrade], signal: SignalSettings | None = None) -> dict[tuple[str, int], Any]:
    frame = window_metrics_columns(window_aggregates(valid_trades(parse_messages(_kafka_rows(spark, trades)))),
                                   signal or SignalSettings())
    return {(r["symbol"], int(r["window_start"].timestamp() * 1000)): r.asDict() for r in frame.collect()}


def _trade(symbol: str, agg_id: int, price: str, qty: str, offset_ms: int, buyer_maker: bool) -> RefTrade:
    return RefTrade(symbol, agg_id, Decimal(price), Decimal(qty), T0 + offset_ms, buyer_maker)


def _random_trades(seed: int) -> list[RefTrade]:
    rng = random.Random(seed)
    trades = []
    for symbol, base in (("BTCUSDT", 42_000), ("ETHUSDT", 2_300), ("DOGEUSDT", 0)):
        agg_id = rng.randrange(10**9)
        for _ in range(400):
            agg_id += rng.choice((1, 1, 1, 2))  # occasional gaps: expected > received
            price = Decimal(base) + Decimal(rng.randrange(1, 100_000)) / 10_000
            qty = Decimal(rng.randrange(1, 5_000_000)) / 1000
            trades.append(RefTrade(symbol, agg_id, price, qty, T0 + rng.randrange(8_000), rng.random() < 0.5))
    rng.shuffle(trades)  # arrival order is not id order: open/close still follow the ids
    return trades


def test_every_metric_matches_the_reference(spark):
    trades = _random_trades(7)
    reference = reference_windows(trades)
    ours = _metrics(spark, trades)
    assert set(ours) == set(reference)
    by_window: dict[tuple[str, int], list[int]] = {}
    for t in trades:
        by_window.setdefault((t.symbol, t.time_ms - t.time_ms % 1000), []).append(t.agg_id)
    for key, want in reference.items():
        row = ours[key]
        for column, expected in [("vwap", want.vwap), ("net_delta", want.net_delta),
                                 ("buy_pressure_pct", want.buy_pressure_pct), ("total_volume", want.total_volume),
                                 ("avg_price_1_sec", want.avg_price), ("open", want.open), ("high", want.high),
                                 ("low", want.low), ("close", want.close), ("buy_volume", want.buy_volume),
                                 ("sell_volume", want.sell_volume), ("quote_volume", want.quote_volume)]:
            assert math.isclose(row[column], expected, rel_tol=1e-9, abs_tol=1e-9), (key, column)
        assert (row["trade_count"], row["signal"]) == (want.trade_count, want.signal), key
        assert (row["first_agg_trade_id"], row["last_agg_trade_id"]) == (want.first_agg_id, want.last_agg_id)
        ids = by_window[key]
        assert row["expected_trade_count"] == max(ids) - min(ids) + 1 >= row["trade_count"]
        assert row["window_end"].timestamp() - row["window_start"].timestamp() == 1.0


EDGES = [
    # one trade: avg == vwap, open == close
    [_trade("ONE", 1, "100.5", "2", 10, False)],
    # several trades at one price: avg == vwap whatever the volumes -> NEUTRAL
    [_trade("FLAT", 1, "0.1", "3", 0, False), _trade("FLAT", 2, "0.1", "7", 1, True),
     _trade("FLAT", 3, "0.1", "1", 2, False)],
    # buy == sell volume -> NEUTRAL although avg > vwap
    [_trade("EVEN", 1, "100", "0.1", 0, False), _trade("EVEN", 2, "101", "0.2", 1, True),
     _trade("EVEN", 3, "102", "0.1", 2, False)],
    # each non-neutral signal
    [_trade("BUY", 1, "100", "2", 0, False), _trade("BUY", 2, "103", "1", 1, True)],
    [_trade("SELL", 1, "100", "1", 0, False), _trade("SELL", 2, "103", "2", 1, True)],
    [_trade("ACC", 1, "100", "1", 0, True), _trade("ACC", 2, "103", "2", 1, False)],
    [_trade("DIS", 1, "100", "2", 0, True), _trade("DIS", 2, "103", "1", 1, False)],
    # small edges: avg 0.057% above vwap, buy volume 4.8% of the total above sell
    [_trade("SMALL", 1, "100.00", "1.0", 0, False), _trade("SMALL", 2, "100.00", "1.0", 1, True),
     _trade("SMALL", 3, "100.20", "0.1", 2, False)],
    # float noise: 0.1-style sums make avg and vwap differ in the last bits although they are equal
    [_trade("NOISE", 1, "0.1", "0.1", 0, False), _trade("NOISE", 2, "0.1", "0.2", 1, False),
     _trade("NOISE", 3, "0.1", "0.3", 2, True), _trade("NOISE", 4, "0.1", "0.7", 3, False)],
    # a window boundary: 999 ms and 1000 ms are different windows
    [_trade("EDGE", 1, "10", "1", 999, False), _trade("EDGE", 2, "11", "1", 1000, True)],
]


@pytest.mark.parametrize(("price_band", "delta_band"), [("0", "0"), ("0.001", "0"), ("0", "0.1"), ("0.0001", "0.01")])
def test_edge_windows_and_dead_bands(spark, price_band, delta_band):
    trades = [t for case in EDGES for t in case]
    reference = reference_windows(trades, Decimal(price_band), Decimal(delta_band))
    ours = _metrics(spark, trades, SignalSettings(price_deadband_rel=float(price_band),
                                                  delta_deadband_rel=float(delta_band)))
    assert {k: r["signal"] for k, r in ours.items()} == {k: w.signal for k, w in reference.items()}
    signals = {k[0]: r["signal"] for k, r in ours.items()}
    assert signals["ONE"] == signals["FLAT"] == signals["EVEN"] == signals["NOISE"] == "NEUTRAL"
    one = next(r for k, r in ours.items() if k[0] == "ONE")
    assert one["open"] == one["close"] == one["high"] == one["low"] == 100.5
    assert sorted(k[1] - T0 for k in ours if k[0] == "EDGE") == [0, 1000]
    assert (signals["BUY"], signals["SELL"], signals["ACC"], signals["DIS"]) == (
        "STRONG BUY", "STRONG SELL", "ACCUMULATING", "DISTRIBUTING")
    # A 0.1% price band or a 10% volume band swallows the small window's edges; 0.01% and 1% do not.
    small_is_neutral = (price_band, delta_band) in {("0.001", "0"), ("0", "0.1")}
    assert signals["SMALL"] == ("NEUTRAL" if small_is_neutral else "STRONG BUY")
