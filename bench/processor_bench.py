"""Processor freshness and throughput: trade time T -> its window visible in ClickHouse.

In one process: the embedded Kafka broker, the Pulse job (Spark local[2]) and chDB. A generator
publishes synthetic trades stamped T = now at a fixed rate; a thin wrapper around the chDB
transport records when each metrics insert returned (the rows are visible from then on) and the
trade count it carried per window. Trade k of a window is visible at the first insert whose count
for that window is >= k; freshness = that time - T.

Peer, same run: the same job with a 1-second trigger, against Pulse's default 500 ms (and 250 ms).
Throughput: a backlog published first, then read from `earliest`; trades per second processed.
Run: `make bench-processor` (python -m bench.processor_bench). Prints a markdown table.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path

import orjson
import pyarrow as pa
from aiokafka import AIOKafkaProducer

from pulse.pipeline import Pipeline
from pulse.settings import PulseSettings
from pulse.storage.clickhouse import ClickHouseTransport
from pulse.storage.sinks import PulseSinks, Sink


class VisibleAt:
    """The metrics sink, noting when each batch became visible in ClickHouse and what it carried."""

    def __init__(self, inner: Sink) -> None:
        self.inner = inner
        self.visible: list[tuple[float, list[int], list[int]]] = []

    def write(self, batch: pa.Table) -> None:
        self.inner.write(batch)
        if batch.num_rows:
            starts = [int(v.timestamp() * 1000) for v in batch.column("window_start").to_pylist()]
            self.visible.append((time.time() * 1000, starts, batch.column("trade_count").to_pylist()))


def message(agg_id: int, time_ms: int) -> bytes:
    return orjson.dumps({
        "schema_version": 1, "symbol": "BENCHUSDT", "price": 100.0 + (agg_id % 100) / 100, "quantity": 0.5,
        "timestamp": time_ms, "side": "BUY" if agg_id % 3 else "SELL", "agg_trade_id": agg_id,
        "first_trade_id": agg_id, "last_trade_id": agg_id, "event_time": time_ms, "ingest_time": time_ms,
        "buyer_is_maker": agg_id % 3 == 0, "quantity_no_rpi": None,
    })


async def publish(bootstrap: str, topic: str, rate: float | None, count: int) -> list[int]:
    """Publish `count` trades at `rate`/s (None: flat out, T = now); returns each trade's T."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=512 * 1024,
                                compression_type="lz4")
    await producer.start()
    times: list[int] = []
    try:
        started = time.monotonic()
        tick = 0.01
        sent = 0
        while sent < count:
            due = count if rate is None else min(count, int((time.monotonic() - started) * rate) + 1)
            now_ms = time.time_ns() // 1_000_000
            while sent < due:
                await producer.send(topic, message(sent + 1, now_ms), partition=0)
                times.append(now_ms)
                sent += 1
            if rate is not None:
                await asyncio.sleep(tick)
        await producer.flush()
    finally:
        await producer.stop()
    return times


async def _warm_up(bootstrap: str, topic: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, message(0, time.time_ns() // 1_000_000 - 60_000), partition=0)
    finally:
        await producer.stop()


def freshness(times: list[int], visible: list[tuple[float, list[int], list[int]]]) -> list[float]:
    per_window: dict[int, list[tuple[float, int]]] = defaultdict(list)
    for at, starts, counts in visible:
        for start, count in zip(starts, counts, strict=True):
            per_window[start].append((at, count))
    trades: dict[int, list[int]] = defaultdict(list)
    for t in times:
        trades[t - t % 1000].append(t)
    result = []
    for start, stamps in trades.items():
        seen = sorted(per_window.get(start, []))
        for k, t in enumerate(stamps, start=1):
            visible_at = [a for a, c in seen if c >= k]
            if visible_at:
                result.append(visible_at[0] - t)
    return result


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else float("nan")


def run(base: PulseSettings, bootstrap: str, trigger_ms: int, rate: float | None, count: int,
        earliest: bool = False) -> dict[str, float]:
    topic = f"bench_{uuid.uuid4().hex[:8]}"
    settings = base.override(
        kafka={"bootstrap_servers": bootstrap, "trades_topic": topic, "dead_letter_topic": f"{topic}.dlq",
               "gaps_topic": f"{topic}.gaps", "partitions": 1},
        clickhouse={"database": f"bench_{uuid.uuid4().hex[:8]}"},
        spark={"trigger_ms": trigger_ms, "checkpoint_dir": base.data_dir / topic, "starting_offsets": "earliest"})
    recorders: list[VisibleAt] = []

    def sinks(transport: ClickHouseTransport) -> PulseSinks:
        clickhouse = PulseSinks.clickhouse(transport)
        recorders.append(VisibleAt(clickhouse.metrics))
        return PulseSinks(metrics=recorders[-1], rejects=clickhouse.rejects, health=clickhouse.health)

    times: list[int] = []
    with Pipeline(settings, sinks=sinks) as pipeline:
        pipeline.create_topics()
        if earliest:
            times = asyncio.run(publish(bootstrap, topic, None, count))
        pipeline.start_job()
        if not earliest:
            # Spark runs no batch on an empty topic, so the first real batch would pay for planning,
            # code generation and the state store: one old trade warms the job up, unmeasured.
            asyncio.run(_warm_up(bootstrap, topic))
            pipeline.wait_idle(idle_s=2.0, timeout_s=300)
        started = time.monotonic()
        if not earliest:
            times = asyncio.run(publish(bootstrap, topic, rate, count))
        pipeline.wait_idle(idle_s=1.0, timeout_s=600)
        elapsed = time.monotonic() - started - 1.0
    fresh = freshness(times, recorders[0].visible)
    return {"trades": len(times), "p50": pct(fresh, 50), "p99": pct(fresh, 99), "max": max(fresh, default=0),
            "rate": len(times) / elapsed, "seen": len(fresh)}


def main() -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="pulse-bench-"))
    base = PulseSettings(_env_file=None, data_dir=data_dir)  # type: ignore[call-arg]
    seconds = float(os.environ.get("BENCH_SECONDS", "20"))
    lines = ["| job | offered trades/s | trades | freshness p50 ms | p99 ms | max ms |", "|---|---|---|---|---|---|"]
    # One broker and one Spark session for every run: the first pipeline starts them, the others share.
    with Pipeline(base) as shared:
        shared.spark_session()
        bootstrap = shared.bootstrap
        for trigger in (250, 500, 1000):
            for rate in (1_000, 10_000):
                r = run(base, bootstrap, trigger, rate, int(rate * seconds))
                lines.append(f"| trigger {trigger} ms | {rate:,} | {r['trades']:,.0f} | {r['p50']:.0f} | "
                             f"{r['p99']:.0f} | {r['max']:.0f} |")
                print(lines[-1], flush=True)
        backlog = int(os.environ.get("BENCH_BACKLOG", "300000"))
        r = run(base, bootstrap, 250, None, backlog, earliest=True)
        lines.append(f"\nbacklog of {backlog:,} trades read from earliest (trigger 250 ms): "
                     f"{r['rate']:,.0f} trades/s processed")
        print(lines[-1], flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
