"""Write hand-made messages straight to a Kafka topic, bypassing the producer's validation."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer


@dataclass(frozen=True)
class Written:
    value: bytes | None  # None: a tombstone
    partition: int
    offset: int


def trade_message(symbol: str, agg_id: int, price: float, qty: float, time_ms: int, buyer_maker: bool,
                  ingest_ms: int | None = None) -> dict[str, Any]:
    """A schema_version 1 trade message, as the producer would publish it."""
    return {
        "schema_version": 1, "symbol": symbol, "price": price, "quantity": qty, "timestamp": time_ms,
        "side": "SELL" if buyer_maker else "BUY", "agg_trade_id": agg_id, "first_trade_id": agg_id * 10,
        "last_trade_id": agg_id * 10 + 1, "event_time": time_ms + 1, "ingest_time": ingest_ms or time_ms + 5,
        "buyer_is_maker": buyer_maker, "quantity_no_rpi": None,
    }


def encode(message: dict[str, Any] | bytes | str | None) -> bytes | None:
    if message is None or isinstance(message, bytes):  # None: a tombstone (a record without a value)
        return message
    if isinstance(message, str):
        return message.encode()
    return json.dumps(message).encode()


async def _write(bootstrap: str, topic: str, values: list[bytes | None], partition: int | None) -> list[Written]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
    await producer.start()
    try:
        # A tombstone is a record with a key and no value (Kafka takes no record without either).
        futures = [await producer.send(topic, value, key=b"tombstone" if value is None else None, partition=partition)
                   for value in values]
        records = [await future for future in futures]
    finally:
        await producer.stop()
    return [Written(value, r.partition, r.offset) for value, r in zip(values, records, strict=True)]


def write_messages(bootstrap: str, topic: str, messages: Sequence[dict[str, Any] | bytes | str | None],
                   partition: int | None = 0) -> list[Written]:
    """Send as one burst (so the processor tends to see it in one micro-batch) and wait for the acks."""
    return asyncio.run(_write(bootstrap, topic, [encode(m) for m in messages], partition))
