"""Pure parts of the producer: id sequencing, backoff, URL, weight budget, queue, histogram, synthetic."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from pulse.broker.kafka_publisher import DropOldestQueue, OutboundRecord
from pulse.producer_metrics import LatencyHistogram
from pulse.source.aggregate_ids import AggregateIdSequencer, Gap
from pulse.source.binance_rest import WeightBudget
from pulse.source.binance_schema import Trade, agg_trade_from_rest, parse_frame
from pulse.source.binance_ws import backoff_delay, combined_stream_url
from pulse.source.synthetic import SyntheticTrades


def trade(symbol: str, agg_id: int) -> Trade:
    return Trade(symbol, agg_id, 1.0, 1.0, agg_id, agg_id, 0, 0, False, 0)


def ids(trades: list[Trade]) -> list[int]:
    return [t.agg_trade_id for t in trades]


def test_sequencer_releases_in_order_and_drops_duplicates():
    seq = AggregateIdSequencer()
    assert ids(seq.accept(trade("X", 10))) == [10]
    assert ids(seq.accept(trade("X", 11))) == [11]
    assert ids(seq.accept(trade("X", 11))) == []
    assert ids(seq.accept(trade("X", 14))) == []
    assert ids(seq.accept(trade("X", 13))) == []
    assert seq.gap("X") == Gap("X", 12, 12)
    assert ids(seq.accept(trade("X", 14))) == []
    assert ids(seq.accept(trade("X", 12))) == [12, 13, 14]
    assert seq.gap("X") is None
    assert seq.duplicates["X"] == 2
    assert ids(seq.accept(trade("Y", 5))) == [5], "symbols are independent"


def test_sequencer_give_up_releases_what_waits_behind_the_gap():
    seq = AggregateIdSequencer()
    seq.accept(trade("X", 1))
    for agg_id in (5, 6, 9):
        seq.accept(trade("X", agg_id))
    assert seq.gap("X") == Gap("X", 2, 4)
    assert ids(seq.give_up("X", 4)) == [5, 6]
    assert seq.gap("X") == Gap("X", 7, 8)
    assert ids(seq.accept(trade("X", 3))) == [], "a lost id arriving late is not published out of order"


def test_backoff_grows_exponentially_is_capped_and_jittered():
    assert backoff_delay(0, 0.5, 30, rand=lambda: 0.0) == 0.25
    assert backoff_delay(0, 0.5, 30, rand=lambda: 1.0) == 0.5
    assert backoff_delay(3, 0.5, 30, rand=lambda: 1.0) == 4.0
    assert backoff_delay(20, 0.5, 30, rand=lambda: 1.0) == 30.0
    assert backoff_delay(1000, 0.5, 30, rand=lambda: 0.0) == 15.0


def test_combined_stream_url_lower_cases_and_takes_many_symbols():
    symbols = [f"SYM{i}USDT" for i in range(60)]
    url = combined_stream_url("wss://fstream.binance.com/market/stream", ["BTCUSDT", *symbols])
    assert url.startswith("wss://fstream.binance.com/market/stream?streams=btcusdt@aggTrade/sym0usdt@aggTrade/")
    assert url.count("@aggTrade") == 61
    with pytest.raises(ValueError):
        combined_stream_url("wss://x/market/stream", [])


def test_weight_budget_spends_2400_per_minute_and_honours_retry_after():
    now = [0.0]
    budget = WeightBudget(2400, clock=lambda: now[0])
    for _ in range(120):  # 120 calls of weight 20 = the whole minute's budget at once
        assert budget.delay_for(20) == 0
        budget.spend(20)
    assert budget.delay_for(20) == pytest.approx(0.5)  # 20 weight refills in 0.5 s at 40/s
    now[0] += 0.5
    assert budget.delay_for(20) == 0
    budget.pause(7)
    assert budget.delay_for(20) == pytest.approx(7)


def test_drop_oldest_queue_keeps_the_newest_and_counts_drops_per_symbol():
    async def scenario() -> None:
        queue = DropOldestQueue(3)
        for i in range(5):
            queue.put(OutboundRecord("t", b"k", str(i).encode(), "A" if i % 2 else "B", 0))
        assert [r.value for r in await queue.take(10)] == [b"2", b"3", b"4"]
        assert queue.dropped == {"B": 1, "A": 1}

    asyncio.run(scenario())


def test_latency_histogram_buckets_are_cumulative():
    histogram = LatencyHistogram()
    for seconds in (0.0001, 0.003, 0.003, 100.0):
        histogram.observe(seconds)
    buckets = dict(histogram.cumulative_buckets())
    assert buckets["0.0005"] == 1 and buckets["0.005"] == 3 and buckets["60.0"] == 3 and buckets["+Inf"] == 4
    assert histogram.samples == 4


def test_synthetic_frames_are_valid_binance_frames_with_consecutive_ids():
    generator = SyntheticTrades(["BTCUSDT", "ETHUSDT"], rate_per_s=1000, seed=7)
    parsed = [parse_frame(generator.frame(1_700_000_000_000)) for _ in range(2000)]
    for symbol in ("BTCUSDT", "ETHUSDT"):
        mine = [p.a for p in parsed if p.s == symbol]
        assert mine == list(range(1, len(mine) + 1))
    assert all(float(p.p) > 0 and float(p.q) > 0 for p in parsed)


def test_synthetic_rate_is_roughly_the_asked_rate():
    async def scenario() -> int:
        generator = SyntheticTrades(["BTCUSDT"], rate_per_s=20_000, seed=1)
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.5, stop.set)
        await generator.run(lambda frame: None, stop)
        return generator.generated

    assert 7_000 < asyncio.run(scenario()) < 13_000


def test_rest_item_becomes_the_same_wire_record_as_the_stream_frame():
    item = {"a": 26129, "p": "0.01633102", "q": "4.70443515", "f": 27781, "l": 27781, "T": 1498793709153, "m": True}
    from_rest = agg_trade_from_rest(item, "BTCUSDT")
    from_ws = parse_frame(orjson.dumps({"stream": "btcusdt@aggTrade", "data": {
        **item, "e": "aggTrade", "E": 1498793709153, "s": "BTCUSDT"}}))
    assert from_rest == from_ws
