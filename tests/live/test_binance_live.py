"""The real Binance, opt-in: `pytest -m live tests/live` on a machine that can reach it.

Checks the assumptions the double encodes: the market path delivers aggTrades for many symbols on
one connection, ids run consecutively, REST aggTrades fills from an id with the same records.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from pulse.settings import ProducerSettings
from pulse.source.aggregate_ids import AggregateIdSequencer
from pulse.source.binance_rest import BinanceRest, WeightBudget
from pulse.source.binance_schema import InvalidFrame, NotATrade, parse_frame, to_trade
from pulse.source.binance_ws import BinanceStream

pytestmark = pytest.mark.live

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT", "DOGEUSDT", "ADAUSDT", "LINKUSDT"]


def test_market_path_streams_consecutive_aggtrades_and_rest_agrees():
    async def scenario() -> None:
        settings = ProducerSettings(symbols=SYMBOLS, stall_timeout_s=20)
        sequencer = AggregateIdSequencer()
        wires = []

        def on_frame(raw: str | bytes) -> bool:
            try:
                wire = parse_frame(raw)
            except (InvalidFrame, NotATrade):
                return False
            wires.append(wire)
            sequencer.accept(to_trade(wire, 0))
            return True

        stream = BinanceStream(settings, on_frame)
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(15, stop.set)
        await stream.run(stop)
        assert len(wires) > 50, "the market path delivered (almost) nothing"
        assert stream.stats.stalls == 0
        first = wires[0]
        async with aiohttp.ClientSession() as session:
            rest = BinanceRest(session, settings.rest_base_url, settings.rest_agg_trades_path, WeightBudget(2400))
            again = await rest.agg_trades(first.s, first.a, limit=5)
        assert again[0].a == first.a and (again[0].p, again[0].q, again[0].T) == (first.p, first.q, first.T)

    asyncio.run(scenario())
