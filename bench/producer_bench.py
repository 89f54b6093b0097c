"""Producer benchmark: Pulse's producer vs a seed-style one that awaits `send_and_wait` per message.

Both run in the same process, one after the other, against the same embedded broker, with the same
aiokafka settings (acks=all, idempotent, the settings' compression), on the same Binance-shaped
frames (synthetic combined-stream envelopes, parsed by the same schema). Measured:

- throughput: frames/s from the first frame handed in to the last broker ack;
- added latency at 2,000 frames/s: frame handed in -> broker ack, p50 and p99;
- CPU per frame: route + batch append timed alone (no broker), and the process CPU time of the
  whole throughput run divided by its frames (everything this process does: parse, route, lanes,
  aiokafka's requests and acks; the broker is another process).

Run: `make bench-producer` (python -m bench.producer_bench [--frames N] [--seconds S]).
Prints a markdown table for docs/benchmarks.md. Not a test: it reports, it does not assert.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from pulse.broker.kafka_publisher import KafkaPublisher, build_kafka_producer
from pulse.broker.lanes import DropOldestQueue, OutboundRecord
from pulse.broker.local_kafka import ensure_topics
from pulse.model import encode_trade
from pulse.producer import Router
from pulse.runtime import Plan, Runtime
from pulse.settings import KafkaSettings, PulseSettings
from pulse.source.base import FrameDecoder, now_ms
from pulse.source.binance.wire import decode_frame, to_trade
from pulse.source.synthetic import SyntheticTrades

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT"]


def frames(count: int) -> list[bytes]:
    generator = SyntheticTrades(SYMBOLS, rate_per_s=1.0, seed=42)
    return [generator.frame(now_ms()) for _ in range(count)]


def route(decoder: FrameDecoder, router: Router, frame: bytes) -> None:
    """What the producer does per frame: decode and validate (the source), encode and enqueue (the router)."""
    trade = decoder.decode(frame, router)
    if trade is not None:
        router.trade(trade)


def quantile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 1000) - 1] if len(values) > 1 else values[0]


async def pulse_throughput(settings: PulseSettings, bootstrap: str, topic: str,
                           batch: list[bytes]) -> tuple[float, float]:
    """(frames/s, process CPU µs per frame) from the first frame handed in to the last broker ack."""
    kafka = settings.kafka.model_copy(update={"trades_topic": topic})
    queue = DropOldestQueue(100_000)
    producer = build_kafka_producer(kafka, settings.producer, bootstrap)
    await producer.start()
    try:
        router, decoder = Router(kafka, queue), FrameDecoder("bench")
        publisher = KafkaPublisher(producer, queue)
        publishing = asyncio.create_task(publisher.run())
        started, cpu_started = time.perf_counter(), time.process_time()
        for index, frame in enumerate(batch, start=1):
            route(decoder, router, frame)
            if index % 2000 == 0:
                # Like a replay, hold back rather than drop: the benchmark counts every frame.
                await router.room(0.8)
        queue.close()
        await publishing
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        assert publisher.stats.published == len(batch), (publisher.stats.published, len(batch))
        assert sum(queue.dropped.values()) == 0
        return len(batch) / elapsed, cpu / len(batch) * 1e6
    finally:
        await producer.stop()


async def seed_throughput(settings: PulseSettings, bootstrap: str, topic: str, batch: list[bytes]) -> float:
    producer = build_kafka_producer(settings.kafka, settings.producer, bootstrap)
    await producer.start()
    try:
        started = time.perf_counter()
        for frame in batch:
            trade = to_trade(decode_frame(frame), now_ms())
            await producer.send_and_wait(topic, encode_trade(trade), key=trade.symbol.encode())
        return len(batch) / (time.perf_counter() - started)
    finally:
        await producer.stop()


async def _paced(batch: list[bytes], rate: float, deliver: object) -> None:
    """Hand frames to `deliver(frame, handed_in_at)` at `rate` per second, on schedule."""
    assert callable(deliver)
    started = time.perf_counter()
    for index, frame in enumerate(batch):
        due = started + index / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        deliver(frame, time.perf_counter())


async def pulse_latency(settings: PulseSettings, bootstrap: str, topic: str, batch: list[bytes],
                        rate: float) -> list[float]:
    kafka = settings.kafka.model_copy(update={"trades_topic": topic})
    queue = DropOldestQueue(100_000)
    latencies: list[float] = []
    producer = build_kafka_producer(kafka, settings.producer, bootstrap)
    await producer.start()
    try:
        router, decoder = Router(kafka, queue), FrameDecoder("bench")

        def acked(record: OutboundRecord, enqueue_to_ack_s: float) -> None:
            latencies.append(enqueue_to_ack_s)

        publisher = KafkaPublisher(producer, queue, on_ack=acked)
        publishing = asyncio.create_task(publisher.run())
        # OutboundRecord.enqueued_at is taken right after parsing the frame: that is "frame in".
        await _paced(batch, rate, lambda frame, _at: route(decoder, router, frame))
        queue.close()
        await publishing
        return latencies
    finally:
        await producer.stop()


async def seed_latency(settings: PulseSettings, bootstrap: str, topic: str, batch: list[bytes],
                       rate: float, give_up_after_s: float) -> tuple[list[float], int]:
    """Latencies of the seed-style producer; it cannot keep up with 2k/s, so after the frames are
    handed in it gets `give_up_after_s` more, and frames still waiting then count with the time
    they had waited so far (a lower bound). Returns (latencies, frames that were still waiting)."""
    producer = build_kafka_producer(settings.kafka, settings.producer, bootstrap)
    await producer.start()
    inbox: asyncio.Queue[tuple[bytes, float]] = asyncio.Queue()
    latencies: list[float] = []

    async def send_each() -> None:
        while True:
            frame, handed_in = await inbox.get()
            trade = to_trade(decode_frame(frame), now_ms())
            await producer.send_and_wait(topic, encode_trade(trade), key=trade.symbol.encode())
            latencies.append(time.perf_counter() - handed_in)
            inbox.task_done()

    try:
        sender = asyncio.create_task(send_each())
        await _paced(batch, rate, lambda frame, at: inbox.put_nowait((frame, at)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(inbox.join(), timeout=give_up_after_s)
        sender.cancel()
        now = time.perf_counter()
        waiting = inbox.qsize()
        while not inbox.empty():
            latencies.append(now - inbox.get_nowait()[1])
        return latencies, waiting
    finally:
        await producer.stop()


async def cpu_per_frame_us(settings: PulseSettings, bootstrap: str, batch: list[bytes]) -> tuple[float, float]:
    """Where a frame's time goes without the broker: (parse+validate+encode+enqueue, batch append) in µs.

    The topic's partitions are known, as they are once the publisher has run a moment, so that
    enqueue is the path of a running producer: into the record's partition lane.
    """
    queue = DropOldestQueue(len(batch))
    queue.set_partitions(settings.kafka.trades_topic, settings.kafka.partitions)
    router, decoder = Router(settings.kafka, queue), FrameDecoder("bench")
    started = time.perf_counter()
    for frame in batch:
        route(decoder, router, frame)
    routed = time.perf_counter()
    records = await queue.take(len(batch))
    producer = build_kafka_producer(settings.kafka, settings.producer, bootstrap)
    builder = producer.create_batch()
    appending = time.perf_counter()
    for record in records:
        if builder.append(key=record.key, value=record.value, timestamp=None) is None:
            builder = producer.create_batch()
            builder.append(key=record.key, value=record.value, timestamp=None)
    appended = time.perf_counter()
    await producer.stop()
    return (routed - started) / len(batch) * 1e6, (appended - appending) / len(batch) * 1e6


async def run(settings: PulseSettings, bootstrap: str, throughput_frames: int, seed_frames: int,
              latency_seconds: float) -> dict[str, float]:
    topics = [f"bench.{name}.{int(time.time())}" for name in ("pulse", "seed", "pulse_lat", "seed_lat")]
    await ensure_topics(bootstrap, topics, settings.kafka.partitions)
    results: dict[str, float] = {}
    await pulse_throughput(settings, bootstrap, topics[0], frames(20_000))  # warm-up: JIT of the broker
    results["pulse_msgs_s"], results["run_cpu_us"] = await pulse_throughput(settings, bootstrap, topics[0],
                                                                            frames(throughput_frames))
    results["seed_msgs_s"] = await seed_throughput(settings, bootstrap, topics[1], frames(seed_frames))
    results["route_us"], results["append_us"] = await cpu_per_frame_us(settings, bootstrap, frames(50_000))
    rate = 2000.0
    latency_frames = frames(int(rate * latency_seconds))
    pulse_lat = await pulse_latency(settings, bootstrap, topics[2], latency_frames, rate)
    seed_lat, results["seed_unsent"] = await seed_latency(settings, bootstrap, topics[3], latency_frames, rate,
                                                          give_up_after_s=latency_seconds)
    for name, values in (("pulse", pulse_lat), ("seed", seed_lat)):
        results[f"{name}_p50_ms"] = quantile(values, 0.5) * 1000
        results[f"{name}_p99_ms"] = quantile(values, 0.99) * 1000
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=300_000, help="frames for Pulse's throughput run")
    parser.add_argument("--seed-frames", type=int, default=5_000, help="frames for the seed-style throughput run")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each 2k/s latency run")
    parser.add_argument("--json", action="store_true", help="end with one JSON line of the headline numbers")
    args = parser.parse_args()
    base = PulseSettings(_env_file=None)  # type: ignore[call-arg]
    with tempfile.TemporaryDirectory(prefix="pulse-bench-") as data_dir:
        settings = base.model_copy(update={"data_dir": Path(data_dir), "kafka": KafkaSettings(partitions=3)})
        with Runtime(Plan(settings)).start() as broker:
            results = asyncio.run(run(settings, broker.bootstrap, args.frames, args.seed_frames, args.seconds))
    ratio = results["pulse_msgs_s"] / results["seed_msgs_s"]
    producer = base.producer
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"embedded Kafka broker (3 partitions), acks=all, idempotent, {producer.compression}, "
          f"max_batch {producer.max_batch_bytes // 1024} KiB")
    print()
    print("| producer | throughput (msg/s, frame in -> broker ack) | added latency p50 @ 2k/s | p99 @ 2k/s |")
    print("|---|---:|---:|---:|")
    print(f"| Pulse (per-partition lanes, batched) | {results['pulse_msgs_s']:,.0f} | "
          f"{results['pulse_p50_ms']:.2f} ms | {results['pulse_p99_ms']:.2f} ms |")
    print(f"| seed-style (`send_and_wait` per message) | {results['seed_msgs_s']:,.0f} | "
          f"{results['seed_p50_ms']:.2f} ms | {results['seed_p99_ms']:.2f} ms |")
    print(f"| ratio | {ratio:.1f}x | | |")
    print(f"\nCPU per frame without the broker: {results['route_us']:.1f} µs parse + validate + encode + enqueue, "
          f"{results['append_us']:.1f} µs batch append (one core: at most "
          f"{1e6 / (results['route_us'] + results['append_us']):,.0f} frames/s before any network or broker work).")
    print(f"Process CPU per frame over the whole throughput run (route, lanes, aiokafka, acks): "
          f"{results['run_cpu_us']:.1f} µs.")
    if results["seed_unsent"]:
        print(f"\nseed-style at 2k/s: {results['seed_unsent']:,.0f} of {args.seconds * 2000:,.0f} frames were still "
              "unsent when the run stopped; their wait so far counts as their latency (a lower bound).")
    if args.json:
        print(json.dumps({
            "throughput_msg_s": {"pulse": round(results["pulse_msgs_s"]), "seed_style": round(results["seed_msgs_s"])},
            "latency_ms_at_2k": {"pulse": {"p50": round(results["pulse_p50_ms"], 3),
                                           "p99": round(results["pulse_p99_ms"], 3)}},
            "cpu_us_per_frame": round(results["route_us"] + results["append_us"], 2),
            "cpu_us_per_frame_run": round(results["run_cpu_us"], 2)}))


if __name__ == "__main__":
    main()
