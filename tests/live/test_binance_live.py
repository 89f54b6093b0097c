"""The real Binance, opt-in: `pytest -m live tests/live` on a machine that can reach it.

Checks the assumptions the double encodes: the market path delivers aggTrades for many symbols on
one connection, ids run consecutively, REST aggTrades fills from an id with the same records.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from pulse.settings import ProducerSettings
from pulse.source.binance.markets import MARKETS
from pulse.source.binance.rest import BinanceRest, WeightBudget
from pulse.source.binance.sequencer import AggregateIdSequencer
from pulse.source.binance.wire import InvalidFrame, NotATrade, decode_frame, to_trade
from pulse.source.binance.ws import BinanceStream

pytestmark = pytest.mark.live

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT", "DOGEUSDT", "ADAUSDT", "LINKUSDT"]


def test_market_path_streams_consecutive_aggtrades_and_rest_agrees():
    async def scenario() -> None:
        settings = ProducerSettings(symbols=SYMBOLS, stall_timeout_s=20)
        sequencer = AggregateIdSequencer()
        wires = []

        def on_frame(raw: str | bytes) -> bool:
            try:
                wire = decode_frame(raw)
            except (InvalidFrame, NotATrade):
                return False
            wires.append(wire)
            sequencer.accept(to_trade(wire, 0))
            return True

        market = MARKETS[settings.market]
        stream = BinanceStream(settings, market.ws_url, SYMBOLS, on_frame)
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(15, stop.set)
        await stream.run(stop)
        assert len(wires) > 50, "the market path delivered (almost) nothing"
        assert stream.stats.stalls == 0
        first = wires[0]
        async with aiohttp.ClientSession() as session:
            rest = BinanceRest(session, market, market.rest_url, WeightBudget(market.weight_per_minute))
            again = await rest.agg_trades(first.s, first.a, limit=5)
        assert again[0].a == first.a and (again[0].p, again[0].q, again[0].T) == (first.p, first.q, first.T)

    asyncio.run(scenario())
