"""Throughput and freshness of the Pulse job on local[2] and on a Spark standalone cluster (docs/scaling.md).

`python -m tests.support.scale_measure [--backlog 100000] [--rate 1000] [--seconds 20]` starts the
embedded Kafka broker, publishes a backlog of synthetic trades (8 symbols, 4 partitions), and then,
for each configuration, runs the job in a child process (one Spark driver per process) through
the runtime with `settings.override(spark={"master": ...})`:
- backlog: the job reads the backlog from `earliest`; drain time from `start_job()` until both
  queries have processed all of it, and the metrics query's own rows/s over its batches;
- freshness: then trades stamped T = now are published at `--rate` for `--seconds`; a thin wrapper
  around the metrics sink records when each insert returned, and trade k of a window is visible at
  the first insert whose count for that (symbol, window) is >= k; freshness = that time - T.
Configurations: local[2]; a standalone master with one worker of 1 core; with two workers of 1
core each. Everything shares the machine's cores (the broker, the driver, the executors), so the
numbers are for that machine: a measurement, never a test (nothing asserts on time).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
from aiokafka import AIOKafkaProducer

from pulse.broker.local_kafka import LocalKafkaBroker, ensure_topics
from pulse.runtime import Plan, Runtime, Until
from pulse.settings import PulseSettings
from pulse.storage.clickhouse import ClickHouseTransport
from pulse.storage.sinks import PulseSinks, Sink
from tests.support.spark_standalone import StandaloneCluster, die_with_parent

SYMBOLS = [f"SYM{i}USDT" for i in range(8)]
PARTITIONS = 4
TOPIC = "scale_trades"


def message(symbol: str, agg_id: int, time_ms: int, rnd: random.Random) -> bytes:
    price = round(100 + rnd.random(), 4)
    return orjson.dumps({
        "schema_version": 1, "symbol": symbol, "price": price, "quantity": round(rnd.random() + 0.001, 3),
        "timestamp": time_ms, "side": "BUY" if rnd.random() < 0.5 else "SELL", "agg_trade_id": agg_id,
        "first_trade_id": agg_id, "last_trade_id": agg_id, "event_time": time_ms, "ingest_time": time_ms,
        "buyer_is_maker": rnd.random() < 0.5, "quantity_no_rpi": None,
    })


async def publish(bootstrap: str, count: int, rate: float | None, start_ms: int | None,
                  first_id: int) -> list[tuple[str, int]]:
    """`count` trades keyed by symbol (the producer's partitioning); flat out with times from
    `start_ms` on, or at `rate`/s stamped now. Returns each trade's (symbol, T)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=512 * 1024,
                                compression_type="lz4", acks="all", enable_idempotence=True)
    await producer.start()
    rnd = random.Random(7)  # prices for load, not secrets
    sent: list[tuple[str, int]] = []
    try:
        started = time.monotonic()
        while len(sent) < count:
            due = count if rate is None else min(count, int((time.monotonic() - started) * rate) + 1)
            now_ms = time.time_ns() // 1_000_000
            while len(sent) < due:
                n = len(sent)
                symbol = SYMBOLS[n % len(SYMBOLS)]
                at = now_ms if start_ms is None else start_ms + n  # history at 1,000 trades/s
                await producer.send(TOPIC, message(symbol, first_id + n // len(SYMBOLS), at, rnd),
                                    key=symbol.encode())
                sent.append((symbol, at))
            if rate is not None:
                await asyncio.sleep(0.01)
        await producer.flush()
    finally:
        await producer.stop()
    return sent


class VisibleAt:
    """The metrics sink, noting when each insert returned and the trade count per (symbol, window)."""

    def __init__(self, inner: Sink) -> None:
        self.inner = inner
        self.visible: list[tuple[float, list[tuple[str, int]], list[int]]] = []

    def write(self, batch: pa.Table) -> None:
        self.inner.write(batch)
        if batch.num_rows:
            keys = [(s, int(w.timestamp() * 1000)) for s, w in zip(batch.column("symbol").to_pylist(),
                                                                  batch.column("window_start").to_pylist(),
                                                                  strict=True)]
            self.visible.append((time.time() * 1000, keys, batch.column("trade_count").to_pylist()))


def freshness(sent: list[tuple[str, int]], visible: list[tuple[float, list[tuple[str, int]], list[int]]],
              counts_before: dict[tuple[str, int], int]) -> list[float]:
    seen: dict[tuple[str, int], list[tuple[float, int]]] = defaultdict(list)
    for at, keys, counts in visible:
        for key, count in zip(keys, counts, strict=True):
            seen[key].append((at, count))
    trades: dict[tuple[str, int], list[int]] = defaultdict(list)
    for symbol, t in sent:
        trades[(symbol, t - t % 1000)].append(t)
    result = []
    for key, stamps in trades.items():
        inserts = sorted(seen.get(key, []))
        for k, t in enumerate(stamps, start=counts_before.get(key, 0) + 1):
            visible_at = [a for a, c in inserts if c >= k]
            if visible_at:
                result.append(visible_at[0] - t)
    return result


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """One configuration, in this process: drain the backlog, then measure freshness."""
    root = Path(spec["root"])
    settings = PulseSettings(_env_file=None, data_dir=root).override(  # type: ignore[call-arg]
        kafka={"bootstrap_servers": spec["bootstrap"], "trades_topic": TOPIC, "partitions": PARTITIONS},
        spark={"master": spec["master"], "starting_offsets": "earliest", "health_port": 0,
               "checkpoint_dir": str(root / "checkpoints"), "shuffle_partitions": spec["shuffle_partitions"]},
        producer={"metrics_port": 0})
    recorders: list[VisibleAt] = []

    def sinks(transport: ClickHouseTransport) -> PulseSinks:
        clickhouse = PulseSinks.clickhouse(transport)
        recorders.append(VisibleAt(clickhouse.metrics))
        return PulseSinks(metrics=recorders[-1], rejects=clickhouse.rejects, health=clickhouse.health)

    started = time.monotonic()
    with Runtime(Plan(settings, compute=True, sinks=sinks, finish_s=1800)).start() as run:
        session_s = time.monotonic() - started  # Spark's session and the queries' start
        started = time.monotonic()
        queries = run.queries
        assert queries is not None
        assert run.wait(Until.CAUGHT_UP) == Until.CAUGHT_UP
        drain_s = time.monotonic() - started
        batches = [p for p in queries.metrics.recentProgress if p["numInputRows"]]
        busy_ms = sum(p["durationMs"]["triggerExecution"] for p in batches)
        rows = sum(p["numInputRows"] for p in batches)
        counts_before: dict[tuple[str, int], int] = {}
        for _, keys, counts in recorders[0].visible:
            for key, count in zip(keys, counts, strict=True):
                counts_before[key] = max(count, counts_before.get(key, 0))
        recorders[0].visible.clear()
        sent = asyncio.run(publish(spec["bootstrap"], int(spec["rate"] * spec["seconds"]), spec["rate"], None,
                                   first_id=10**9))
        assert run.wait(Until.CAUGHT_UP, timeout_s=600) == Until.CAUGHT_UP
        time.sleep(1)
        fresh = freshness(sent, recorders[0].visible, counts_before)
    quantiles = statistics.quantiles(fresh, n=100) if len(fresh) > 1 else [float("nan")] * 99
    return {"session_s": session_s, "drain_s": drain_s, "backlog": spec["backlog"],
            "drain_rate": spec["backlog"] / drain_s, "batch_rate": rows / (busy_ms / 1000) if busy_ms else 0.0,
            "batches": len(batches), "fresh_p50": quantiles[49], "fresh_p99": quantiles[98],
            "fresh_seen": len(fresh), "fresh_sent": len(sent)}


CONFIGS: list[tuple[str, list[int]]] = [("local[2]", []), ("standalone, 1 worker x 1 core", [1]),
                                        ("standalone, 2 workers x 1 core", [1, 1])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=1_000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--shuffle-partitions", type=int, default=2)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))), flush=True)
        return
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    root = Path(tempfile.mkdtemp(prefix="pulse-scale-"))
    jars = PulseSettings(_env_file=None).jars_dir  # type: ignore[call-arg]
    broker = LocalKafkaBroker(jars, root)
    lines = ["| job | backlog drain s | trades/s (drain, incl. first batch) | rows/s in batches | batches "
             "| freshness p50 ms | p99 ms | load after |", "|---|---|---|---|---|---|---|---|"]
    try:
        bootstrap = broker.start()
        asyncio.run(ensure_topics(bootstrap, [TOPIC], PARTITIONS))
        asyncio.run(publish(bootstrap, args.backlog, None, time.time_ns() // 1_000_000 - 600_000, first_id=1))
        for name, workers in CONFIGS:
            cluster = StandaloneCluster(root / f"spark-{len(workers)}") if workers else None
            try:
                master = "local[2]"
                if cluster is not None:
                    master = cluster.start_master()
                    for cores in workers:
                        cluster.start_worker(cores=cores)
                spec = {"root": str(root / f"run-{len(workers)}"), "bootstrap": bootstrap, "master": master,
                        "backlog": args.backlog, "rate": args.rate, "seconds": args.seconds,
                        "shuffle_partitions": args.shuffle_partitions}
                out = subprocess.run([sys.executable, "-m", "tests.support.scale_measure", "--child", json.dumps(spec)],
                                     capture_output=True, text=True, timeout=3600, check=True,
                                     preexec_fn=die_with_parent)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                # Whatever else ran on the machine meanwhile shows here: the numbers are only as good.
                r["load_1min_after"] = os.getloadavg()[0]
            finally:
                if cluster is not None:
                    cluster.stop()
            lines.append(f"| {name} | {r['drain_s']:.1f} | {r['drain_rate']:,.0f} | {r['batch_rate']:,.0f} "
                         f"| {r['batches']} | {r['fresh_p50']:.0f} | {r['fresh_p99']:.0f} "
                         f"| {r['load_1min_after']:.1f} |")
            print(lines[-1], json.dumps(r), flush=True)
    finally:
        broker.stop()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
