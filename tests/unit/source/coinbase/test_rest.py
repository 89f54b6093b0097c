"""Coinbase's REST gap fill against the venue double's market-trades endpoint: pages by time until
the gap's ids are in, the maker-side rule, and what it cannot do said plainly."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from pulse.errors import Unavailable
from pulse.model import Gap, Trade
from pulse.source.coinbase.rest import CoinbaseGapFill
from pulse.source.coinbase.wire import CoinbaseReader
from tests.support.venue_double import TapeTrade, VenueDouble

T0 = 1_700_000_000_000


def _tape(times_ms: list[int]) -> list[TapeTrade]:
    return [TapeTrade("BTC-USD", str(i), f"{100 + i}.5", "0.25", i % 3 == 0, t) for i, t in enumerate(times_ms, 1)]


async def _fill(tape: list[TapeTrade], gap: Gap, page_limit: int, base_url: str | None = None
                ) -> tuple[list[Trade], int]:
    async with VenueDouble("coinbase", tape) as double, aiohttp.ClientSession() as session:
        double.cursor = len(tape)  # every trade has happened
        fill = CoinbaseGapFill(session, base_url or double.rest_url, CoinbaseReader(), retry_pause_s=0,
                               page_limit=page_limit)
        by_id = {int(t.trade_id): t for t in tape}
        trades = await fill.trades(gap, by_id[gap.first_missing_id - 1].time_ms, by_id[gap.last_missing_id + 1].time_ms)
        return trades, double.rest_calls


def test_a_gap_larger_than_a_page_is_paged_back_in_time_until_every_id_is_in():
    tape = _tape([T0 + 1000 * i for i in range(40)])  # one trade a second
    trades, calls = asyncio.run(_fill(tape, Gap("BTC-USD", 10, 30), page_limit=4))
    got = {t.agg_trade_id: t for t in trades}
    assert set(range(10, 31)) <= set(got) and calls >= 6
    for wire in tape[9:30]:
        trade = got[int(wire.trade_id)]
        # Coinbase's `side` is the maker's: the double says SELL for a taker buy.
        assert trade.buyer_is_maker is not wire.taker_buys
        assert (trade.price, trade.trade_time_ms, trade.venue) == (float(wire.price), wire.time_ms, "coinbase")


def test_a_full_page_inside_one_second_is_as_far_as_time_paging_goes():
    tape = _tape([T0] + [T0 + 1000 + i for i in range(12)] + [T0 + 2000])
    trades, calls = asyncio.run(_fill(tape, Gap("BTC-USD", 2, 13), page_limit=4))
    # The second page is the newest four of that second again (and id 14 of the first): the ids
    # before them are left to become a gap event.
    assert sorted(t.agg_trade_id for t in trades) == [10, 11, 12, 13, 14] and calls == 2


def test_rest_out_of_reach_is_unavailable_after_its_attempts():
    tape = _tape([T0 + 1000 * i for i in range(5)])
    with pytest.raises(Unavailable, match=r"market trades of BTC-USD: request failed: .* after 3 attempts"):
        asyncio.run(_fill(tape, Gap("BTC-USD", 2, 3), page_limit=4, base_url="http://127.0.0.1:9"))
