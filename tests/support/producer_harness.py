"""Run the producer service against the Binance double and read back what reached Kafka."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from pulse.broker.local_kafka import ensure_topics
from pulse.producer import ProducerService
from pulse.settings import KafkaSettings, PulseSettings
from pulse.source.base import Source
from pulse.source.binance.live import BinanceSource
from pulse.source.venue_live import VenueSource, live_source
from tests.support.binance_double import BinanceDouble, agg_trades_from_recording
from tests.support.names import unique_name
from tests.support.recordings import SPOT_RAW, USDM_RAW, recording
from tests.support.reference import trades_from_recording


def recorded_tape() -> list[dict[str, Any]]:
    """USD-M and spot aggTrades of the real recordings (8 symbols), interleaved, per-symbol order kept."""
    usdm, spot = (agg_trades_from_recording(recording(name)) for name in (USDM_RAW, SPOT_RAW))
    mixed = itertools.chain.from_iterable(itertools.zip_longest(usdm, spot))
    return [payload for payload in mixed if payload is not None]


def expected_ids() -> dict[str, list[int]]:
    """Aggregate ids per symbol read by the reference parser, which shares no code with pulse."""
    ids: dict[str, list[int]] = defaultdict(list)
    for name in (USDM_RAW, SPOT_RAW):
        for trade in trades_from_recording(recording(name)):
            ids[trade.symbol].append(trade.agg_id)
    return dict(ids)


def live_settings(base: PulseSettings, kafka: KafkaSettings, double: BinanceDouble, **producer: Any) -> PulseSettings:
    symbols = sorted(double.by_symbol)
    overrides: dict[str, Any] = {
        "symbols": symbols, "ws_base_url": double.ws_base_url, "rest_base_url": double.rest_base_url,
        "reconnect_initial_s": 0.05, "reconnect_max_s": 0.5, "gap_grace_s": 0.05, "gap_fill_timeout_s": 5.0,
        "stall_timeout_s": 5.0, "metrics_port": 0, "shutdown_timeout_s": 10.0, **producer,
    }
    return base.model_copy(update={"kafka": kafka, "producer": base.producer.model_copy(update=overrides)})


def published(service: ProducerService) -> int:
    """Records the broker acknowledged (trades, dead letters and gap events)."""
    return service.published


def gaps_pending(service: ProducerService) -> bool:
    source = service.source
    return isinstance(source, BinanceSource | VenueSource) and source.gaps_pending()


def fresh_topics(bootstrap: str, partitions: int = 3) -> KafkaSettings:
    """Unique trades, dead-letter and gaps topics for one test."""
    kafka = KafkaSettings(bootstrap_servers=bootstrap, trades_topic=unique_name("trades"),
                          dead_letter_topic=unique_name("dlq"), gaps_topic=unique_name("gaps"), partitions=partitions)
    asyncio.run(ensure_topics(bootstrap, [kafka.trades_topic, kafka.dead_letter_topic, kafka.gaps_topic], partitions))
    return kafka


async def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.02)


@asynccontextmanager
async def running_producer(settings: PulseSettings, bootstrap: str,
                           source: Source | None = None) -> AsyncIterator[ProducerService]:
    """The producer as the runtime runs it (`ProducerService.serve`, with /metrics), in this loop; on exit it is stopped
    (drain + flush) and must end cleanly."""
    service = ProducerService(settings.override(kafka={"bootstrap_servers": bootstrap}),
                              source or live_source(settings.producer))
    stop = asyncio.Event()
    task = asyncio.create_task(service.serve(bootstrap, stop))
    await wait_until(lambda: service.metrics_port is not None or task.done(), 30, "the producer and its /metrics")
    if task.done():
        task.result()
    try:
        yield service
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=settings.producer.shutdown_timeout_s + 20)


async def scraped(service: ProducerService) -> dict[str, float]:
    """The producer's /metrics, read over HTTP from this loop's thread without blocking the loop."""
    from tests.support.pipeline import scrape_service

    return await asyncio.to_thread(scrape_service, service)


@dataclass(frozen=True)
class Consumed:
    key: str
    value: dict[str, Any]
    partition: int


async def consume_all(bootstrap: str, topic: str, timeout_s: float = 30.0) -> list[Consumed]:
    """Every record of `topic` from the beginning up to its end offsets at call time."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        partitions: list[TopicPartition] = []
        for _ in range(100):  # a just-created topic may be missing from the first metadata
            cluster = await consumer._client.fetch_all_metadata()
            partitions = [TopicPartition(topic, p) for p in sorted(cluster.partitions_for_topic(topic) or [])]
            if partitions:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"topic {topic} has no partitions")
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        records: list[Consumed] = []
        deadline = time.monotonic() + timeout_s
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            if time.monotonic() > deadline:
                raise AssertionError(f"could not read {topic} to its end in {timeout_s}s")
            batches = await consumer.getmany(timeout_ms=500)
            for tp, messages in batches.items():
                records.extend(Consumed(m.key.decode(), json.loads(m.value), tp.partition) for m in messages)
        return records
    finally:
        await consumer.stop()


def ids_by_symbol(records: list[Consumed]) -> dict[str, list[int]]:
    ids: dict[str, list[int]] = defaultdict(list)
    for record in records:
        ids[record.value["symbol"]].append(record.value["agg_trade_id"])
    return dict(ids)
