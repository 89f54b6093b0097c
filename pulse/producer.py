"""The producer service: frames from a source -> validated trades -> bounded queue -> Kafka.

Every source (live websocket, replay file, synthetic) hands over raw frames; this module parses
each one with the single Binance schema, routes broken ones to the dead-letter topic with their
reason, and enqueues trades keyed by symbol. The reader side never awaits Kafka.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pulse.broker.kafka_publisher import DropOldestQueue, KafkaPublisher, OutboundRecord, build_kafka_producer
from pulse.broker.trade_message import encode_dead_letter, encode_trade
from pulse.settings import KafkaSettings, PulseSettings
from pulse.source.binance_schema import InvalidFrame, NotATrade, Trade, parse_frame, to_trade
from pulse.source.replay_file import RawFrame, ReplayStats, read_replay_frames


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(slots=True)
class FrameCounters:
    frames: int = 0
    trades: int = 0
    skipped: int = 0
    invalid: int = 0
    invalid_reasons: Counter[str] = field(default_factory=Counter)
    trades_by_symbol: Counter[str] = field(default_factory=Counter)


class FrameRouter:
    """Turns raw frames into outbound records: trades to the trades topic, the rest to the DLQ."""

    def __init__(self, kafka: KafkaSettings, queue: DropOldestQueue, source: str,
                 default_symbol: str | None = None) -> None:
        self._kafka = kafka
        self._queue = queue
        self._source = source
        self._default_symbol = default_symbol
        self.counters = FrameCounters()

    def route(self, frame: RawFrame | str | bytes) -> Trade | None:
        """Parse one frame and enqueue what it yields; returns the trade, if any."""
        counters = self.counters
        counters.frames += 1
        received = now_ms()
        text = frame.text if isinstance(frame, RawFrame) else frame
        try:
            if isinstance(frame, RawFrame) and frame.invalid_reason:
                raise InvalidFrame(frame.invalid_reason)
            trade = to_trade(parse_frame(text, self._default_symbol), received)
        except NotATrade:
            counters.skipped += 1
            return None
        except InvalidFrame as invalid:
            counters.invalid += 1
            counters.invalid_reasons[invalid.reason.split(":")[0]] += 1
            self._queue.put(OutboundRecord(
                topic=self._kafka.dead_letter_topic, key=self._source.encode(),
                value=encode_dead_letter(text, invalid.reason, self._source, received),
                symbol="(invalid)", exchange_time_ms=received,
            ))
            return None
        counters.trades += 1
        counters.trades_by_symbol[trade.symbol] += 1
        self.publish(trade)
        return trade

    async def wait_for_room(self, fill_ratio: float = 0.5) -> None:
        while self._queue.fill_ratio > fill_ratio:
            await asyncio.sleep(0.001)

    def publish(self, trade: Trade) -> None:
        self._queue.put(OutboundRecord(
            topic=self._kafka.trades_topic, key=trade.symbol.encode(), value=encode_trade(trade),
            symbol=trade.symbol, exchange_time_ms=trade.trade_time_ms,
        ))


async def replay_frames(frames: Iterable[RawFrame], router: FrameRouter, speed: float | None) -> None:
    """Feed recorded frames at their recorded pace divided by `speed` (None: as fast as possible)."""
    first_trade_ms: int | None = None
    started = time.monotonic()
    for count, frame in enumerate(frames, start=1):
        trade = router.route(frame)
        if speed is not None and trade is not None:
            if first_trade_ms is None:
                first_trade_ms, started = trade.trade_time_ms, time.monotonic()
            due = started + (trade.trade_time_ms - first_trade_ms) / 1000.0 / speed
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        elif count % 500 == 0:
            # Flat out, a file outruns any broker: unlike a live feed, a replay can wait, so it
            # holds back instead of letting the queue drop its oldest frames.
            await router.wait_for_room()


async def stream_frames(frames: AsyncIterator[str | bytes], router: FrameRouter) -> None:
    async for frame in frames:
        router.route(frame)


async def run_publisher_until(publisher: KafkaPublisher, queue: DropOldestQueue,
                              feeding: asyncio.Task[None], drain_timeout_s: float) -> None:
    """Publish while `feeding` runs; then close the queue and let the publisher drain and flush."""
    publishing = asyncio.create_task(publisher.run())
    try:
        await feeding
    finally:
        queue.close()
        await asyncio.wait_for(publishing, timeout=drain_timeout_s)


async def replay_to_kafka(settings: PulseSettings, bootstrap: str, path: Path, symbol: str | None,
                          speed: float | None, stats: ReplayStats | None = None
                          ) -> tuple[FrameRouter, KafkaPublisher]:
    """Replay a recording into the trades topic; returns the router's and publisher's counters."""
    queue = DropOldestQueue(settings.producer.queue_max)
    producer = build_kafka_producer(settings.kafka, settings.producer, bootstrap)
    await producer.start()
    try:
        router = FrameRouter(settings.kafka, queue, source=f"replay:{path.name}", default_symbol=symbol)
        publisher = KafkaPublisher(producer, queue)
        feeding = asyncio.create_task(replay_frames(read_replay_frames(path, symbol, stats), router, speed))
        await run_publisher_until(publisher, queue, feeding, settings.producer.shutdown_timeout_s * 6)
        return router, publisher
    finally:
        await producer.stop()
