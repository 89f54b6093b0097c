"""The partition lanes in front of Kafka and the per-lane senders of the publisher.

The senders are driven here by a stand-in for aiokafka's producer that keeps aiokafka's contract
(`send_batch` waits while its partition cannot take a batch, then returns a future that settles
with the broker's answer), so that a partition without a leader, a failed batch and the drain at
the end are played out exactly; tests/integration/test_partition_lanes.py does it on real brokers.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable

import pytest
from aiokafka.errors import KafkaTimeoutError

from pulse.broker.kafka_publisher import KafkaPublisher
from pulse.broker.lanes import DropOldestQueue, OutboundRecord, partition_for

# With two partitions (Kafka's murmur2): A, B and C land on partition 0, D on partition 1.
P0_SYMBOLS, P1_SYMBOL = ("A", "B", "C"), "D"


def record(symbol: str, value: int | str, topic: str = "t") -> OutboundRecord:
    return OutboundRecord(topic, symbol.encode(), str(value).encode(), symbol, 0)


def routed_queue(maxsize: int, partitions: int = 2) -> DropOldestQueue:
    queue = DropOldestQueue(maxsize)
    queue.set_partitions("t", partitions)
    return queue


def lane_values(queue: DropOldestQueue) -> dict[int | None, list[bytes]]:
    return {lane.partition: [r.value for r in lane.records] for lane in queue.lanes}


def test_symbols_of_the_lanes_are_where_kafka_puts_them():
    assert {partition_for(s.encode(), 2) for s in P0_SYMBOLS} == {0} and partition_for(b"D", 2) == 1


def test_drop_oldest_queue_keeps_the_newest_and_counts_drops_per_symbol():
    async def scenario() -> None:
        queue = DropOldestQueue(3)
        for i in range(5):
            queue.put(record("A" if i % 2 else "B", i))
        assert [r.value for r in await queue.take(10)] == [b"2", b"3", b"4"]
        assert queue.dropped == {"B": 1, "A": 1}

    asyncio.run(scenario())


def test_records_go_to_their_partitions_lane_in_order():
    queue = routed_queue(100)
    for i in range(6):
        queue.put(record(("A", "D", "B")[i % 3], i))
    assert lane_values(queue) == {0: [b"0", b"2", b"3", b"5"], 1: [b"1", b"4"]}
    assert len(queue) == 6


def test_records_queued_before_the_partitions_are_known_keep_their_order_when_spread():
    queue = DropOldestQueue(100)
    for i in range(4):
        queue.put(record(("A", "D")[i % 2], i))
    assert lane_values(queue) == {None: [b"0", b"1", b"2", b"3"]}
    queue.set_partitions("t", 2)
    queue.put(record("A", 4))
    assert lane_values(queue) == {0: [b"0", b"2", b"4"], 1: [b"1", b"3"]}
    assert len(queue) == 5


def test_the_bound_is_over_all_lanes_and_the_oldest_record_anywhere_goes_first():
    """A stalled lane holds the oldest records: they go, the moving lane keeps its newest."""
    queue = routed_queue(4)
    queue.put(record("A", "a1"))
    queue.put(record("A", "a2"))
    queue.put(record("D", "d1"))
    queue.put(record("D", "d2"))
    queue.put(record("D", "d3"))
    assert lane_values(queue) == {0: [b"a2"], 1: [b"d1", b"d2", b"d3"]}
    queue.take_from(queue.lanes[1], 3)
    queue.put(record("D", "d4"))
    queue.put(record("D", "d5"))
    queue.put(record("D", "d6"))
    queue.put(record("D", "d7"))
    assert lane_values(queue) == {0: [], 1: [b"d4", b"d5", b"d6", b"d7"]}
    assert queue.dropped == {"A": 2} and len(queue) == 4


def test_failed_records_go_back_to_the_head_of_their_lane_within_the_bound():
    queue = routed_queue(4)
    for i in range(4):
        queue.put(record("A", i))
    lane = queue.lanes[0]
    failed = queue.take_from(lane, 3)
    queue.put(record("A", 4))
    queue.put(record("A", 5))
    queue.put_front(lane, failed)
    # Back in front, in their order; over the bound the oldest of them are dropped (and counted).
    assert [r.value for r in lane.records] == [b"2", b"3", b"4", b"5"]
    assert queue.dropped == {"A": 2} and len(queue) == 4


def test_new_lanes_are_announced_once_and_end_when_closed():
    async def scenario() -> None:
        queue = DropOldestQueue(10)
        queue.put(record("A", 0))
        assert [(lane.topic, lane.partition) for lane in await queue.new_lanes()] == [("t", None)]
        queue.set_partitions("t", 2)
        queue.put(record("D", 1))
        assert sorted(lane.partition or 0 for lane in await queue.new_lanes()) == [0, 1]
        queue.put(record("B", 2))
        queue.close()
        assert await queue.new_lanes() == []

    asyncio.run(scenario())


def test_close_waits_for_records_still_waiting_for_their_partitions():
    async def scenario() -> None:
        queue = DropOldestQueue(10)
        queue.put(record("A", 0))
        await queue.new_lanes()
        queue.close()
        waiting = asyncio.create_task(queue.new_lanes())
        await asyncio.sleep(0)
        assert not waiting.done(), "the lane the waiting records go to would never get a sender"
        queue.set_partitions("t", 2)
        assert [lane.partition for lane in await waiting] == [0]

    asyncio.run(scenario())


# --- the publisher, on a stand-in for aiokafka's producer ----------------------------------------

class _Builder:
    """aiokafka's BatchBuilder contract: `append` returns None once the batch is full."""

    def __init__(self, capacity: int) -> None:
        self.values: list[bytes] = []
        self._capacity = capacity

    def append(self, *, key: bytes, value: bytes, timestamp: None) -> object | None:
        if len(self.values) >= self._capacity:
            return None
        self.values.append(value)
        return object()


class _Producer:
    """aiokafka's producer as the publisher sees it, for a partition that loses its leader.

    An open partition acknowledges every batch. A `stalled` one (no leader) holds the one batch
    aiokafka's accumulator takes, and `send_batch` waits while it is held; `expire` fails the held
    batch and the waiting `send_batch`, as aiokafka does once `request_timeout_ms` has passed;
    `resume` (a new leader) acknowledges the held batch and lets the next ones in.
    """

    def __init__(self, partitions: int = 2, stalled: frozenset[int] = frozenset(), batch_records: int = 3) -> None:
        self._partitions = partitions
        self._batch_records = batch_records
        self.stalled = set(stalled)
        self._held: dict[int, list[tuple[asyncio.Future[None], list[bytes]]]] = defaultdict(list)
        self._expiries: dict[int, int] = defaultdict(int)
        self._changed = asyncio.Event()
        self.written: dict[int, list[bytes]] = defaultdict(list)
        self.flushed = False

    def held(self, partition: int) -> int:
        return len(self._held[partition])

    def resume(self, partition: int) -> None:
        self.stalled.discard(partition)
        for future, values in self._held.pop(partition, []):
            self.written[partition] += values
            future.set_result(None)
        self._changed.set()

    def expire(self, partition: int) -> None:
        for future, _ in self._held.pop(partition, []):
            future.set_exception(KafkaTimeoutError())
        self._expiries[partition] += 1
        self._changed.set()

    def create_batch(self) -> _Builder:
        return _Builder(self._batch_records)

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(self._partitions))

    async def send_batch(self, builder: _Builder, topic: str, *, partition: int) -> asyncio.Future[None]:
        expiries = self._expiries[partition]
        while partition in self.stalled and self._held[partition]:
            self._changed.clear()
            await self._changed.wait()
            if self._expiries[partition] != expiries:
                raise KafkaTimeoutError()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if partition in self.stalled:
            self._held[partition].append((future, builder.values))
        else:
            self.written[partition] += builder.values
            future.set_result(None)
        return future

    async def flush(self) -> None:
        self.flushed = True


async def _until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(5_000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never: {what}")


def _publish(queue: DropOldestQueue, scenario: Callable[[KafkaPublisher, _Producer], Awaitable[None]],
             kafka: _Producer | None = None, acks: list[bytes] | None = None) -> tuple[KafkaPublisher, _Producer]:
    """Run the publisher over `queue` while `scenario` plays, then close the queue and let it finish."""
    producer = kafka or _Producer()

    async def run() -> KafkaPublisher:
        publisher = KafkaPublisher(producer, queue, retry_pause_s=0, take_max=4,
                                   on_ack=None if acks is None else lambda r, _s: acks.append(r.value))
        publishing = asyncio.create_task(publisher.run())
        await scenario(publisher, producer)
        queue.close()
        await asyncio.wait_for(publishing, timeout=5)
        return publisher

    return asyncio.run(run()), producer


async def _nothing_more(_: KafkaPublisher, __: _Producer) -> None:
    await asyncio.sleep(0)


def _values(count: int) -> list[bytes]:
    return [str(i).encode() for i in range(count)]


def test_a_partition_without_a_leader_holds_back_only_its_own_lane():
    queue = DropOldestQueue(1_000)

    async def scenario(publisher: KafkaPublisher, kafka: _Producer) -> None:
        for i in range(30):
            queue.put(record("A", i))
            queue.put(record(P1_SYMBOL, i))
        await _until(lambda: publisher.stats.published == 30, "partition 1 published while 0 waits")
        assert publisher.stats.published_by_symbol == {P1_SYMBOL: 30}
        assert kafka.written[0] == [] and kafka.held(0) == 1
        # Partition 0's records wait in its lane, but for one take (4): 3 held by aiokafka, 1 in the waiting send.
        assert len(queue) == 30 - 4 and publisher.in_flight == 3
        kafka.resume(0)

    publisher, kafka = _publish(queue, scenario, _Producer(stalled=frozenset({0})))
    assert kafka.written[0] == kafka.written[1] == _values(30)
    assert publisher.stats.published_by_symbol == {"A": 30, P1_SYMBOL: 30}
    assert kafka.flushed and len(queue) == 0 and publisher.in_flight == 0


def test_batches_that_expire_are_sent_again_in_order_before_anything_newer():
    queue = DropOldestQueue(1_000)
    acks: list[bytes] = []

    async def scenario(publisher: KafkaPublisher, kafka: _Producer) -> None:
        for i in range(20):
            queue.put(record(P0_SYMBOLS[i % 3], i))
        await _until(lambda: kafka.held(0) == 1, "a batch held for the leaderless partition")
        kafka.expire(0)
        # The held batch (3) and the rest of its take (1), which waited for room.
        await _until(lambda: publisher.stats.failed_sends == 4, "the held and the waiting batch failed")
        await _until(lambda: kafka.held(0) == 1, "the failed records sent again")
        kafka.resume(0)

    publisher, kafka = _publish(queue, scenario, _Producer(stalled=frozenset({0})), acks)
    assert kafka.written[0] == _values(20), "a failed batch was overtaken, doubled or lost"
    assert acks == _values(20) and publisher.stats.published == 20
    assert sum(queue.dropped.values()) == 0


def test_a_stalled_lane_loses_its_oldest_records_to_the_bound_and_the_others_none():
    queue = DropOldestQueue(10)

    async def scenario(publisher: KafkaPublisher, kafka: _Producer) -> None:
        for i in range(40):
            queue.put(record("A", i))
            queue.put(record(P1_SYMBOL, i))
            await asyncio.sleep(0)
        await _until(lambda: publisher.stats.published_by_symbol[P1_SYMBOL] == 40, "partition 1 all published")
        kafka.resume(0)

    publisher, kafka = _publish(queue, scenario, _Producer(stalled=frozenset({0})))
    assert kafka.written[1] == _values(40)
    kept = kafka.written[0]
    assert queue.dropped == {"A": 40 - len(kept)} and len(kept) < 40
    # What partition 0 got: its first batches (handed over before the stall showed), then the newest.
    assert kept == sorted(kept, key=int) and kept[-1] == b"39"
    assert publisher.stats.published == 40 + len(kept)


def test_run_ends_with_everything_sent_when_the_queue_closes():
    queue = DropOldestQueue(100)
    for i in range(50):
        queue.put(record(("A", "D", "B")[i % 3], i))

    publisher, kafka = _publish(queue, _nothing_more)
    assert kafka.flushed and publisher.stats.published == 50
    assert sorted(kafka.written[0] + kafka.written[1], key=int) == _values(50)


def test_an_error_in_a_lane_reaches_the_caller_itself():
    class Broken(_Producer):
        async def send_batch(self, builder: _Builder, topic: str, *, partition: int) -> asyncio.Future[None]:
            raise ValueError("not a Kafka error")

    queue = DropOldestQueue(10)
    queue.put(record("A", 0))
    with pytest.raises(ValueError, match="not a Kafka error"):
        _publish(queue, _nothing_more, Broken())


def test_records_wait_while_their_topic_has_no_partitions_yet_and_are_sent_after():
    class Creating(_Producer):
        """Metadata of a topic being created lists no partitions at first."""

        asked = 0

        async def partitions_for(self, topic: str) -> set[int]:
            self.asked += 1
            return set() if self.asked == 1 else await super().partitions_for(topic)

    queue = DropOldestQueue(10)
    for i in range(5):
        queue.put(record("A", i))
    creating = Creating()
    publisher, _ = _publish(queue, _nothing_more, creating)
    assert creating.asked == 2 and creating.written[0] == _values(5) and publisher.stats.published == 5
