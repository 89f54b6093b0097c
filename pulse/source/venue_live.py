"""Live trades of the venues that subscribe by message (OKX, Coinbase, Bybit), and the one place that
builds a run's live source, whatever the venue.

Such a venue's connection lives as Binance's does (`BinanceStream`: backoff, a watchdog on trades,
the 24 h rotation with overlap, refusals counted and named); what differs is data in
`pulse.source.venues`: the URL, the subscription messages sent once connected, and the keep-alive
(OKX's text "ping", Bybit's `{"op":"ping"}`; Coinbase's heartbeats channel is a subscription).
Frames go through the venue's reader; trades a venue repeats (a snapshot on every subscribe, the
overlap of a rotation) pass once per (symbol, id). Where the venue promises consecutive ids
(Coinbase's `trade_id` per product, Kraken's per book) they are sequenced as Binance's are: a
skipped id holds the symbol's later trades back while Coinbase's REST market trades fill it
(pulse.source.coinbase.rest); Kraken's REST pages trades by time under other pair names, so its
gaps become gap events (docs/venues.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

import aiohttp
from websockets.exceptions import WebSocketException

from pulse.errors import PulseError, UsageError
from pulse.settings import ProducerSettings
from pulse.source.base import FrameDecoder, Output, Source
from pulse.source.binance.live import BinanceSource, StreamRefused, StreamUnreachable
from pulse.source.binance.sequencer import AggregateIdSequencer
from pulse.source.binance.ws import BinanceStream, Connection, FrameHandler
from pulse.source.coinbase.rest import CoinbaseGapFill
from pulse.source.coinbase.wire import CoinbaseReader
from pulse.source.gaps import GapFiller, gap_telemetry
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
        self._settings = settings
        self._decoder = FrameDecoder(self.name, reader_for(venue.name))
        # Consecutive ids are sequenced (gaps seen, held, filled where the venue allows); others
        # only pass once per (symbol, id).
        self.sequencer = AggregateIdSequencer() if venue.ids == "consecutive" else None
        self._ids = RecentIds()
        self.duplicates = 0
        self.stream = SubscribedStream(settings, venue, self.symbols, self._on_frame)
        self.streams = [self.stream]
        self._session: aiohttp.ClientSession | None = None
        self._fill: CoinbaseGapFill | None = None
        self.gaps: GapFiller | None = None
        self._out: Output | None = None

    async def setup(self) -> None:
        # OKX's swaps and futures count contracts: their values come over REST, once, before streaming.
        if self.venue.name == "okx" and any(is_contract(symbol) for symbol in self.symbols):
            instruments = await contract_instruments(self._settings.rest_base_url or OKX_REST_URL)
            unknown = [s for s in self.symbols if is_contract(s) and s not in instruments]
            if unknown:
                raise UsageError(f"OKX lists no swap or future named {', '.join(unknown)}")
            self._decoder.reader = OkxReader(instruments)
        if self.venue.gap_fill and isinstance(self._decoder.reader, CoinbaseReader):
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
            self._fill = CoinbaseGapFill(self._session, self._settings.rest_base_url, self._decoder.reader)

    async def run(self, out: Output, stop: asyncio.Event) -> None:
        self._out = out
        if self.sequencer is not None:
            self.gaps = GapFiller(self._settings, self.sequencer, self._fill, out,
                                  no_fill=f"{self.venue.title} skipped these trade ids and has no gap fill Pulse uses")
        await self.stream.run(stop)

    def _on_frame(self, raw: str | bytes) -> bool:
        out = self._out
        assert out is not None
        trades = self._decoder.trades(raw, out)
        if self.gaps is not None:
            # In id order: a snapshot may list the newest first, and a symbol's first trade starts
            # its sequence.
            for trade in sorted(trades, key=lambda t: t.agg_trade_id):
                self.gaps.accept(trade)
            return bool(trades)
        for trade in trades:
            if self._ids.first(trade.symbol, trade.agg_trade_id):
                out.trade(trade)
            else:
                self.duplicates += 1
        return bool(trades)

    def gaps_pending(self) -> bool:
        return self.gaps is not None and self.gaps.pending

    async def stop(self) -> None:
        if self.gaps is not None:
            await self.gaps.stop()
        if self._session is not None:
            with contextlib.suppress(aiohttp.ClientError):
                await self._session.close()

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
        duplicates = self.duplicates + (self.sequencer.duplicates.total() if self.sequencer is not None else 0)
        fill = self._fill.telemetry() if self._fill is not None else Telemetry()
        return merge(self._decoder.telemetry(), gap_telemetry(self.gaps), fill, Telemetry(
            counters={"ws_connects": stats.connects, "ws_reconnects": stats.reconnects,
                      "ws_connect_failures": stats.connect_failures, "ws_stalls": stats.stalls,
                      "duplicates": duplicates},
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
