"""The producer: a source -> the router -> the bounded drop-oldest queue -> Kafka.

One `ProducerService` run loop serves every source (live Binance, replay, synthetic): it sets the
source up, runs it and the publisher side by side, and on stop (or when the source is exhausted)
lets the source hand over what it still holds, then drains the queue and flushes, within bounds.
The router only encodes and enqueues; the source never waits on Kafka.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from typing import Any

from pulse.broker.kafka_publisher import KafkaPublisher, build_kafka_producer
from pulse.broker.lanes import DropOldestQueue, OutboundRecord
from pulse.model import DeadLetter, GapEvent, Trade, encode_dead_letter, encode_gap_event, encode_trade
from pulse.settings import KafkaSettings, PulseSettings
from pulse.source.base import Source, now_ms
from pulse.telemetry import LatencyHistogram, Telemetry, collect, start_metrics_server

log = logging.getLogger(__name__)


class Router:
    """The sources' `Output`: trades to the trades topic, dead letters and gap events to theirs."""

    def __init__(self, kafka: KafkaSettings, queue: DropOldestQueue) -> None:
        self._trades_topic = kafka.trades_topic
        self._dead_letter_topic = kafka.dead_letter_topic
        self._gaps_topic = kafka.gaps_topic
        self._queue = queue
        self.trades = 0
        self.gap_events = 0
        self.invalid_reasons: Counter[str] = Counter()
        # One example per reason, for the summary of a run that went wrong.
        self.invalid_examples: dict[str, str] = {}
        self.trades_by_market: Counter[tuple[str, str]] = Counter()  # (venue, symbol)

    @property
    def invalid(self) -> int:
        return self.invalid_reasons.total()

    def trade(self, trade: Trade) -> None:
        self.trades += 1
        self.trades_by_market[trade.venue, trade.symbol] += 1
        self._queue.put(OutboundRecord(topic=self._trades_topic, key=trade.symbol.encode(), value=encode_trade(trade),
                                       symbol=trade.symbol, exchange_time_ms=trade.trade_time_ms))

    def dead_letter(self, letter: DeadLetter) -> None:
        # The reason's head ("field 'p'", "not JSON") labels the counter; the full reason is in the record.
        kind = letter.reason.split(":")[0]
        self.invalid_reasons[kind] += 1
        if kind not in self.invalid_examples:
            raw = letter.raw.decode("utf-8", "replace") if isinstance(letter.raw, bytes) else letter.raw
            self.invalid_examples[kind] = f"{letter.reason} | {raw[:120]}"
        self._queue.put(OutboundRecord(topic=self._dead_letter_topic, key=letter.source.encode(),
                                       value=encode_dead_letter(letter), symbol="(invalid)",
                                       exchange_time_ms=letter.received_ms))

    def gap(self, event: GapEvent) -> None:
        self.gap_events += 1
        self._queue.put(OutboundRecord(topic=self._gaps_topic, key=event.gap.symbol.encode(),
                                       value=encode_gap_event(event), symbol=event.gap.symbol,
                                       exchange_time_ms=event.detected_ms))

    async def room(self, fill_ratio: float = 0.5) -> None:
        await self._queue.room(fill_ratio)

    def telemetry(self) -> Telemetry:
        return Telemetry(counters={"trades_received": self.trades, "gap_events": self.gap_events},
                         labelled_counters={("frames_invalid", "reason"): dict(self.invalid_reasons)})


class ProducerService:
    """One running producer: a source, the router, the queue, the publisher and their telemetry."""

    def __init__(self, settings: PulseSettings, source: Source) -> None:
        self._settings = settings
        self.source = source
        self.queue = DropOldestQueue(settings.producer.queue_max)
        self.router = Router(settings.kafka, self.queue)
        self.publisher: KafkaPublisher | None = None
        self.publish_latency = LatencyHistogram()
        self.exchange_to_ack = LatencyHistogram()
        self.metrics_port: int | None = None

    def _acked(self, record: OutboundRecord, enqueue_to_ack_s: float) -> None:
        self.publish_latency.observe(enqueue_to_ack_s)
        if record.topic == self._settings.kafka.trades_topic:
            self.exchange_to_ack.observe(max(0.0, (now_ms() - record.exchange_time_ms) / 1000.0))

    @property
    def published(self) -> int:
        return self.publisher.stats.published if self.publisher is not None else 0

    def health(self) -> dict[str, Any]:
        publisher = self.publisher
        waiting = len(self.queue) + (publisher.in_flight if publisher is not None else 0)
        last_ack = publisher.stats.last_ack_at if publisher is not None else None
        ack_age = time.monotonic() - last_ack if last_ack is not None else None
        publishing = publisher is not None and (
            waiting == 0 or (ack_age is not None and ack_age < self._settings.producer.health_ack_stale_s))
        connected = self.source.connected()
        return {"ready": connected and publishing, "source": self.source.name, "connected": connected,
                "publishing": publishing, "queue_depth": len(self.queue), "last_ack_age_s": ack_age,
                "problem": self.source.problem()}

    def telemetry(self) -> Telemetry:
        health = self.health()
        return Telemetry(
            gauges={"connected": float(health["connected"]), "ready": float(health["ready"])},
            histograms={"publish_latency_seconds": self.publish_latency,
                        "exchange_to_ack_seconds": self.exchange_to_ack})

    def snapshot(self) -> Telemetry:
        """Everything /metrics exports: each component's own counters, collected."""
        publisher = self.publisher or _NotStarted()
        return collect([self.source, self.router, self.queue, publisher, self])

    async def serve(self, bootstrap: str, stop: asyncio.Event) -> ProducerService:
        """`run` with the producer's /metrics and /health, as every Pulse producer runs."""
        producer = self._settings.producer
        runner, self.metrics_port = await start_metrics_server(self.snapshot, self.health, producer.metrics_port,
                                                               producer.metrics_host)
        try:
            await self.run(bootstrap, stop)
        finally:
            await runner.cleanup()
        return self

    async def run(self, bootstrap: str, stop: asyncio.Event) -> None:
        """Run until the source ends or `stop` is set; then drain the queue and flush, within bounds."""
        settings = self._settings
        await self.source.setup()
        producer = build_kafka_producer(settings.kafka, settings.producer, bootstrap)
        try:
            await producer.start()
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
        feeding = asyncio.create_task(self.source.run(self.router, stop))
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
            await self.source.stop()  # the live source releases what waits behind gaps, as gap events
            self.queue.close()
            log.info("draining", extra={"event": "draining", "queue_depth": len(self.queue)})
            try:
                await asyncio.wait_for(publishing, timeout=self._settings.producer.shutdown_timeout_s)
            except TimeoutError:
                log.error("drain timed out", extra={"event": "drain_timeout", "queue_depth": len(self.queue)})


class _NotStarted:
    """The publisher's counters before it exists, so the first scrape already lists every name."""

    def telemetry(self) -> Telemetry:
        return KafkaPublisher.empty_telemetry()
