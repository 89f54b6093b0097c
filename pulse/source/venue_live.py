"""Live trades of the venues that subscribe by message (OKX, Coinbase, Bybit), and the one place that
builds a run's live source, whatever the venue.

Such a venue's connection lives as Binance's does (`BinanceStream`: backoff, a watchdog on trades,
the 24 h rotation with overlap, refusals counted and named); what differs is data in
`pulse.source.venues`: the URL, the subscription messages sent once connected, and the keep-alive
(OKX's text "ping", Bybit's `{"op":"ping"}`; Coinbase's heartbeats channel is a subscription).
Frames go through the venue's reader; trades a venue repeats (a snapshot on every subscribe, the
overlap of a rotation) pass once per (symbol, id). Where the venue promises consecutive ids
(Coinbase's `trade_id` per product), a skipped id range becomes a gap event: none of them has a
public REST fill Pulse uses, so the gap is reported, not filled (docs/venues.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from websockets.exceptions import WebSocketException

from pulse.errors import PulseError, UsageError
from pulse.model import Gap, GapEvent, Trade
from pulse.settings import ProducerSettings
from pulse.source.base import FrameDecoder, Output, Source, now_ms
from pulse.source.binance.live import BinanceSource, StreamRefused, StreamUnreachable
from pulse.source.binance.ws import BinanceStream, Connection, FrameHandler
from pulse.source.okx.rest import contract_instruments, is_contract
from pulse.source.okx.wire import OkxReader
from pulse.source.replay import RecentIds
from pulse.source.venues import VENUES, Venue, reader_for
from pulse.telemetry import Telemetry, merge

log = logging.getLogger(__name__)

_UNREACHABLE_AFTER = 3
OKX_REST_URL = "https://www.okx.com"


class SubscribedStream(BinanceStream):
    """A websocket that subscribes by message once connected and keeps itself alive by sending."""

    def __init__(self, settings: ProducerSettings, venue: Venue, symbols: Sequence[str],
                 on_frame: FrameHandler) -> None:
        super().__init__(settings, "ws://unused", symbols, on_frame)
        assert venue.subscribe is not None
        self.url = venue.url(settings.ws_base_url)
        self.venue_title = venue.title
        self.refusal_hints = {}
        self._messages = venue.subscribe(list(symbols))
        self._keepalive = venue.keepalive
        if venue.keepalive is not None and settings.keepalive_s is not None:
            self._keepalive = (settings.keepalive_s, venue.keepalive[1])
        self._pingers: dict[int, asyncio.Task[None]] = {}

    async def _open(self) -> Connection:
        connection = await super()._open()
        try:
            for message in self._messages:
                await connection.websocket.send(message)
        except WebSocketException:
            await self._close(connection)
            raise
        if self._keepalive is not None:
            self._pingers[id(connection)] = asyncio.create_task(self._ping(connection, *self._keepalive))
        return connection

    async def _ping(self, connection: Connection, every_s: float, text: str) -> None:
        with contextlib.suppress(WebSocketException):
            while True:
                await asyncio.sleep(every_s)
                await connection.websocket.send(text)

    async def _close(self, connection: Connection) -> None:
        pinger = self._pingers.pop(id(connection), None)
        if pinger is not None:
            pinger.cancel()
        await super()._close(connection)


class VenueSource:
    """Live trades of `symbols` on one venue that subscribes by message (one connection)."""

    def __init__(self, settings: ProducerSettings, venue: Venue, symbols: Sequence[str] | None = None) -> None:
        self.venue = venue
        self.symbols = list(symbols if symbols is not None else settings.symbols)
        if not self.symbols or "ALL" in self.symbols:
            raise UsageError(f"{venue.name} takes its symbols by name (e.g. --symbols BTC-USDT): 'all' is"
                             " read from Binance's exchangeInfo only")
        self.name = f"{venue.name}:live"
        self._rest_url = settings.rest_base_url
        self._decoder = FrameDecoder(self.name, reader_for(venue.name))
        self._ids = RecentIds()
        self._last_id: dict[str, int] = {}
        self.duplicates = 0
        self.gaps_found = 0
        self.stream = SubscribedStream(settings, venue, self.symbols, self._on_frame)
        self.streams = [self.stream]
        self._out: Output | None = None

    async def setup(self) -> None:
        # OKX's swaps and futures count contracts: their values come over REST, once, before streaming.
        if self.venue.name == "okx" and any(is_contract(symbol) for symbol in self.symbols):
            instruments = await contract_instruments(self._rest_url or OKX_REST_URL)
            unknown = [s for s in self.symbols if is_contract(s) and s not in instruments]
            if unknown:
                raise UsageError(f"OKX lists no swap or future named {', '.join(unknown)}")
            self._decoder.reader = OkxReader(instruments)

    async def run(self, out: Output, stop: asyncio.Event) -> None:
        self._out = out
        await self.stream.run(stop)

    def _on_frame(self, raw: str | bytes) -> bool:
        out = self._out
        assert out is not None
        trades = self._decoder.decode(raw, out)
        for trade in trades:
            if not self._ids.first(trade.symbol, trade.agg_trade_id):
                self.duplicates += 1
                continue
            self._check_sequence(trade, out)
            out.trade(trade)
        return bool(trades)

    def _check_sequence(self, trade: Trade, out: Output) -> None:
        if self.venue.ids != "consecutive":
            return
        last = self._last_id.get(trade.symbol)
        if last is not None and trade.agg_trade_id > last + 1:
            self.gaps_found += 1
            out.gap(GapEvent(Gap(trade.symbol, last + 1, trade.agg_trade_id - 1),
                             f"{self.venue.title} skipped these trade ids and has no gap fill Pulse uses",
                             now_ms()))
        if last is None or trade.agg_trade_id > last:
            self._last_id[trade.symbol] = trade.agg_trade_id

    async def stop(self) -> None:
        return None

    def connected(self) -> bool:
        return self.stream.connected

    def problem(self) -> str | None:
        return None if self.stream.connected else self.stream.stats.last_refusal

    def fatal(self) -> PulseError | None:
        stats = self.stream.stats
        if stats.connects:
            return None
        if stats.last_refusal is not None:
            return StreamRefused(stats.last_refusal)
        if stats.connect_failures >= _UNREACHABLE_AFTER:
            return StreamUnreachable(f"no connection to {self.venue.title} at {self.stream.url} after"
                                     f" {stats.connect_failures} attempts: check the network (or"
                                     " PULSE_PRODUCER__WS_BASE_URL)")
        return None

    def telemetry(self) -> Telemetry:
        stats = self.stream.stats
        return merge(self._decoder.telemetry(), Telemetry(
            counters={"ws_connects": stats.connects, "ws_reconnects": stats.reconnects,
                      "ws_connect_failures": stats.connect_failures, "ws_stalls": stats.stalls,
                      "duplicates": self.duplicates, "gaps_found": self.gaps_found},
            labelled_counters={("reconnects", "reason"): dict(stats.reconnect_reasons),
                               ("ws_refusals", "status"): dict(stats.refusals)},
            gauges={"ws_connections": int(self.stream.connected), "ws_connections_wanted": 1}))


def live_source(settings: ProducerSettings) -> Source:
    """The live source `settings` name: a venue that subscribes by message, or a Binance market."""
    if settings.venue is None:
        return BinanceSource(settings)
    if settings.venue.startswith("binance-"):
        market = settings.venue.removeprefix("binance-")
        return BinanceSource(settings.model_copy(update={"market": market}))
    return VenueSource(settings, VENUES[settings.venue])
