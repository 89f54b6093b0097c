"""Publishing to Kafka: one sender per partition lane, each handing aiokafka ready-made batches.

The websocket reader never waits on Kafka (the lanes in front, `pulse/broker/lanes.py`, drop the
oldest record when full). Each lane has a sender task of its own because aiokafka's `send_batch`
waits while its partition has no leader: during a leader failover only that partition's lane
backs up, and the other partitions keep publishing.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.producer.message_accumulator import BatchBuilder

from pulse.broker.lanes import DropOldestQueue, Lane, OutboundRecord
from pulse.settings import KafkaSettings, ProducerSettings
from pulse.telemetry import Telemetry

# The queue and its records, where the publisher's callers have always imported them from.
__all__ = ["AckCallback", "DropOldestQueue", "KafkaPublisher", "OutboundRecord", "PublishStats",
           "build_kafka_producer"]


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
    messages of ~260 B before compression) sets how much one produce request carries; `linger_ms`
    only matters for records sent one by one. The compression is the settings' (zstd by default:
    of aiokafka's codecs the cheapest in CPU per record here, and the tightest but gzip).
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
    """Starts a `_LaneSender` for every lane the queue makes, and counts what the broker acknowledged.

    Records are appended to aiokafka batches one by one (one C-level append each, not one `send`
    coroutine: what lets one process publish 100k records/s) and never wait for one record's ack.
    In flight per lane: what aiokafka holds for the partition (one request, one pending batch)
    plus the batch being handed over, so memory stays `queue_max` plus a few batches per partition.
    """

    def __init__(self, producer: AIOKafkaProducer, queue: DropOldestQueue,
                 on_ack: AckCallback | None = None, take_max: int = 5_000, retry_pause_s: float = 0.5) -> None:
        self._producer = producer
        self._queue = queue
        self._on_ack = on_ack
        self._take_max = take_max
        self._retry_pause_s = retry_pause_s
        self._senders: list[_LaneSender] = []
        self.stats = PublishStats()

    @property
    def in_flight(self) -> int:
        return sum(sender.in_flight for sender in self._senders)

    def telemetry(self) -> Telemetry:
        return Telemetry(counters={"trades_published": self.stats.published,
                                   "failed_sends": self.stats.failed_sends},
                         gauges={"in_flight": self.in_flight})

    @staticmethod
    def empty_telemetry() -> Telemetry:
        return Telemetry(counters={"trades_published": 0, "failed_sends": 0}, gauges={"in_flight": 0})

    async def run(self) -> None:
        """Publish until the queue is closed and every lane is empty and settled, then flush."""
        try:
            async with asyncio.TaskGroup() as tasks:
                while lanes := await self._queue.new_lanes():
                    for lane in lanes:
                        if lane.partition is None:
                            tasks.create_task(self._learn_partitions(lane))
                        else:
                            sender = _LaneSender(lane, self._producer, self._queue, self.stats, self._acked,
                                                 self._take_max, self._retry_pause_s)
                            self._senders.append(sender)
                            tasks.create_task(sender.run())
        except ExceptionGroup as failed:
            # One lane failing ends them all; its own error, not a group, tells the entry point why.
            raise failed.exceptions[0] from None
        await self._producer.flush()

    async def _learn_partitions(self, lane: Lane) -> None:
        """Ask the broker how many partitions the lane's topic has, until it answers."""
        while True:
            try:
                partitions = await self._producer.partitions_for(lane.topic)
            except KafkaError:
                # Broker away longer than request_timeout: the records wait in their lane (bounded,
                # oldest dropped first) and count as failed sends, as a batch that could not go would.
                self.stats.failed_sends += len(lane.records)
                partitions = set()
            if partitions:  # none: a topic being created; spreading over zero partitions would fail
                self._queue.set_partitions(lane.topic, len(partitions))
                return
            await asyncio.sleep(self._retry_pause_s)

    def _acked(self, records: list[OutboundRecord]) -> None:
        stats = self.stats
        stats.published += len(records)
        stats.last_ack_at = time.monotonic()
        by_symbol = stats.published_by_symbol
        on_ack = self._on_ack
        acked_at = time.perf_counter()
        for record in records:
            by_symbol[record.symbol] += 1
            if on_ack is not None:
                on_ack(record, acked_at - record.enqueued_at)


class _LaneSender:
    """Sends one lane's records to their partition, in order, until the queue is closed and the
    lane is empty and settled.

    A batch the broker does not acknowledge goes back to the head of the lane, within the queue's
    bound. Order per symbol is what the lane keeps: once a batch failed, nothing newer of the lane
    is handed over, and the sender waits until every batch it did hand over has settled, so that
    all of them come back in the order they were sent, ahead of what was not handed over.
    """

    def __init__(self, lane: Lane, producer: AIOKafkaProducer, queue: DropOldestQueue, stats: PublishStats,
                 acked: Callable[[list[OutboundRecord]], None], take_max: int, retry_pause_s: float) -> None:
        self._lane = lane
        self._producer = producer
        self._queue = queue
        self._stats = stats
        self._acked = acked
        self._take_max = take_max
        self._retry_pause_s = retry_pause_s
        self._futures: set[asyncio.Future[object]] = set()
        self._returned: list[OutboundRecord] = []
        self.in_flight = 0

    async def run(self) -> None:
        lane, queue = self._lane, self._queue
        while True:
            while not lane.records and not self._returned and not queue.closed:
                await lane.wait()
            if self._returned:
                await self._give_back()
                continue
            records = queue.take_from(lane, self._take_max)
            if records:
                await self._send(records)
            elif self._futures:
                # Closed and empty: what is still in flight may yet come back to be sent again.
                await asyncio.wait(self._futures)
            else:
                return

    async def _give_back(self) -> None:
        await self._settle()
        returned, self._returned = self._returned, []
        self._queue.put_front(self._lane, returned)
        await asyncio.sleep(self._retry_pause_s)

    async def _settle(self) -> None:
        if self._futures:
            await asyncio.wait(self._futures)

    async def _send(self, records: list[OutboundRecord]) -> None:
        handed_over = 0
        try:
            for builder, batch in self._batches(records):
                if self._returned:
                    break  # a batch of this lane failed: nothing newer may overtake it
                await self._submit(builder, batch)
                handed_over += len(batch)
        except KafkaError:
            # No room for the batch within request_timeout (no leader, broker away).
            self._stats.failed_sends += len(records) - handed_over
        if handed_over < len(records):
            await self._settle()
            self._returned += records[handed_over:]

    def _batches(self, records: list[OutboundRecord]) -> Iterator[tuple[BatchBuilder, list[OutboundRecord]]]:
        """The records cut into aiokafka batches of up to `max_batch_bytes`, in order."""
        create = self._producer.create_batch
        builder = create()
        batch: list[OutboundRecord] = []
        for record in records:
            if builder.append(key=record.key, value=record.value, timestamp=None) is None:
                yield builder, batch
                builder, batch = create(), []
                builder.append(key=record.key, value=record.value, timestamp=None)
            batch.append(record)
        yield builder, batch

    async def _submit(self, builder: BatchBuilder, batch: list[OutboundRecord]) -> None:
        lane = self._lane
        future: asyncio.Future[object] = await self._producer.send_batch(builder, lane.topic, partition=lane.partition)
        self._futures.add(future)
        self.in_flight += len(batch)
        future.add_done_callback(functools.partial(self._settled, batch))

    def _settled(self, batch: list[OutboundRecord], future: asyncio.Future[object]) -> None:
        self._futures.discard(future)
        self.in_flight -= len(batch)
        if future.cancelled():
            return
        if future.exception() is not None:
            self._stats.failed_sends += len(batch)
            self._returned += batch
            self._lane.wake()
            return
        self._acked(batch)
