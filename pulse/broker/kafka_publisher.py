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

import msgspec
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2
from aiokafka.producer.message_accumulator import BatchBuilder

from pulse.settings import KafkaSettings, ProducerSettings
from pulse.telemetry import Telemetry


class OutboundRecord(msgspec.Struct, frozen=True):
    topic: str
    key: bytes
    value: bytes
    symbol: str
    # Exchange time of the trade (ms), for exchange -> broker-ack latency.
    exchange_time_ms: int
    enqueued_at: float = msgspec.field(default_factory=time.perf_counter)


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

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """No more records will come: `take` returns [] once the queue is empty."""
        self._closed = True
        self._ready.set()

    def telemetry(self) -> Telemetry:
        return Telemetry(labelled_counters={("records_dropped", "symbol"): dict(self.dropped)},
                         gauges={"queue_depth": len(self._items)})

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
    # Wall time of the last broker ack (time.monotonic), for /health; None until the first.
    last_ack_at: float | None = None
    published_by_symbol: Counter[str] = field(default_factory=Counter)


AckCallback = Callable[[OutboundRecord, float], None]


def build_kafka_producer(kafka: KafkaSettings, producer: ProducerSettings, bootstrap: str) -> AIOKafkaProducer:
    """aiokafka producer tuned for many small records: idempotent, acks=all, compressed, batched.

    `KafkaPublisher` hands aiokafka whole batches, so `max_batch_bytes` (256 KiB: ~1,000 trade
    messages of ~250 B before lz4) sets how much one produce request carries; `linger_ms` only
    matters for records sent one by one. lz4 compresses these repetitive JSON records ~4x at a
    CPU cost far below zstd's, which matters more here than the last few percent of bytes.
    """
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        client_id="pulse-producer",
        acks="all",
        enable_idempotence=True,
        compression_type=None if producer.compression == "none" else producer.compression,
        linger_ms=producer.linger_ms,
        max_batch_size=producer.max_batch_bytes,
        request_timeout_ms=producer.request_timeout_ms,
        retry_backoff_ms=200,
    )


class KafkaPublisher:
    """Drains a `DropOldestQueue` into Kafka in whole batches, never awaiting one record's ack.

    Records taken together are grouped by topic partition (key = symbol, Kafka's murmur2
    partitioner, so a symbol keeps its partition and its order) and handed to aiokafka as
    ready-made batches: one append per record instead of one `send` coroutine, which is what
    lets one process publish 100k records/s. A batch the broker does not acknowledge goes
    back to the head of the queue, within its bound, and is sent again once the broker is back.
    """

    def __init__(self, producer: AIOKafkaProducer, queue: DropOldestQueue,
                 on_ack: AckCallback | None = None, max_in_flight: int = 50_000,
                 take_max: int = 5_000, retry_pause_s: float = 0.5) -> None:
        self._producer = producer
        self._queue = queue
        self._on_ack = on_ack
        self._in_flight: dict[asyncio.Future[object], int] = {}
        self._in_flight_records = 0
        self._max_in_flight = max_in_flight
        self._take_max = take_max
        self._retry_pause_s = retry_pause_s
        self._partitions: dict[str, list[int]] = {}
        self._partition_of: dict[tuple[str, bytes], int] = {}
        self.stats = PublishStats()

    @property
    def in_flight(self) -> int:
        return self._in_flight_records

    def telemetry(self) -> Telemetry:
        return Telemetry(counters={"trades_published": self.stats.published,
                                   "failed_sends": self.stats.failed_sends},
                         gauges={"in_flight": self._in_flight_records})

    @staticmethod
    def empty_telemetry() -> Telemetry:
        return Telemetry(counters={"trades_published": 0, "failed_sends": 0}, gauges={"in_flight": 0})

    async def _partition(self, topic: str, key: bytes) -> int:
        partition = self._partition_of.get((topic, key))
        if partition is None:
            partitions = self._partitions.get(topic)
            if partitions is None:
                partitions = sorted(await self._producer.partitions_for(topic))
                self._partitions[topic] = partitions
            partition = partitions[(murmur2(key) & 0x7FFFFFFF) % len(partitions)]
            self._partition_of[(topic, key)] = partition
        return partition

    def _acked(self, records: list[OutboundRecord], future: asyncio.Future[object]) -> None:
        self._in_flight.pop(future, None)
        self._in_flight_records -= len(records)
        if future.cancelled():
            return
        if future.exception() is not None:
            self.stats.failed_sends += len(records)
            self._queue.put_front(records)
            return
        self.stats.published += len(records)
        self.stats.last_ack_at = time.monotonic()
        by_symbol = self.stats.published_by_symbol
        on_ack = self._on_ack
        acked_at = time.perf_counter()
        for record in records:
            by_symbol[record.symbol] += 1
            if on_ack is not None:
                on_ack(record, acked_at - record.enqueued_at)

    async def _submit(self, builder: BatchBuilder, records: list[OutboundRecord], topic: str,
                      partition: int) -> None:
        future: asyncio.Future[object] = await self._producer.send_batch(builder, topic, partition=partition)
        self._in_flight[future] = len(records)
        self._in_flight_records += len(records)
        future.add_done_callback(lambda done: self._acked(records, done))

    async def _send(self, taken: list[OutboundRecord]) -> None:
        submitted: set[int] = set()
        try:
            groups: dict[tuple[str, int], list[OutboundRecord]] = {}
            partition_of = self._partition_of
            for record in taken:
                # A plain lookup first: awaiting a coroutine per record would cost more than the send.
                partition = partition_of.get((record.topic, record.key))
                if partition is None:
                    partition = await self._partition(record.topic, record.key)
                groups.setdefault((record.topic, partition), []).append(record)
            for (topic, partition), records in groups.items():
                builder = self._producer.create_batch()
                in_builder: list[OutboundRecord] = []
                for record in records:
                    if builder.append(key=record.key, value=record.value, timestamp=None) is None:
                        await self._submit(builder, in_builder, topic, partition)
                        submitted.update(map(id, in_builder))
                        builder, in_builder = self._producer.create_batch(), []
                        builder.append(key=record.key, value=record.value, timestamp=None)
                    in_builder.append(record)
                await self._submit(builder, in_builder, topic, partition)
                submitted.update(map(id, in_builder))
        except KafkaError:
            # Broker away longer than request_timeout (no metadata, no room for a batch): keep what
            # was not handed over (bounded by the queue, oldest dropped first), retry after a pause.
            unsent = [record for record in taken if id(record) not in submitted]
            self.stats.failed_sends += len(unsent)
            self._queue.put_front(unsent)
            await asyncio.sleep(self._retry_pause_s)

    async def run(self) -> None:
        """Publish until the queue is closed and empty, then flush what is in flight."""
        while taken := await self._queue.take(self._take_max):
            await self._send(taken)
            while self._in_flight_records > self._max_in_flight:
                await asyncio.wait(set(self._in_flight), return_when=asyncio.FIRST_COMPLETED)
            if not self._queue and self._in_flight and self._queue.closed:
                # Closing: failed batches come back to the queue only when their futures settle.
                await asyncio.wait(set(self._in_flight))
        await self._producer.flush()
        if self._in_flight:
            await asyncio.wait(set(self._in_flight))
