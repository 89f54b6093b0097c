"""The synthetic source: valid Binance frames, consecutive ids, the asked rate."""

from __future__ import annotations

import asyncio
import time

from pulse.source.binance.wire import decode_frame
from pulse.source.synthetic import SyntheticTrades


def test_synthetic_frames_are_valid_binance_frames_with_consecutive_ids():
    generator = SyntheticTrades(["BTCUSDT", "ETHUSDT"], rate_per_s=1000, seed=7)
    parsed = [decode_frame(generator.frame(1_700_000_000_000)) for _ in range(2000)]
    for symbol in ("BTCUSDT", "ETHUSDT"):
        mine = [p.a for p in parsed if p.s == symbol]
        assert mine == list(range(1, len(mine) + 1))
    assert all(float(p.p) > 0 and float(p.q) > 0 for p in parsed)


def test_synthetic_source_is_never_faster_than_the_asked_rate():
    """Arrivals are scheduled at the rate (a Poisson process): a slow or loaded machine emits fewer,
    never more, so only the upper bound is checked (mean 10,000 at 0.5 s; 10% is ten deviations)."""
    async def scenario() -> tuple[int, float]:
        generator = SyntheticTrades(["BTCUSDT"], rate_per_s=20_000, seed=1)
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.5, stop.set)
        started = time.monotonic()
        await generator.run(lambda frame: None, stop)
        return generator.generated, time.monotonic() - started

    generated, elapsed_s = asyncio.run(scenario())
    assert 0 < generated <= 20_000 * elapsed_s * 1.1
