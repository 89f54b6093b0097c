"""The drop-oldest queue in front of the publisher."""

from __future__ import annotations

import asyncio

from pulse.broker.kafka_publisher import DropOldestQueue, OutboundRecord


def test_drop_oldest_queue_keeps_the_newest_and_counts_drops_per_symbol():
    async def scenario() -> None:
        queue = DropOldestQueue(3)
        for i in range(5):
            queue.put(OutboundRecord("t", b"k", str(i).encode(), "A" if i % 2 else "B", 0))
        assert [r.value for r in await queue.take(10)] == [b"2", b"3", b"4"]
        assert queue.dropped == {"B": 1, "A": 1}

    asyncio.run(scenario())
