"""The queue between the router and Kafka: one lane per topic partition, bounded as a whole.

Why lanes: aiokafka holds one pending batch per partition, and `send_batch` waits while that
partition has no leader. One queue drained by one sender therefore stalled every partition behind
the one in a leader failover. Records are put in their partition's lane as they are queued, so
each lane gets a sender of its own (`KafkaPublisher`) and a partition without a leader holds back
only its own records.

Why one bound over all lanes: `queue_max` is what a user sizes (trade rate x outage), and the
reader must never wait on Kafka. When the bound is reached, the oldest record of the whole queue
goes, whichever lane holds it: during a failover that is the stalled partition's stalest trade.
Every drop is counted per symbol.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque

import msgspec
from aiokafka.partitioner import murmur2

from pulse.telemetry import Telemetry


class OutboundRecord(msgspec.Struct, frozen=True):
    topic: str
    key: bytes
    value: bytes
    symbol: str
    # Exchange time of the trade (ms), for exchange -> broker-ack latency.
    exchange_time_ms: int
    # Also the age that drop-oldest compares across lanes: records are made just before they are queued.
    enqueued_at: float = msgspec.field(default_factory=time.perf_counter)


def partition_for(key: bytes, partitions: int) -> int:
    """Kafka's default partitioner (murmur2 of the key), as the Java client computes it, so that a
    symbol lands on the partition any other Kafka producer would pick for it."""
    hashed: int = murmur2(key)
    return (hashed & 0x7FFFFFFF) % partitions


class Lane:
    """The queued records of one topic partition, oldest first.

    `partition` is None while the topic's partition count is not known yet: its records wait in
    arrival order until `DropOldestQueue.set_partitions` spreads them over their partitions' lanes.
    """

    __slots__ = ("_ready", "partition", "records", "topic")

    def __init__(self, topic: str, partition: int | None) -> None:
        self.topic = topic
        self.partition = partition
        self.records: deque[OutboundRecord] = deque()
        self._ready = asyncio.Event()

    def __repr__(self) -> str:
        return f"Lane({self.topic!r}, {self.partition}, {len(self.records)} records)"

    def wake(self) -> None:
        self._ready.set()

    async def wait(self) -> None:
        """Until a record arrives or someone calls `wake` (the queue closed, a send came back)."""
        self._ready.clear()
        await self._ready.wait()


class DropOldestQueue:
    """Bounded lanes whose `put` never waits: when the whole queue is full it evicts the oldest record."""

    def __init__(self, maxsize: int) -> None:
        self._maxsize = maxsize
        self._size = 0
        self._lanes: dict[tuple[str, int | None], Lane] = {}
        self._partitions: dict[str, int] = {}
        # A plain dict lookup per record: the partitioner runs once per (topic, key), not per record.
        self._lane_of: dict[tuple[str, bytes], Lane] = {}
        self._new: list[Lane] = []
        self._changed = asyncio.Event()
        self._closed = False
        self.dropped: Counter[str] = Counter()
        # Set when the queue drained to `_room_at` records: what a waiting file source waits for.
        self._room = asyncio.Event()
        self._room_at: float | None = None

    def __len__(self) -> int:
        return self._size

    @property
    def fill_ratio(self) -> float:
        return self._size / self._maxsize

    @property
    def lanes(self) -> list[Lane]:
        return list(self._lanes.values())

    def put(self, record: OutboundRecord) -> None:
        lane = self._lane_of.get((record.topic, record.key)) or self._route(record.topic, record.key)
        if self._size >= self._maxsize:
            self._drop_oldest()
        records = lane.records
        records.append(record)
        self._size += 1
        if len(records) == 1:
            # Only an empty lane can have its sender waiting; waking it on every record cost 10% of a put.
            lane.wake()

    def put_front(self, lane: Lane, records: list[OutboundRecord]) -> None:
        """Give failed sends back their place at the head of their lane, still within the bound."""
        lane.records.extendleft(reversed(records))
        self._size += len(records)
        while self._size > self._maxsize:
            self._drop_oldest()
        lane.wake()

    def take_from(self, lane: Lane, max_items: int) -> list[OutboundRecord]:
        """Up to `max_items` of the lane's records, oldest first, without waiting."""
        records = lane.records
        count = min(max_items, len(records))
        self._size -= count
        if self._room_at is not None and self._size <= self._room_at:
            self._room_at = None
            self._room.set()
        return [records.popleft() for _ in range(count)]

    async def room(self, fill_ratio: float) -> None:
        """Returns once the queue is at most `fill_ratio` full (or closed): sources that can wait (a
        file) wait here, woken by the publisher's take, instead of polling."""
        while self._size > fill_ratio * self._maxsize and not self._closed:
            self._room_at = fill_ratio * self._maxsize
            self._room.clear()
            await self._room.wait()

    async def take(self, max_items: int) -> list[OutboundRecord]:
        """Up to `max_items` of what is queued now, lane by lane, without waiting: for readers without
        a publisher (tests, the benchmark's CPU figure), which look at what the router queued."""
        taken: list[OutboundRecord] = []
        for lane in self.lanes:
            taken += self.take_from(lane, max_items - len(taken))
        return taken

    def set_partitions(self, topic: str, partitions: int) -> None:
        """The topic's partition count is known: its waiting records move to their partitions' lanes,
        in arrival order, and later records go there directly."""
        self._partitions[topic] = partitions
        waiting = self._lanes.pop((topic, None), None)
        # The keys of the topic pointed at the waiting lane until now.
        self._lane_of = {route: lane for route, lane in self._lane_of.items() if route[0] != topic}
        lane_of, route = self._lane_of, self._route
        for record in waiting.records if waiting is not None else ():
            (lane_of.get((topic, record.key)) or route(topic, record.key)).records.append(record)

    async def new_lanes(self) -> list[Lane]:
        """Lanes made since the last call; waits for one. [] once the queue is closed and no record
        waits for its topic's partitions (the lanes they would go to would be new)."""
        while not self._new and not (self._closed and all(p is not None for _, p in self._lanes)):
            self._changed.clear()
            await self._changed.wait()
        new, self._new = self._new, []
        return new

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """No more records will come: each lane's sender ends once its lane is empty."""
        self._closed = True
        self._changed.set()
        self._room.set()
        for lane in self._lanes.values():
            lane.wake()

    def telemetry(self) -> Telemetry:
        return Telemetry(labelled_counters={("records_dropped", "symbol"): dict(self.dropped)},
                         gauges={"queue_depth": self._size})

    def _route(self, topic: str, key: bytes) -> Lane:
        """The key's lane, remembered: its partition, or the topic's waiting lane until that is known."""
        partitions = self._partitions.get(topic)
        lane = self._lane(topic, None if partitions is None else partition_for(key, partitions))
        self._lane_of[(topic, key)] = lane
        return lane

    def _lane(self, topic: str, partition: int | None) -> Lane:
        lane = self._lanes.get((topic, partition))
        if lane is None:
            lane = self._lanes[(topic, partition)] = Lane(topic, partition)
            self._new.append(lane)
            self._changed.set()
        return lane

    def _drop_oldest(self) -> None:
        # A scan over the lanes (one per partition, a handful): only a full queue pays it.
        oldest = min((lane for lane in self._lanes.values() if lane.records),
                     key=lambda lane: lane.records[0].enqueued_at)
        self.dropped[oldest.records.popleft().symbol] += 1
        self._size -= 1
