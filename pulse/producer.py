"""The producer service: frames from a source -> validated trades -> bounded queue -> Kafka.

Every source (live websocket, replay file, synthetic) hands over raw frames; this module parses
each one with the single Binance schema, routes broken ones to the dead-letter topic with their
reason, and enqueues trades keyed by symbol. The reader side never awaits Kafka.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp

from pulse.broker.kafka_publisher import (
    DropOldestQueue,
    KafkaPublisher,
    OutboundRecord,
    PublishStats,
    build_kafka_producer,
)
from pulse.broker.local_kafka import ensure_topics
from pulse.broker.trade_message import encode_dead_letter, encode_gap, encode_trade
from pulse.producer_metrics import LatencyHistogram, MetricsSnapshot, start_metrics_server
from pulse.settings import KafkaSettings, PulseSettings
from pulse.source.aggregate_ids import AggregateIdSequencer, Gap
from pulse.source.binance_rest import BinanceRest, RestError, WeightBudget
from pulse.source.binance_schema import BinanceAggTrade, InvalidFrame, NotATrade, Trade, parse_frame, to_trade
from pulse.source.binance_ws import BinanceStream
from pulse.source.replay_file import RawFrame, ReplayStats, read_replay_frames
from pulse.source.synthetic import SyntheticTrades

log = logging.getLogger(__name__)


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
                 default_symbol: str | None = None, sequencer: AggregateIdSequencer | None = None,
                 on_gap: Callable[[str], None] | None = None) -> None:
        self._kafka = kafka
        self._queue = queue
        self._source = source
        self._default_symbol = default_symbol
        # Live only: recordings are gap-free and replayed as they are.
        self._sequencer = sequencer
        self._on_gap = on_gap
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
        if self._sequencer is None:
            self.publish(trade)
            return trade
        self.publish_all(self._sequencer.accept(trade))
        if self._on_gap is not None and self._sequencer.held_count(trade.symbol):
            self._on_gap(trade.symbol)
        return trade

    def is_trade(self, frame: str | bytes) -> bool:
        """`route` for the websocket reader, whose watchdog only needs to know a trade came."""
        return self.route(frame) is not None

    def publish_all(self, trades: Iterable[Trade]) -> None:
        for trade in trades:
            self.publish(trade)

    async def wait_for_room(self, fill_ratio: float = 0.5) -> None:
        # Polled: the queue signals arrivals, not departures, and a 1 ms poll costs nothing here.
        while self._queue.fill_ratio > fill_ratio:  # noqa: ASYNC110
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


@dataclass(slots=True)
class GapCounters:
    found: int = 0
    filled: int = 0
    unfilled: int = 0
    trades_filled: int = 0
    ids_lost: int = 0
    rest_errors: int = 0


class GapFiller:
    """Recovers the aggregate ids a symbol skipped on the wire, from REST, while later trades wait.

    One task per symbol with a gap: it waits `gap_grace_s` (during a rotation the other connection
    may still deliver the ids), then asks REST from the first missing id, and feeds what comes back
    through the same sequencer, so the symbol's trades leave in id order. Ids REST does not return
    (or not before `gap_fill_timeout_s`) become a gap event on the gaps topic, and the held trades
    are released after it.
    """

    def __init__(self, settings: PulseSettings, sequencer: AggregateIdSequencer, router: FrameRouter,
                 queue: DropOldestQueue, rest: BinanceRest | None) -> None:
        self._producer_settings = settings.producer
        self._gaps_topic = settings.kafka.gaps_topic
        self._sequencer = sequencer
        self._router = router
        self._queue = queue
        self._rest = rest
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.counters = GapCounters()

    @property
    def pending(self) -> bool:
        return bool(self._tasks)

    def notice(self, symbol: str) -> None:
        if symbol not in self._tasks:
            self.counters.found += 1
            self._tasks[symbol] = asyncio.create_task(self._fill(symbol))

    async def _fetch(self, gap: Gap, deadline: float) -> tuple[list[BinanceAggTrade], str]:
        if self._rest is None:
            return [], "no REST source"
        try:
            trades = await asyncio.wait_for(self._rest.agg_trades(gap.symbol, gap.first_missing_id, gap.size),
                                            timeout=max(0.0, deadline - time.monotonic()))
        except (RestError, TimeoutError) as error:
            self.counters.rest_errors += 1
            return [], f"REST failed: {error}" if str(error) else "REST timed out"
        return [t for t in trades if t.a <= gap.last_missing_id], "ids not returned by REST"

    async def _fill(self, symbol: str) -> None:
        lost_any = False
        try:
            await asyncio.sleep(self._producer_settings.gap_grace_s)
            deadline = time.monotonic() + self._producer_settings.gap_fill_timeout_s
            while (gap := self._sequencer.gap(symbol)) is not None:
                recovered, problem = await self._fetch(gap, deadline)
                # The wire may have closed part of the gap while REST was asked: start again from
                # what is still missing rather than act on a stale range.
                current = self._sequencer.gap(symbol)
                if current is None or current.first_missing_id != gap.first_missing_id:
                    continue
                if recovered and recovered[0].a == gap.first_missing_id:
                    received = now_ms()
                    for wire in recovered:
                        self._router.publish_all(self._sequencer.accept(to_trade(wire, received)))
                    self.counters.trades_filled += len(recovered)
                    continue
                lost_to = recovered[0].a - 1 if recovered else gap.last_missing_id
                self._publish_gap(Gap(symbol, gap.first_missing_id, lost_to), problem)
                self._router.publish_all(self._sequencer.give_up(symbol, lost_to))
                lost_any = True
        finally:
            del self._tasks[symbol]
        if lost_any:
            self.counters.unfilled += 1
        else:
            self.counters.filled += 1

    def _publish_gap(self, gap: Gap, reason: str) -> None:
        detected = now_ms()
        self.counters.ids_lost += gap.size
        log.warning("gap not fillable", extra={"event": "gap_unfilled", "symbol": gap.symbol,
                                                "first_missing_id": gap.first_missing_id,
                                                "last_missing_id": gap.last_missing_id, "reason": reason})
        self._queue.put(OutboundRecord(
            topic=self._gaps_topic, key=gap.symbol.encode(),
            value=encode_gap(gap.symbol, gap.first_missing_id, gap.last_missing_id, reason, detected),
            symbol=gap.symbol, exchange_time_ms=detected,
        ))

    async def stop(self) -> None:
        """Shutting down: what is still missing is recorded as lost, held trades are released."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for symbol in self._sequencer.symbols():
            while (gap := self._sequencer.gap(symbol)) is not None:
                self._publish_gap(gap, "producer stopped before the gap was filled")
                self._router.publish_all(self._sequencer.give_up(symbol, gap.last_missing_id))
                self.counters.unfilled += 1


SourceKind = Literal["live", "replay", "synthetic"]


@dataclass(frozen=True, slots=True)
class SourceChoice:
    kind: SourceKind
    input: Path | None = None  # replay
    symbol: str | None = None  # replay of archive CSV, which names no symbol
    speed: float | None = None  # replay: multiple of the recorded pace, None = as fast as possible
    rate_per_s: float = 1000.0  # synthetic
    total: int | None = None  # synthetic: stop after this many frames

    @property
    def name(self) -> str:
        if self.kind == "replay" and self.input is not None:
            return f"replay:{self.input.name}"
        return self.kind


class ProducerService:
    """One running producer: a source, the router, the queue, the publisher and their counters."""

    def __init__(self, settings: PulseSettings, source: SourceChoice) -> None:
        self._settings = settings
        self.source = source
        self.queue = DropOldestQueue(settings.producer.queue_max)
        self.sequencer = AggregateIdSequencer() if source.kind == "live" else None
        self._gap_filler: GapFiller | None = None
        self.router = FrameRouter(settings.kafka, self.queue, source=source.name, default_symbol=source.symbol,
                                  sequencer=self.sequencer, on_gap=self._notice_gap)
        self.stream: BinanceStream | None = None
        self.publisher: KafkaPublisher | None = None
        self.rest: BinanceRest | None = None
        self.publish_latency = LatencyHistogram()
        self.exchange_to_ack = LatencyHistogram()
        self.source_running = False
        self.metrics_port: int | None = None

    @property
    def gaps(self) -> GapCounters:
        return self._gap_filler.counters if self._gap_filler is not None else GapCounters()

    def gaps_pending(self) -> bool:
        return self._gap_filler is not None and self._gap_filler.pending

    def _notice_gap(self, symbol: str) -> None:
        if self._gap_filler is not None:
            self._gap_filler.notice(symbol)

    def _acked(self, record: OutboundRecord, enqueue_to_ack_s: float) -> None:
        self.publish_latency.observe(enqueue_to_ack_s)
        if record.topic == self._settings.kafka.trades_topic:
            self.exchange_to_ack.observe(max(0.0, (now_ms() - record.exchange_time_ms) / 1000.0))

    def connected(self) -> bool:
        if self.stream is not None:
            return self.stream.connected
        return self.source_running

    def health(self) -> dict[str, Any]:
        publisher = self.publisher
        waiting = len(self.queue) + (publisher.in_flight if publisher is not None else 0)
        last_ack = publisher.stats.last_ack_at if publisher is not None else None
        ack_age = time.monotonic() - last_ack if last_ack is not None else None
        publishing = publisher is not None and (
            waiting == 0 or (ack_age is not None and ack_age < self._settings.producer.health_ack_stale_s))
        return {"ready": self.connected() and publishing, "connected": self.connected(), "publishing": publishing,
                "queue_depth": len(self.queue), "last_ack_age_s": ack_age}

    def snapshot(self) -> MetricsSnapshot:
        counters, gaps = self.router.counters, self.gaps
        stats = self.publisher.stats if self.publisher is not None else PublishStats()
        reconnects = self.stream.stats.reconnect_reasons if self.stream is not None else {}
        duplicates = self.sequencer.duplicates.total() if self.sequencer is not None else 0
        return MetricsSnapshot(
            counters={"frames_received": counters.frames, "trades_published": stats.published,
                      "duplicates": duplicates, "gaps_found": gaps.found, "gaps_filled": gaps.filled,
                      "gaps_unfilled": gaps.unfilled, "trades_filled": gaps.trades_filled,
                      "ids_lost": gaps.ids_lost, "failed_sends": stats.failed_sends},
            labelled_counters={("frames_invalid", "reason"): dict(counters.invalid_reasons),
                               ("records_dropped", "symbol"): dict(self.queue.dropped),
                               ("reconnects", "reason"): dict(reconnects)},
            gauges={"queue_depth": len(self.queue),
                    "in_flight": self.publisher.in_flight if self.publisher is not None else 0,
                    "connected": float(self.connected()), "ready": float(self.health()["ready"])},
            histograms={"publish_latency_seconds": self.publish_latency,
                        "exchange_to_ack_seconds": self.exchange_to_ack},
        )

    async def _feed(self, stop: asyncio.Event) -> None:
        source = self.source
        self.source_running = True
        try:
            if source.kind == "live":
                assert self.stream is not None
                await self.stream.run(stop)
            elif source.kind == "replay":
                if source.input is None:
                    raise ValueError("the replay source needs an input file")
                replaying = asyncio.create_task(replay_frames(
                    read_replay_frames(source.input, source.symbol), self.router, source.speed))
                stopping = asyncio.create_task(stop.wait())
                await asyncio.wait({replaying, stopping}, return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
                replaying.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await replaying
            else:
                generator = SyntheticTrades(self._settings.producer.symbols, source.rate_per_s)
                await generator.run(self.router.route, stop, source.total)
        finally:
            self.source_running = False

    async def run(self, bootstrap: str, stop: asyncio.Event) -> None:
        """Run until the source ends or `stop` is set; then drain the queue and flush, within bounds."""
        settings = self._settings
        producer = build_kafka_producer(settings.kafka, settings.producer, bootstrap)
        await producer.start()
        try:
            async with contextlib.AsyncExitStack() as stack:
                if self.source.kind == "live":
                    session = await stack.enter_async_context(aiohttp.ClientSession(
                        timeout=aiohttp.ClientTimeout(total=10)))
                    self.rest = BinanceRest(session, settings.producer.rest_base_url,
                                            settings.producer.rest_agg_trades_path,
                                            WeightBudget(settings.producer.rest_weight_budget_per_min))
                    assert self.sequencer is not None
                    self._gap_filler = GapFiller(settings, self.sequencer, self.router, self.queue, self.rest)
                    self.stream = BinanceStream(settings.producer, self.router.is_trade)
                self.publisher = KafkaPublisher(producer, self.queue, on_ack=self._acked)
                await self._publish_while_feeding(self.publisher, stop)
        finally:
            # With the broker gone for good, stop() would keep retrying: the drain bound applies here too.
            try:
                await asyncio.wait_for(producer.stop(), timeout=settings.producer.shutdown_timeout_s)
            except TimeoutError:
                log.error("producer did not stop in time", extra={"event": "stop_timeout"})

    async def _publish_while_feeding(self, publisher: KafkaPublisher, stop: asyncio.Event) -> None:
        publishing = asyncio.create_task(publisher.run())
        feeding = asyncio.create_task(self._feed(stop))
        try:
            done, _ = await asyncio.wait({publishing, feeding}, return_when=asyncio.FIRST_COMPLETED)
            if publishing in done:
                publishing.result()  # the publisher only ends early by failing: surface why
            await feeding
        finally:
            stop.set()
            feeding.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feeding
            if self._gap_filler is not None:
                await self._gap_filler.stop()
            self.queue.close()
            log.info("draining", extra={"event": "draining", "queue_depth": len(self.queue)})
            try:
                await asyncio.wait_for(publishing, timeout=self._settings.producer.shutdown_timeout_s)
            except TimeoutError:
                log.error("drain timed out", extra={"event": "drain_timeout", "queue_depth": len(self.queue)})


async def serve_producer(settings: PulseSettings, bootstrap: str, source: SourceChoice,
                         stop: asyncio.Event) -> ProducerService:
    """The producer with its metrics endpoint: what `pulse produce` runs."""
    service = ProducerService(settings, source)
    await ensure_topics(bootstrap, [settings.kafka.trades_topic, settings.kafka.dead_letter_topic,
                                    settings.kafka.gaps_topic], settings.kafka.partitions)
    runner, service.metrics_port = await start_metrics_server(service.snapshot, service.health,
                                                              settings.producer.metrics_port,
                                                              settings.producer.metrics_host)
    try:
        await service.run(bootstrap, stop)
    finally:
        await runner.cleanup()
    return service
