"""REST aggTrades: the weight budget and one conversion shared with the stream."""

from __future__ import annotations

import asyncio
import re

import orjson
import pytest

from pulse.source.binance.rest import WeightBudget
from pulse.source.binance.wire import InvalidFrame, decode_frame, decode_rest_page


def test_weight_budget_spends_2400_per_minute_and_honours_retry_after():
    now = [0.0]
    budget = WeightBudget(2400, clock=lambda: now[0])

    async def spend() -> None:
        for _ in range(120):  # 120 calls of weight 20 = the whole minute's budget at once
            assert budget.has_capacity(20)
            await budget.acquire(20)
        assert not budget.has_capacity(20)  # the 121st waits for the bucket to leak
        budget.pause(7)
        assert budget.paused_for() == pytest.approx(7)
        now[0] += 7
        assert budget.paused_for() == 0

    asyncio.run(spend())


def test_rest_item_becomes_the_same_wire_record_as_the_stream_frame():
    item = {"a": 26129, "p": "0.01633102", "q": "4.70443515", "f": 27781, "l": 27781, "T": 1498793709153, "m": True}
    (from_rest,) = decode_rest_page(orjson.dumps([item]), "BTCUSDT")
    from_ws = decode_frame(orjson.dumps({"stream": "btcusdt@aggTrade", "data": {
        **item, "e": "aggTrade", "E": 1498793709153, "s": "BTCUSDT"}}))
    assert from_rest == from_ws


def test_rest_page_is_sorted_by_id_and_refused_whole_when_one_item_is_broken():
    items = [{"a": a, "p": "1.5", "q": "2", "f": a, "l": a, "T": 1498793709153, "m": False} for a in (7, 5, 6)]
    assert [t.a for t in decode_rest_page(orjson.dumps(items), "BTCUSDT")] == [5, 6, 7]
    with pytest.raises(InvalidFrame, match=re.escape("field '[1].p'")):
        decode_rest_page(orjson.dumps([items[0], {**items[1], "p": "-1"}]), "BTCUSDT")
    with pytest.raises(InvalidFrame, match="Binance's pattern"):
        decode_rest_page(b"[]", "btc usdt")
