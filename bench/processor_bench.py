"""Processor freshness and throughput: trade time T -> its window visible in ClickHouse.

In one process: the embedded Kafka broker, the Spark session and chDB, all through
`pulse.runtime`. A generator in a process of its own publishes trades stamped T = now
at a fixed rate; a thin wrapper around the metrics sink records when each insert returned (the
rows are visible from then on) and the trade count it carried per window. Trade k of a window is
visible at the first insert whose count for that window is >= k; freshness = that time - T.

Jobs, same run, same broker, data and machine:
- `pulse`: the default job, Real-Time Mode (Spark's Kafka sink -> the store writer -> chDB);
- `microbatch`: Pulse's own micro-batch mode (PULSE_SPARK__MODE=microbatch);
- `seed_style`: the seed's notebook job shape (append output mode, 2 s watermark, Spark's default
  trigger, a per-batch write of the same rows through the same sink), from the same column builders.
Throughput over a backlog read from `earliest`, trades per second to the insert that made the last
trade visible: published as fast as it goes while the job streams (from the publish's start), and
waiting in the topic when the job starts, as after downtime (from the job's start: it reads such a
backlog in micro-batches, then goes on in Real-Time Mode). Each run also reports where the time goes.

Run: `make bench-processor` (python -m bench.processor_bench [--json]); BENCH_SECONDS (20) and
BENCH_BACKLOG (300000) size it, BENCH_PARTITIONS (3) sets the topic's partitions, BENCH_WARMUP_SECONDS
(BENCH_SECONDS; 0 skips it) the unmeasured first run, BENCH_RTM_BATCHES (e.g. "5,30") extra runs of the default
job with other Real-Time Mode batch lengths. With --json the last line is
{"mode", "freshness_ms": {"pulse", "microbatch", "seed_style": {"p50", "p99"}}, "freshness_ms_10k": {"pulse": {...}},
"offered_per_s": 1000, "backlog_trades_per_s", "backlog_waiting_trades_per_s"}.
Benchmarks report; they never assert on time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
from aiokafka import AIOKafkaProducer

from pulse.broker.local_kafka import ensure_topics
from pulse.runtime import Plan, Runtime, Until
from pulse.settings import PulseSettings
from pulse.storage.clickhouse import ClickHouseTransport, apply_schema, open_transport
from pulse.storage.sinks import PulseSinks, Sink


class VisibleAt:
    """The metrics sink, noting when each batch became visible in ClickHouse and what it carried."""

    def __init__(self, inner: Sink) -> None:
        self.inner = inner
        self.visible: list[tuple[float, list[tuple[str, int]], list[int]]] = []

    def write(self, batch: pa.Table) -> None:
        self.inner.write(batch)
        if batch.num_rows:
            windows = [(symbol, int(start.timestamp() * 1000)) for symbol, start in
                       zip(batch.column("symbol").to_pylist(), batch.column("window_start").to_pylist(), strict=True)]
            self.visible.append((time.time() * 1000, windows, batch.column("trade_count").to_pylist()))


# Pulse's default trades topic has 3 partitions (BENCH_PARTITIONS changes it); trade k goes to
# partition k % 3 with a symbol of its own there, so the job reads the partitions in parallel as it
# would a real feed.
PARTITIONS = int(os.environ.get("BENCH_PARTITIONS", "3"))


def partition_of(agg_id: int) -> int:
    return agg_id % PARTITIONS


WARM_UP_IDS = PARTITIONS * 10**9  # above every measured id; warm-up trade k still goes to partition k


def message(agg_id: int, time_ms: int) -> bytes:
    return orjson.dumps({
        "schema_version": 1, "symbol": f"BENCH{partition_of(agg_id)}USDT", "price": 100.0 + (agg_id % 100) / 100,
        "quantity": 0.5, "timestamp": time_ms, "side": "BUY" if agg_id % 7 > 2 else "SELL", "agg_trade_id": agg_id,
        "first_trade_id": agg_id, "last_trade_id": agg_id, "event_time": time_ms, "ingest_time": time_ms,
        "buyer_is_maker": agg_id % 7 <= 2, "quantity_no_rpi": None,
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
                await producer.send(topic, message(sent + 1, now_ms), partition=partition_of(sent + 1))
                times.append(now_ms)
                sent += 1
            if rate is not None:
                await asyncio.sleep(tick)
        await producer.flush()
    finally:
        await producer.stop()
    return times


def publish_elsewhere(bootstrap: str, topic: str, rate: float | None, count: int) -> list[int]:
    """`publish` in a process of its own: in the job's process the generator would hold the GIL
    that Spark's callbacks into Python need, and slow the job it measures (a headless job gets its
    trades from a producer in another process or container, too)."""
    with tempfile.NamedTemporaryFile(suffix=".json") as times:
        subprocess.run([sys.executable, "-m", "bench.processor_bench", "--publish", bootstrap, topic,
                        str(rate or 0), str(count), times.name], check=True, cwd=Path(__file__).parent.parent)
        return list(json.loads(Path(times.name).read_bytes()))


async def _warm_up(bootstrap: str, topic: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        # A trade per partition, with ids far above the measured ones: every task of the plan runs once.
        for agg_id in range(WARM_UP_IDS, WARM_UP_IDS + PARTITIONS):
            await producer.send_and_wait(topic, message(agg_id, time.time_ns() // 1_000_000 - 60_000),
                                         partition=partition_of(agg_id))
    finally:
        await producer.stop()


def freshness(times: list[int], visible: list[tuple[float, list[tuple[str, int]], list[int]]]) -> list[float]:
    """Trade k of a (symbol, window) is visible from the first insert whose count for it is >= k.
    `times[i]` is the T of trade i + 1 (its agg id), which fixes its partition and symbol."""
    per_window: dict[tuple[str, int], list[tuple[float, int]]] = defaultdict(list)
    for at, windows, counts in visible:
        for window, count in zip(windows, counts, strict=True):
            per_window[window].append((at, count))
    trades: dict[tuple[str, int], list[int]] = defaultdict(list)
    for agg_id, t in enumerate(times, start=1):
        trades[(f"BENCH{partition_of(agg_id)}USDT", t - t % 1000)].append(t)
    result = []
    for window, stamps in trades.items():
        seen = sorted(per_window.get(window, []))
        for k, t in enumerate(stamps, start=1):
            visible_at = [a for a, c in seen if c >= k]
            if visible_at:
                result.append(visible_at[0] - t)
    return result


def _expected_counts(times: list[int]) -> dict[tuple[str, int], int]:
    """Trades per (symbol, window) of what was published (`times[i]` is trade i + 1's T)."""
    counts: dict[tuple[str, int], int] = defaultdict(int)
    for agg_id, t in enumerate(times, start=1):
        counts[(f"BENCH{partition_of(agg_id)}USDT", t - t % 1000)] += 1
    return counts


def _all_visible(visible: list[tuple[float, list[tuple[str, int]], list[int]]],
                 expected: dict[tuple[str, int], int]) -> bool:
    seen: dict[tuple[str, int], int] = defaultdict(int)
    for _, windows, counts in list(visible):
        for window, count in zip(windows, counts, strict=True):
            seen[window] = max(seen[window], count)
    return all(seen[window] >= count for window, count in expected.items())


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else float("nan")


def seed_style_job(settings: PulseSettings, bootstrap: str, sink: VisibleAt) -> Any:
    """The seed notebook's job shape on Pulse's columns: append mode, 2 s watermark, default trigger."""
    from pulse.compute.columns import (  # noqa: PLC0415
        parse_messages,
        valid_trades,
        window_aggregates,
        window_metrics_columns,
    )
    from pulse.compute.job import read_kafka  # noqa: PLC0415
    from pulse.compute.spark_session import build_spark_session  # noqa: PLC0415
    from pulse.compute.stamps import stamp_metrics  # noqa: PLC0415

    spark = build_spark_session(settings)  # the session the benchmark started, shared
    windows = window_metrics_columns(window_aggregates(
        valid_trades(parse_messages(read_kafka(spark, settings, bootstrap))).withWatermark(
            "trade_time", "2 seconds")), settings.signal)

    def write(batch: Any, batch_id: int) -> None:
        sink.write(stamp_metrics(batch.toArrow(), time.time_ns() // 1_000_000))

    return (windows.writeStream.queryName("seed_style").outputMode("append")
            .option("checkpointLocation", str(settings.checkpoint_dir / "seed_style"))
            .foreachBatch(write).start())


def _durations(queries: list[Any], listener: Any = None, writer: Any = None) -> dict[str, float]:
    """Mean ms per metrics batch that carried rows: Spark's durationMs parts, the state store's
    update and commit times, and (Pulse's job) the Python side: collect (toArrow, which runs the
    plan), insert, the whole foreachBatch callback, and the health listener per report. For the
    store writer (Real-Time Mode): its inserts, and the updates and windows per insert."""
    parts: dict[str, list[float]] = defaultdict(list)
    for query in queries:
        for progress in query.recentProgress:
            if progress.get("numInputRows"):
                for name, value in (progress.get("durationMs") or {}).items():
                    parts[name].append(float(value))
                for operator in progress.get("stateOperators") or []:
                    parts["state.updates"].append(float(operator.get("allUpdatesTimeMs", 0)))
                    parts["state.commit"].append(float(operator.get("commitTimeMs", 0)))
    if listener is not None:
        for name in ("collect", "insert", "callback", "listener"):
            parts[f"python.{name}"] = list(getattr(listener.timings, name))
    means = {name: statistics.fmean(values) for name, values in parts.items() if values}
    if writer is not None and writer.stats.inserts:
        stats = writer.stats
        means["writer.insert"] = statistics.fmean(stats.insert_ms) if stats.insert_ms else 0.0
        means["writer.commit"] = statistics.fmean(stats.commit_ms) if stats.commit_ms else 0.0
        means["writer.updates_per_insert"] = stats.updates_read / stats.inserts
        means["writer.windows_per_insert"] = stats.windows_inserted / stats.inserts
        # Per window: trade time -> its update in Kafka (the job), and that -> visible (the writer).
        means["trade->kafka (job)"] = statistics.median(stats.job_ms) if stats.job_ms else 0.0
        means["kafka->visible (writer)"] = statistics.median(stats.store_ms) if stats.store_ms else 0.0
    return means


def run(base: PulseSettings, bootstrap: str, rate: float | None, count: int, job: str = "pulse",
        earliest: bool = False, waiting: bool = False) -> dict[str, Any]:
    """One job over `count` trades: at `rate` once it runs, or (`earliest`) as fast as they can be
    published, while it runs or (`waiting`) before it starts, as after downtime."""
    topic = f"bench_{uuid.uuid4().hex[:8]}"
    mode = "microbatch" if job in ("microbatch", "seed") else "realtime"
    settings = base.override(
        kafka={"bootstrap_servers": bootstrap, "trades_topic": topic, "dead_letter_topic": f"{topic}.dlq",
               "gaps_topic": f"{topic}.gaps", "metrics_topic": f"{topic}.metrics",
               "rejects_topic": f"{topic}.rejects", "partitions": PARTITIONS},
        clickhouse={"database": f"bench_{uuid.uuid4().hex[:8]}"},
        spark={"checkpoint_dir": base.data_dir / topic, "starting_offsets": "earliest", "mode": mode})
    recorders: list[VisibleAt] = []

    def sinks(transport: ClickHouseTransport) -> PulseSinks:
        clickhouse = PulseSinks.clickhouse(transport)
        recorders.append(VisibleAt(clickhouse.metrics))
        return PulseSinks(metrics=recorders[-1], rejects=clickhouse.rejects, health=clickhouse.health)

    times: list[int] = []
    publish_started = 0.0
    if waiting:  # the topic as the job would find it after downtime: it starts over a backlog
        asyncio.run(ensure_topics(bootstrap, [topic], PARTITIONS))
        times = publish_elsewhere(bootstrap, topic, None, count)
    job_started = time.time() * 1000
    with Runtime(Plan(settings, compute=job != "seed", sinks=sinks, finish_s=600)).start() as runtime, \
            contextlib.ExitStack() as own:
        if earliest and not waiting:
            publish_started = time.time() * 1000
            times = publish_elsewhere(bootstrap, topic, None, count)
        listener = None
        if job == "seed":
            # The peer's job is not Pulse's: the benchmark starts it on the shared session and store.
            store = open_transport(settings.clickhouse, settings.chdb_path)
            own.callback(store.close)
            apply_schema(store, settings.schema_dir)
            sinks(store)
            queries = [seed_style_job(settings, bootstrap, recorders[-1])]
        else:
            assert runtime.queries is not None
            queries, listener = runtime.queries.all(), runtime.queries.listener

        def idle(idle_s: float, timeout_s: float) -> None:
            if job == "seed":
                _wait_idle(queries, idle_s, timeout_s)
            elif runtime.wait(Until.IDLE, timeout_s=timeout_s, idle_s=idle_s) != Until.IDLE:
                raise TimeoutError(f"the job did not go idle within {timeout_s:.0f} s")

        def until(visible: Callable[[], bool], timeout_s: float) -> None:
            """Real-Time Mode: until the trades are visible. Its batches end once a minute, so waiting
            for Spark to report the end (idle) would measure the batch length, not the job."""
            if runtime.wait(visible, timeout_s=timeout_s) != "condition met":
                raise TimeoutError("the job did not make every trade visible")

        def done(expected: dict[tuple[str, int], int], timeout_s: float) -> None:
            if mode == "realtime":
                until(lambda: _all_visible(recorders[0].visible, expected), timeout_s)
            else:
                idle(1.0, timeout_s)
        if not earliest:
            # The first real batch would pay for planning, code generation and the state store: one
            # old trade per partition warms the job up, unmeasured.
            asyncio.run(_warm_up(bootstrap, topic))
            if mode == "realtime":
                until(lambda: sum(len(windows) for _, windows, _ in recorders[0].visible) >= PARTITIONS, 300)
            else:
                idle(2.0, 300)
        # A backlog's clock starts when its first trade can arrive: the job's start, or the publish's.
        started = job_started if waiting else publish_started if earliest else time.time() * 1000
        if not earliest:
            times = publish_elsewhere(bootstrap, topic, rate, count)
        # The seed's append mode writes a window only once the watermark passed it: a last trade
        # well after the data moves the watermark, so every window is written and counted.
        if job == "seed":
            asyncio.run(_push_watermark(bootstrap, topic))
        done(_expected_counts(times), 600)
        breakdown = _durations(queries[:1], listener, runtime.writer)
        for query in queries:
            query.stop()
    visible = recorders[0].visible
    fresh = freshness(times, visible)
    # The backlog's rate: from the start to the insert that made the last of its trades visible.
    last_visible = max((at for at, _, _ in visible), default=started)
    return {"trades": len(times), "p50": pct(fresh, 50), "p99": pct(fresh, 99), "max": max(fresh, default=0),
            "rate": len(times) / max((last_visible - started) / 1000, 1e-3), "seen": len(fresh),
            "durations": breakdown}


def _wait_idle(queries: list[Any], idle_s: float, timeout_s: float) -> None:
    """The seed-style job: no new batch for `idle_s` and its last one read up to what Kafka had.

    Its trigger runs as fast as it can, so it keeps asking Kafka for offsets: "trigger active" is
    no sign of work there (on a loaded machine it was seldom off for 2 s in a row).
    """
    from pulse.compute.progress import kafka_offsets  # noqa: PLC0415

    deadline = time.monotonic() + timeout_s
    last: int | None = None
    since = time.monotonic()
    while time.monotonic() < deadline:
        for query in queries:
            if query.exception() is not None:
                raise RuntimeError(f"{query.name} failed: {query.exception()}")
        progress = queries[0].lastProgress
        batch = int(progress["batchId"]) if progress else None
        now = time.monotonic()
        if batch != last:
            last, since = batch, now
        elif progress and now - since >= idle_s and not queries[0].status.get("isDataAvailable") and all(
                kafka_offsets(source.get("endOffset")) == kafka_offsets(source.get("latestOffset"))
                for source in progress.get("sources", [])):
            return
        time.sleep(0.1)
    raise TimeoutError("the job did not go idle")


async def _push_watermark(bootstrap: str, topic: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, message(10**9, time.time_ns() // 1_000_000 + 10_000),
                                     partition=partition_of(10**9))
    finally:
        await producer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="end with one JSON line of the headline numbers")
    parser.add_argument("--publish", nargs=5, metavar=("BOOTSTRAP", "TOPIC", "RATE", "COUNT", "TIMES_FILE"),
                        help=argparse.SUPPRESS)  # the load generator's own process (publish_elsewhere)
    args = parser.parse_args()
    if args.publish:
        bootstrap, topic, rate, count, times_file = args.publish
        times = asyncio.run(publish(bootstrap, topic, float(rate) or None, int(count)))
        Path(times_file).write_bytes(orjson.dumps(times))
        return
    data_dir = Path(tempfile.mkdtemp(prefix="pulse-bench-"))
    base = PulseSettings(_env_file=None, data_dir=data_dir).override(  # type: ignore[call-arg]
        producer={"metrics_port": 0}, spark={"health_port": 0})
    seconds = float(os.environ.get("BENCH_SECONDS", "20"))
    warmup = float(os.environ.get("BENCH_WARMUP_SECONDS", str(seconds)))
    backlog = int(os.environ.get("BENCH_BACKLOG", "300000"))
    lines = ["| job | offered trades/s | trades | freshness p50 ms | p99 ms | max ms |", "|---|---|---|---|---|---|"]
    results: dict[str, dict[str, Any]] = {}
    labels = {"pulse": f"pulse (Real-Time Mode, {base.spark.realtime_batch_s:g} s batches)",
              "microbatch": f"pulse micro-batch (trigger {base.spark.trigger_ms} ms)", "seed": "seed-style"}
    # One broker and one Spark session for every run: started here, every run's runtime finds them.
    from pulse.compute.spark_session import build_spark_session  # noqa: PLC0415

    with Runtime(Plan(base)).start() as shared:
        spark = build_spark_session(base)
        bootstrap = shared.bootstrap
        # A fresh JVM compiles as it goes: the first run would pay for it and flatter every later one.
        if warmup > 0:
            run(base, bootstrap, 1_000, int(1_000 * warmup), "pulse")
        for name, job, rate in (("pulse", "pulse", 1_000), ("microbatch", "microbatch", 1_000),
                                ("seed_style", "seed", 1_000), ("pulse_10k", "pulse", 10_000)):
            r = results[name] = run(base, bootstrap, rate, int(rate * seconds), job)
            lines.append(f"| {labels[job]} | {rate:,} | {r['trades']:,.0f} | {r['p50']:.0f} | {r['p99']:.0f}"
                         f" | {r['max']:.0f} |")
            print(lines[-1], flush=True)
        # Optional: the default job again with other Real-Time Mode batch lengths (a batch end stalls
        # the stream, so its length shows in the tail), e.g. BENCH_RTM_BATCHES=5,30.
        for batch_s in [float(b) for b in os.environ.get("BENCH_RTM_BATCHES", "").split(",") if b.strip()]:
            r = results[f"pulse_batch_{batch_s:g}s"] = run(base.override(spark={"realtime_batch_s": batch_s}),
                                                            bootstrap, 1_000, int(1_000 * seconds), "pulse")
            lines.append(f"| pulse (Real-Time Mode, {batch_s:g} s batches) | 1,000 | {r['trades']:,.0f} |"
                         f" {r['p50']:.0f} | {r['p99']:.0f} | {r['max']:.0f} |")
            print(lines[-1], flush=True)
        r = results["backlog"] = run(base, bootstrap, None, backlog, "pulse", earliest=True)
        lines.append(f"\nbacklog of {backlog:,} trades published as fast as they go while the job streams:"
                     f" {r['rate']:,.0f} trades/s processed")
        r = results["backlog_waiting"] = run(base, bootstrap, None, backlog, "pulse", earliest=True, waiting=True)
        lines.append(f"backlog of {backlog:,} trades waiting when the job starts (micro-batches, then Real-Time"
                     f" Mode): {r['rate']:,.0f} trades/s processed, from the job's start")
        spark.stop()
    for peer in ("microbatch", "seed_style"):
        lines.append(f"\nPulse's lead over {peer} at 1k/s: {results[peer]['p50'] / results['pulse']['p50']:.1f}x (p50),"
                     f" {results[peer]['p99'] / results['pulse']['p99']:.1f}x (p99)")
    for name, result in results.items():
        if result.get("durations"):
            lines.append(f"\n{name}: mean ms per metrics batch with data: " + ", ".join(
                f"{k} {v:.0f}" for k, v in sorted(result["durations"].items(), key=lambda kv: -kv[1])))
    print("\n".join(lines))
    if args.json:
        def figures(key: str) -> dict[str, int | None]:
            # A run too short to measure (no trade visible) reports null, not a crash.
            return {q: (None if math.isnan(results[key][q]) else round(results[key][q])) for q in ("p50", "p99")}

        print(json.dumps({
            "mode": base.spark.mode,
            "freshness_ms": {name: figures(name) for name in ("pulse", "microbatch", "seed_style")},
            "freshness_ms_10k": {"pulse": figures("pulse_10k")},
            "offered_per_s": 1000,
            "backlog_trades_per_s": round(results["backlog"]["rate"]),
            "backlog_waiting_trades_per_s": round(results["backlog_waiting"]["rate"]),
        }))


if __name__ == "__main__":
    main()
