"""The live Binance source: aggTrades of many symbols, in id order per symbol, gaps filled from REST.

Symbols are spread over as many combined-stream connections as needed (`MAX_STREAMS_PER_CONNECTION`
each), every one with its own watchdog, rotation and reconnect. Frames of all connections meet in
one `AggregateIdSequencer`: duplicates (rotation overlaps, REST and wire both delivering) are
dropped, and a skipped id holds the symbol's later trades back until `GapFiller`
(pulse.source.gaps) recovers the missing ones from REST or gives up on them, a gap event. So the source emits trades
in id order per symbol, dead letters, and gap events: never anything out of order.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import logging
from collections.abc import Sequence
from typing import cast

import aiohttp

from pulse.errors import PulseError, Unavailable, UsageError
from pulse.model import Gap, Trade
from pulse.settings import ProducerSettings, VenueName
from pulse.source.base import FrameDecoder, Output, now_ms, run_side_by_side
from pulse.source.binance.markets import Market, market_named
from pulse.source.binance.rest import BinanceRest, WeightBudget
from pulse.source.binance.sequencer import AggregateIdSequencer
from pulse.source.binance.wire import BinanceReader
from pulse.source.binance.ws import MAX_STREAMS_PER_CONNECTION, BinanceStream
from pulse.source.gaps import GapFiller, gap_telemetry
from pulse.telemetry import Telemetry, merge

log = logging.getLogger(__name__)


class BinanceGapFill:
    """A gap's aggTrades from REST, asked from its first id (Binance pages them by id, not time)."""

    def __init__(self, rest: BinanceRest, reader: BinanceReader) -> None:
        self._rest = rest
        self._reader = reader

    async def trades(self, gap: Gap, after_ms: int, before_ms: int) -> list[Trade]:
        wires = await self._rest.agg_trades(gap.symbol, gap.first_missing_id, gap.size)
        received = now_ms()
        return [self._reader.trade(wire, received) for wire in wires]

    def telemetry(self) -> Telemetry:
        return self._rest.telemetry()


def shards(symbols: Sequence[str], size: int = MAX_STREAMS_PER_CONNECTION) -> list[list[str]]:
    return [list(symbols[start:start + size]) for start in range(0, len(symbols), size)]


# `--symbols all` / PULSE_PRODUCER__SYMBOLS=all (settings upper-case it): every trading symbol of the market.
ALL_SYMBOLS = "ALL"


class StreamRefused(Unavailable, RuntimeError):
    """Binance answered the handshake with a refusal before any connection opened."""


class StreamUnreachable(Unavailable, RuntimeError):
    """No connection to Binance's stream opened after several attempts."""


# Connection attempts that failed before any succeeded: then the network, not luck, is the problem.
_UNREACHABLE_AFTER = 3


class UnknownSymbols(UsageError, ValueError):
    """Symbols the market does not list, or lists as not trading: nothing would ever arrive for them."""


async def market_symbols(settings: ProducerSettings, wanted: Sequence[str]) -> list[str]:
    """`wanted` checked against the market's exchangeInfo; `[ALL_SYMBOLS]` becomes every trading symbol.

    Asked once, before a run: a typo (BTCUSTD) or an expired quarterly contract would otherwise
    subscribe to a stream that stays silent forever, which looks like a stall, not like a mistake.
    """
    market = market_named(settings.market)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        budget = WeightBudget(settings.rest_weight_budget_per_min or market.weight_per_minute)
        rest = BinanceRest(session, market, settings.rest_base_url or market.rest_url, budget)
        states = await rest.symbol_states()
    trading = [symbol for symbol, state in states.items() if state == "TRADING"]
    if list(wanted) == [ALL_SYMBOLS]:
        if not trading:
            raise UnknownSymbols(f"Binance lists no trading symbol on {market.title}")
        return trading
    problems = []
    for symbol in wanted:
        state = states.get(symbol)
        if state is None:
            near = difflib.get_close_matches(symbol, trading, n=1)
            guess = f" (did you mean {near[0]}?)" if near else ""
            problems.append(f"{symbol} is not a {market.title} symbol{guess}")
        elif state != "TRADING":
            problems.append(f"{symbol} is not trading on {market.title} (status {state})")
    if problems:
        raise UnknownSymbols("; ".join(problems))
    return list(wanted)


class BinanceSource:
    """Live aggTrades of `symbols` on one Binance market (see `pulse.source.binance.markets`)."""

    def __init__(self, settings: ProducerSettings, symbols: Sequence[str] | None = None) -> None:
        self._settings = settings
        self.market: Market = market_named(settings.market)
        self.symbols = list(symbols if symbols is not None else settings.symbols)
        if not self.symbols:
            raise ValueError("the live source needs at least one symbol")
        if ALL_SYMBOLS in self.symbols:
            raise ValueError("resolve 'all' with market_symbols() before building the source")
        self.name = f"binance:{self.market.name}"
        self.sequencer = AggregateIdSequencer()
        self.venue = cast(VenueName, f"binance-{self.market.name}")  # each market is the venue of its name
        self._reader = BinanceReader(self.venue)
        self._decoder = FrameDecoder(self.name, self._reader)
        ws_url = self.market.stream_url(settings.ws_base_url)
        self.streams = [BinanceStream(settings, ws_url, shard, self._on_frame) for shard in shards(self.symbols)]
        self._session: aiohttp.ClientSession | None = None
        self.rest: BinanceRest | None = None
        self.gaps: GapFiller | None = None
        self._out: Output | None = None

    async def setup(self) -> None:
        settings = self._settings
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        budget = WeightBudget(settings.rest_weight_budget_per_min or self.market.weight_per_minute)
        self.rest = BinanceRest(self._session, self.market, settings.rest_base_url or self.market.rest_url, budget)
        if self.market.name == "coinm":  # COIN-M counts contracts: their sizes turn them into base units
            self._reader = BinanceReader(self.venue, contract_sizes=await self.rest.contract_sizes())
            self._decoder.reader = self._reader

    def _on_frame(self, raw: str | bytes) -> bool:
        """A frame from any connection; True when it held an aggTrade (that keeps its watchdog quiet)."""
        out, gaps = self._out, self.gaps
        assert out is not None and gaps is not None
        trade = self._decoder.decode(raw, out)
        if trade is not None:
            gaps.accept(trade)
        return trade is not None

    async def run(self, out: Output, stop: asyncio.Event) -> None:
        self._out = out
        fill = BinanceGapFill(self.rest, self._reader) if self.rest is not None else None
        self.gaps = GapFiller(self._settings, self.sequencer, fill, out)
        await run_side_by_side([stream.run(stop) for stream in self.streams], stop)

    def gaps_pending(self) -> bool:
        return self.gaps is not None and self.gaps.pending

    async def stop(self) -> None:
        if self.gaps is not None:
            await self.gaps.stop()
        if self._session is not None:
            with contextlib.suppress(aiohttp.ClientError):
                await self._session.close()

    def connected(self) -> bool:
        return all(stream.connected for stream in self.streams)

    def ever_connected(self) -> bool:
        return any(stream.stats.connects for stream in self.streams)

    def problem(self) -> str | None:
        if self.connected():
            return None
        return next((s.stats.last_refusal for s in self.streams if s.stats.last_refusal), None)

    def fatal(self) -> PulseError | None:
        """Binance refused the handshake (HTTP 451 from restricted regions, 403, 429) before any
        connection opened, or no connection opened after several attempts."""
        if self.ever_connected():
            return None
        problem = self.problem()
        if problem is not None:
            return StreamRefused(problem)
        failures = sum(stream.stats.connect_failures for stream in self.streams)
        if failures >= _UNREACHABLE_AFTER:
            return StreamUnreachable(
                f"no connection to Binance's stream at {self.streams[0].url.split('?')[0]} after {failures}"
                " attempts: check the network (or PULSE_PRODUCER__WS_BASE_URL)")
        return None

    def telemetry(self) -> Telemetry:
        totals = {"ws_connects": 0, "ws_reconnects": 0, "ws_connect_failures": 0, "ws_server_closes": 0,
                  "ws_stalls": 0, "ws_rotations": 0}
        reasons: dict[str, float] = {}
        refusals: dict[str, float] = {}
        for stream in self.streams:
            stats = stream.stats
            for name, value in (("ws_connects", stats.connects), ("ws_reconnects", stats.reconnects),
                                ("ws_connect_failures", stats.connect_failures),
                                ("ws_server_closes", stats.server_closes), ("ws_stalls", stats.stalls),
                                ("ws_rotations", stats.rotations)):
                totals[name] += value
            for reason, count in stats.reconnect_reasons.items():
                reasons[reason] = reasons.get(reason, 0) + count
            for status, count in stats.refusals.items():
                refusals[status] = refusals.get(status, 0) + count
        parts = [self._decoder.telemetry(), Telemetry(
            counters={**totals, "duplicates": self.sequencer.duplicates.total()},
            labelled_counters={("reconnects", "reason"): reasons, ("ws_refusals", "status"): refusals},
            gauges={"ws_connections": sum(stream.connected for stream in self.streams),
                    "ws_connections_wanted": len(self.streams)})]
        rest = self.rest.telemetry() if self.rest is not None else Telemetry()
        return merge(*parts, gap_telemetry(self.gaps), rest)
