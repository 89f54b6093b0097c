"""Binance live aggTrade stream: one combined-stream websocket that keeps itself alive for days.

The frames it delivers (see `pulse.source.binance.wire` for their shape):

    {"stream": "btcusdt@aggTrade", "data": {"e": "aggTrade", "E": 1617647797640, "s": "BTCUSDT", ...}}

USD-M futures serve combined streams on the market path,
`wss://fstream.binance.com/market/stream?streams=btcusdt@aggTrade/ethusdt@aggTrade/...`; the old
`/ws` and `/stream` paths still accept connections but have sent nothing since 2026-04-23. Such a
silent connection looks healthy to TCP and to pings, which is why the watchdog here counts
aggTrades, not frames: no aggTrade for `stall_timeout_s` means reconnect.

Binance drops every connection at 24 h, so the stream rotates before that: the new connection is
opened and reading before the old one closes. Both deliver during the overlap; the duplicates
are removed downstream by aggregate id (`pulse.source.aggregate_ids`), so nothing is lost and
nothing is published twice. Frames are handed to `on_frame` as they arrive, never awaited.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from pulse.settings import ProducerSettings

log = logging.getLogger(__name__)

# Returns True when the frame held an aggTrade: that, not any frame, keeps the watchdog quiet.
FrameHandler = Callable[[str | bytes], bool]
WatchOutcome = Literal["stop", "closed", "stalled", "rotate"]

# Binance allows 1024 streams per connection; 200 keeps the URL well inside common limits.
MAX_STREAMS_PER_CONNECTION = 200


def combined_stream_url(base_url: str, symbols: Sequence[str]) -> str:
    if not symbols:
        raise ValueError("at least one symbol is needed")
    if len(symbols) > MAX_STREAMS_PER_CONNECTION:
        raise ValueError(f"{len(symbols)} symbols exceed {MAX_STREAMS_PER_CONNECTION} streams on one connection")
    streams = "/".join(f"{symbol.lower()}@aggTrade" for symbol in symbols)
    return f"{base_url.rstrip('/')}?streams={streams}"


def backoff_delay(attempt: int, initial_s: float, max_s: float, rand: Callable[[], float] = random.random) -> float:
    """Capped exponential backoff with "equal jitter": between half and all of the capped step,
    so a fleet of producers cut off together does not reconnect in lockstep."""
    ceiling: float = min(max_s, initial_s * 2.0 ** min(attempt, 32))
    return ceiling / 2 + ceiling / 2 * rand()


@dataclass(slots=True)
class StreamStats:
    connects: int = 0
    reconnects: int = 0
    connect_failures: int = 0
    server_closes: int = 0
    stalls: int = 0
    rotations: int = 0
    reconnect_reasons: dict[str, int] = field(default_factory=dict)
    # HTTP status of refused handshakes: 451 (restricted region), 403, 429/418 (rate limit or ban).
    refusals: dict[str, int] = field(default_factory=dict)
    last_refusal: str | None = None


@dataclass(slots=True)
class Connection:
    """One open websocket and its reader; venues that subscribe by message reuse it (venue_live.py)."""

    websocket: ClientConnection
    opened_at: float
    trades: int = 0
    reader: asyncio.Task[None] = field(init=False)


# What a refused handshake means for the user: these do not heal by reconnecting faster.
REFUSAL_HINTS = {
    451: "Binance refuses connections from this region (HTTP 451): try Binance.US (--venue binance-us), run"
         " Pulse where Binance is available, or replay a recording (pulse demo --input FILE)",
    403: "Binance refused the connection (HTTP 403): check a proxy or firewall in between",
    429: "Binance rate-limits this IP (HTTP 429): wait before reconnecting, and open fewer connections",
    418: "Binance banned this IP for a while (HTTP 418) after rate-limit violations: wait it out",
}


class BinanceStream:
    # What refusals are called: venues that reuse this connection life (pulse.source.venue_live) set their own.
    venue_title = "Binance"
    refusal_hints: dict[int, str] = REFUSAL_HINTS

    def __init__(self, settings: ProducerSettings, ws_base_url: str, symbols: Sequence[str],
                 on_frame: FrameHandler) -> None:
        self.url = combined_stream_url(ws_base_url, symbols)
        self._settings = settings
        self._on_frame = on_frame
        self._last_trade_at = time.monotonic()
        self._drops_in_a_row = 0
        self.connected = False
        self.stats = StreamStats()

    async def _read(self, connection: Connection) -> None:
        on_frame = self._on_frame
        with contextlib.suppress(ConnectionClosed):
            async for message in connection.websocket:
                if on_frame(message):
                    connection.trades += 1
                    self._last_trade_at = time.monotonic()

    async def _open(self) -> Connection:
        websocket = await connect(self.url, open_timeout=10, close_timeout=2, max_size=2**22,
                                  ping_interval=20, ping_timeout=20, max_queue=None)
        self.stats.connects += 1
        self._last_trade_at = time.monotonic()
        connection = Connection(websocket, time.monotonic())
        connection.reader = asyncio.create_task(self._read(connection))
        log.info("websocket connected", extra={"event": "ws_connected", "url": self.url})
        return connection

    async def _pause(self, seconds: float, stop: asyncio.Event) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=seconds)

    async def _open_with_backoff(self, stop: asyncio.Event) -> Connection | None:
        # Not websockets' own `async for ws in connect(...)` loop: it cannot open the next connection
        # while the old one still reads (the 24 h rotation), and it retries refusals (HTTP 451) unseen.
        settings = self._settings
        while not stop.is_set():
            if self._drops_in_a_row:
                await self._pause(backoff_delay(self._drops_in_a_row - 1, settings.reconnect_initial_s,
                                                settings.reconnect_max_s), stop)
                if stop.is_set():
                    return None
            try:
                return await self._open()
            except InvalidStatus as refused:
                self.stats.connect_failures += 1
                self._drops_in_a_row += 1
                self._refused(refused.response.status_code)
            except (OSError, TimeoutError, WebSocketException) as error:
                self.stats.connect_failures += 1
                self._drops_in_a_row += 1
                log.warning("websocket connect failed", extra={"event": "ws_connect_failed", "error": repr(error)})
        return None

    def _refused(self, status: int) -> None:
        key = str(status)
        first = key not in self.stats.refusals
        self.stats.refusals[key] = self.stats.refusals.get(key, 0) + 1
        self.stats.last_refusal = self.refusal_hints.get(
            status, f"{self.venue_title} refused the connection (HTTP {status})")
        # One line per kind of refusal, not one per retry: the retries are counted in /metrics.
        if first:
            log.error(self.stats.last_refusal, extra={"event": "ws_refused", "status": status, "url": self.url})

    async def _close(self, connection: Connection) -> None:
        await connection.websocket.close()
        connection.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await connection.reader

    async def _watch(self, connection: Connection, stopping: asyncio.Task[bool]) -> WatchOutcome:
        settings = self._settings
        while True:
            rotate_at = connection.opened_at + settings.rotate_after_s
            stall_at = self._last_trade_at + settings.stall_timeout_s
            timeout = max(0.0, min(rotate_at, stall_at) - time.monotonic())
            done, _ = await asyncio.wait({connection.reader, stopping}, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
            if stopping in done:
                return "stop"
            if connection.reader in done:
                connection.reader.result()  # a bug in on_frame must surface, not look like a close
                return "closed"
            now = time.monotonic()
            if now >= rotate_at:
                return "rotate"
            if now - self._last_trade_at >= settings.stall_timeout_s:
                return "stalled"

    def _count_reconnect(self, reason: str) -> None:
        self.stats.reconnects += 1
        self.stats.reconnect_reasons[reason] = self.stats.reconnect_reasons.get(reason, 0) + 1
        if reason == "closed":
            self.stats.server_closes += 1
        elif reason == "stalled":
            self.stats.stalls += 1

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver frames to `on_frame` until `stop` is set, reconnecting and rotating as needed."""
        stopping = asyncio.create_task(stop.wait())
        current = await self._open_with_backoff(stop)
        try:
            while current is not None:
                self.connected = True
                outcome = await self._watch(current, stopping)
                if outcome == "stop":
                    break
                if outcome == "rotate":
                    replacement = await self._open_with_backoff(stop)
                    if replacement is not None:
                        await self._pause(self._settings.rotate_overlap_s, stop)
                    await self._close(current)
                    current = replacement
                    self.stats.rotations += 1
                    log.info("websocket rotated", extra={"event": "ws_rotated"})
                    continue
                self.connected = False
                self._count_reconnect(outcome)
                self._drops_in_a_row = 0 if current.trades else self._drops_in_a_row + 1
                log.warning("websocket reconnecting", extra={"event": "ws_reconnect", "reason": outcome})
                await self._close(current)
                current = None
                current = await self._open_with_backoff(stop)
        finally:
            self.connected = False
            stopping.cancel()
            if current is not None:
                await self._close(current)
