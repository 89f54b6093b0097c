"""Synthetic source for load tests: Binance-shaped aggTrade frames at a chosen rate.

Prices follow a multiplicative random walk per symbol, arrivals a Poisson process (exponential
gaps between trades), ids run consecutively per symbol. Frames are the combined-stream envelope
Binance sends, so they take exactly the path live frames take, parser included. To reach 100k/s
the generator works in ticks: every tick it emits the trades whose arrival times have passed,
instead of sleeping once per trade, which no event loop could do 100,000 times a second.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import orjson

from pulse.source.base import FrameDecoder, LocalSource, Output

_TICK_S = 0.005
_START_PRICE = 100.0
_STEP_SIGMA = 1e-4


@dataclass(slots=True)
class _Walk:
    symbol: str
    stream: str
    next_id: int
    price: float


class SyntheticTrades:
    def __init__(self, symbols: Sequence[str], rate_per_s: float, seed: int | None = None) -> None:
        if rate_per_s <= 0:
            raise ValueError("rate must be > 0")
        self._random = random.Random(seed)  # noqa: S311 - prices for load tests, not secrets
        self._walks = [_Walk(symbol.upper(), f"{symbol.lower()}@aggTrade", 1, _START_PRICE) for symbol in symbols]
        self.rate_per_s = rate_per_s
        self.generated = 0

    def frame(self, time_ms: int) -> bytes:
        """One frame of a random symbol, the walk moved one step."""
        rnd = self._random
        walk = self._walks[rnd.randrange(len(self._walks))]
        walk.price *= math.exp(rnd.gauss(0.0, _STEP_SIGMA))
        trade_id, walk.next_id = walk.next_id, walk.next_id + 1
        self.generated += 1
        return orjson.dumps({"stream": walk.stream, "data": {
            "e": "aggTrade", "E": time_ms, "s": walk.symbol, "a": trade_id, "p": f"{walk.price:.4f}",
            "q": f"{rnd.expovariate(10.0) + 0.001:.3f}", "f": trade_id * 3, "l": trade_id * 3 + 2, "T": time_ms,
            "m": rnd.random() < 0.5,
        }})

    async def run(self, on_frame: Callable[[bytes], object], stop: asyncio.Event,
                  total: int | None = None, room: Callable[[], Awaitable[None]] | None = None) -> None:
        """Emit frames at `rate_per_s` on average until `stop` is set or `total` frames are out.

        `room`, awaited every tick, lets a consumer slow the generator down instead of dropping.
        """
        rnd = self._random
        started = time.monotonic()
        due = started + rnd.expovariate(self.rate_per_s)
        while not stop.is_set() and (total is None or self.generated < total):
            if room is not None:
                await room()
            now = time.monotonic()
            time_ms = time.time_ns() // 1_000_000
            while due <= now and (total is None or self.generated < total):
                on_frame(self.frame(time_ms))
                due += rnd.expovariate(self.rate_per_s)
            await asyncio.sleep(max(0.0, min(_TICK_S, due - time.monotonic())))


class SyntheticSource(LocalSource):
    """`SyntheticTrades` as a source; its frames go through the Binance decoder like live ones."""

    def __init__(self, symbols: Sequence[str], rate_per_s: float, total: int | None = None,
                 seed: int | None = None) -> None:
        self.name = "synthetic"
        self.symbols = [symbol.upper() for symbol in symbols]
        self._generator = SyntheticTrades(self.symbols, rate_per_s, seed)
        self._total = total
        self._decoder = FrameDecoder(self.name)

    async def _emit_all(self, out: Output, stop: asyncio.Event) -> None:
        # A run with a total is a measured batch: every trade counts, so an overloaded producer slows
        # it down rather than dropping; without one it is a live-like feed, which drops the oldest.
        room = out.room if self._total is not None else None
        await self._generator.run(lambda frame: self.emit(frame, out), stop, self._total, room)
