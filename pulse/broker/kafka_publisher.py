"""Publishing to Kafka: a bounded drop-oldest queue in front of one aiokafka producer.

The websocket reader must never wait on Kafka: when the broker is slow or away, the queue keeps
the newest `queue_max` records and drops the oldest (a stale trade is worth less than a fresh one
for a live signal), counting every drop per symbol.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from pulse.settings import KafkaSettings, ProducerSettings


@dataclass(frozen=True, slots=True)
class OutboundRecord:
    topic: str
    key: bytes
    value: bytes
    symbol: str
    # Exchange time of the trade (ms), for exchange -> broker-ack latency.
    exchange_time_ms: int
    enqueued_at: float = field(default_factory=time.perf_counter)


class DropOldestQueue:
    """Bounded FIFO whose `put` never waits: when full it evicts the oldest record."""

    def __init__(self, maxsize: int) -> None:
        self._items: deque[OutboundRecord] = deque()
        self._maxsize = maxsize
        self._ready = asyncio.Event()
        self._closed = False
        self.dropped: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def fill_ratio(self) -> float:
        return len(self._items) / self._maxsize

    def put(self, record: OutboundRecord) -> None:
        if len(self._items) >= self._maxsize:
            evicted = self._items.popleft()
            self.dropped[evicted.symbol] += 1
        self._items.append(record)
        self._ready.set()

    def put_front(self, records: list[OutboundRecord]) -> None:
        """Give failed sends back their place at the head, still within the bound."""
        for record in reversed(records):
            if len(self._items) >= self._maxsize:
                self.dropped[record.symbol] += 1
                continue
            self._items.appendleft(record)
        if self._items:
            self._ready.set()

    def close(self) -> None:
        """No more records will come: `take` returns [] once the queue is empty."""
        self._closed = True
        self._ready.set()

    async def take(self, max_items: int) -> list[OutboundRecord]:
        """Wait for at least one record, then take up to `max_items` in order ([] once closed and empty)."""
        while not self._items:
            if self._closed:
                return []
            self._ready.clear()
            await self._ready.wait()
        count = min(max_items, len(self._items))
        return [self._items.popleft() for _ in range(count)]


@dataclass(slots=True)
class PublishStats:
    published: int = 0
    failed_sends: int = 0
    published_by_symbol: Counter[str] = field(default_factory=Counter)


AckCallback = Callable[[OutboundRecord, float], None]


def build_kafka_producer(kafka: KafkaSettings, producer: ProducerSettings, bootstrap: str) -> AIOKafkaProducer:
    """aiokafka producer tuned for many small records: idempotent, acks=all, compressed, batched."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        client_id="pulse-producer",
        acks="all",
        enable_idempotence=True,
        compression_type=None if producer.compression == "none" else producer.compression,
        linger_ms=producer.linger_ms,
        max_batch_size=producer.max_batch_bytes,
        request_timeout_ms=30_000,
        retry_backoff_ms=200,
    )


class KafkaPublisher:
    """Drains a `DropOldestQueue` into Kafka without awaiting each record's ack."""

    def __init__(self, producer: AIOKafkaProducer, queue: DropOldestQueue,
                 on_ack: AckCallback | None = None, max_in_flight: int = 50_000) -> None:
        self._producer = producer
        self._queue = queue
        self._on_ack = on_ack
        self._in_flight: set[asyncio.Future[object]] = set()
        self._max_in_flight = max_in_flight
        self.stats = PublishStats()

    def _acked(self, record: OutboundRecord, future: asyncio.Future[object]) -> None:
        self._in_flight.discard(future)
        if future.cancelled():
            return
        if future.exception() is not None:
            self.stats.failed_sends += 1
            self._queue.put_front([record])
            return
        self.stats.published += 1
        self.stats.published_by_symbol[record.symbol] += 1
        if self._on_ack is not None:
            self._on_ack(record, time.perf_counter() - record.enqueued_at)

    def _send_done(self, record: OutboundRecord, future: asyncio.Future[object]) -> None:
        self._in_flight.add(future)
        future.add_done_callback(lambda done: self._acked(record, done))

    async def run(self) -> None:
        """Publish until the queue is closed and empty, then flush what is in flight."""
        while batch := await self._queue.take(1000):
            for index, record in enumerate(batch):
                try:
                    future = await self._producer.send(record.topic, record.value, key=record.key)
                except KafkaError:
                    # Broker unreachable long enough for the accumulator to give up: keep the
                    # records (bounded by the queue) and try again after a pause.
                    self.stats.failed_sends += 1
                    self._queue.put_front(batch[index:])
                    await asyncio.sleep(0.5)
                    break
                self._send_done(record, future)
            while len(self._in_flight) > self._max_in_flight:
                await asyncio.wait(set(self._in_flight), return_when=asyncio.FIRST_COMPLETED)
        await self._producer.flush()
        if self._in_flight:
            await asyncio.wait(set(self._in_flight))
