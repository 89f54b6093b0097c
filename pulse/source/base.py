"""What every source is: one lifecycle (set up, run, stop) and typed outputs.

A source hands over three kinds of record (the oks and errs of a dataflow): trades, dead letters
(frames that could not become a trade, with the reason) and gap events (ids the live source gave
up on). The producer's router takes all three; a source never encodes or publishes anything.
Every source hands its frames (live, recorded, synthetic) to one `FrameDecoder`, which reads them
with its venue's reader (pulse.source.venues).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Protocol

from pulse.errors import PulseError
from pulse.model import DeadLetter, GapEvent, Trade
from pulse.source.binance.wire import BinanceReader
from pulse.source.contract import InvalidFrame, NotATrade, TradeReader
from pulse.telemetry import Telemetry

# Dead letters carry a raw payload up to this size whole, a larger one by its head.
_DEAD_LETTER_RAW_MAX = 256 * 1024
_DEAD_LETTER_HEAD = 4096


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Output(Protocol):
    """Where a source puts what it made. None of these wait: the producer's queue is bounded."""

    def trade(self, trade: Trade) -> None: ...

    def dead_letter(self, letter: DeadLetter) -> None: ...

    def gap(self, event: GapEvent) -> None: ...

    async def room(self) -> None:
        """For sources that can wait (a file, unlike a live feed): returns once the queue has room."""


class Source(Protocol):
    name: str
    # Symbols the source serves, as far as it knows them before running (for logs and the view).
    symbols: list[str]

    async def setup(self) -> None:
        """Open what the source needs (files, sessions); fails here, before anything runs."""

    async def run(self, out: Output, stop: asyncio.Event) -> None:
        """Emit into `out` until the source is exhausted or `stop` is set."""

    async def stop(self) -> None:
        """Release everything; hand over what is still held (live: trades waiting behind a gap)."""

    def connected(self) -> bool: ...

    def problem(self) -> str | None:
        """What keeps the source from delivering, in words a user can act on (None: nothing)."""

    def fatal(self) -> PulseError | None:
        """Why a run that wants trades now should end rather than retry (a refusal before any
        connection opened); None while retrying may still help. A service retries regardless."""

    def telemetry(self) -> Telemetry: ...


async def run_side_by_side(runs: list[Coroutine[None, None, None]], stop: asyncio.Event) -> None:
    """Runs until each ends (they end once `stop` is set) or one fails: a run only ends early by a bug,
    which must surface, so then `stop` is set, the others are cancelled and the error raised."""
    running = [asyncio.create_task(run) for run in runs]
    try:
        done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()
    finally:
        stop.set()
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)


class FrameDecoder:
    """A venue's frames -> trades; refused frames go to `out` as dead letters. Counted for /metrics."""

    def __init__(self, source: str, reader: TradeReader | None = None) -> None:
        self._source = source
        self.reader = reader if reader is not None else BinanceReader()
        self.frames = 0
        self.skipped = 0

    def decode(self, raw: str | bytes, out: Output, invalid_reason: str | None = None) -> Trade | None:
        """A Binance frame's trade (an aggTrade frame carries one): None for another stream's frame, or
        one refused and dead-lettered. Venues whose frames carry several go through `trades`."""
        trades = self.trades(raw, out, invalid_reason)
        if len(trades) > 1:
            raise ValueError(f"a frame of {len(trades)} trades from {self.reader.venue}: read it with trades()")
        return trades[0] if trades else None

    def trades(self, raw: str | bytes, out: Output, invalid_reason: str | None = None) -> list[Trade]:
        """The trades in `raw`: none for another stream's frame, or one refused and dead-lettered."""
        self.frames += 1
        received = now_ms()
        try:
            if invalid_reason is not None:
                raise InvalidFrame(invalid_reason)
            return self.reader.trades(raw, received)
        except NotATrade:
            self.skipped += 1
        except InvalidFrame as invalid:
            # A large frame keeps its head: the dead-letter topic takes records of ~1 MB, and JSON escaping
            # can double a payload.
            kept = raw if len(raw) <= _DEAD_LETTER_RAW_MAX else raw[:_DEAD_LETTER_HEAD]
            out.dead_letter(DeadLetter(raw=kept, reason=invalid.reason, source=self._source, received_ms=received))
        return []

    def telemetry(self) -> Telemetry:
        return Telemetry(counters={"frames_received": self.frames, "frames_skipped": self.skipped})


class LocalSource:
    """What a source without a connection shares (a file, a generator): it is "connected" while it runs.

    Subclasses set `name`, `symbols` and `_decoder`, and implement `_emit_all`.
    """

    name: str
    symbols: list[str]
    _decoder: FrameDecoder
    _running = False

    async def setup(self) -> None:
        return None

    async def run(self, out: Output, stop: asyncio.Event) -> None:
        self._running = True
        try:
            await self._emit_all(out, stop)
        finally:
            self._running = False

    async def _emit_all(self, out: Output, stop: asyncio.Event) -> None:
        raise NotImplementedError

    def emit(self, raw: str | bytes, out: Output, invalid_reason: str | None = None) -> list[Trade]:
        trades = self._decoder.trades(raw, out, invalid_reason)
        for trade in trades:
            out.trade(trade)
        return trades

    async def stop(self) -> None:
        return None

    def connected(self) -> bool:
        return self._running

    def problem(self) -> str | None:
        return None

    def fatal(self) -> PulseError | None:
        return None

    def telemetry(self) -> Telemetry:
        return self._decoder.telemetry()
