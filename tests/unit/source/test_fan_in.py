"""Several venues' sources as one: every trade of each, their counters added up, the first problem
named by its venue, a refusal of any one fatal, and a failing one ending the others."""

from __future__ import annotations

import asyncio
from collections import Counter
from types import SimpleNamespace

import pytest

from pulse.errors import PulseError
from pulse.model import Trade
from pulse.source.fan_in import FanInSource
from pulse.source.synthetic import SyntheticSource


class _Refused(SyntheticSource):
    def problem(self) -> str | None:
        return "refused the connection (HTTP 403)"

    def fatal(self) -> PulseError | None:
        return PulseError("refused")


class _Broken(SyntheticSource):
    async def _emit_all(self, out, stop):
        raise RuntimeError("a bug in the frame path")


async def _room() -> None:
    return None


def _output(trades: list[Trade]) -> SimpleNamespace:
    return SimpleNamespace(trade=trades.append, dead_letter=None, gap=None, room=_room)


def test_every_trade_of_each_source_arrives_and_their_counters_add_up():
    trades: list[Trade] = []
    fan = FanInSource([SyntheticSource(["AAAUSDT"], 50_000, total=300, seed=1),
                       SyntheticSource(["BBBUSDT"], 50_000, total=200, seed=2)],
                      ["binance-spot", "okx"], ["Binance spot", "OKX"])
    asyncio.run(fan.run(_output(trades), asyncio.Event()))
    assert Counter(t.symbol for t in trades) == {"AAAUSDT": 300, "BBBUSDT": 200}
    assert fan.telemetry().counters["frames_received"] == 500
    assert fan.symbols == ["binance-spot:AAAUSDT", "okx:BBBUSDT"] and fan.problem() is None and fan.fatal() is None


def test_the_first_problem_is_named_by_its_venue_and_any_refusal_is_fatal():
    fan = FanInSource([SyntheticSource(["AAAUSDT"], 1), _Refused(["BTCUSD"], 1)], ["okx", "coinbase"],
                      ["OKX", "Coinbase"])
    assert fan.problem() == "Coinbase: refused the connection (HTTP 403)"
    fatal = fan.fatal()
    assert fatal is not None and str(fatal) == "refused"


def test_a_failing_source_ends_the_others_and_its_error_surfaces():
    endless = SyntheticSource(["AAAUSDT"], 1000)
    fan = FanInSource([endless, _Broken(["BBBUSDT"], 1)], ["okx", "coinbase"], ["OKX", "Coinbase"])
    stop = asyncio.Event()
    with pytest.raises(RuntimeError, match="a bug in the frame path"):
        asyncio.run(asyncio.wait_for(fan.run(_output([]), stop), timeout=10))
    assert stop.is_set() and not endless.connected()
