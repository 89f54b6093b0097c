"""Helpers of the scale-out tests: who leads a partition, what a topic holds, a `pulse process` child.

The trades read back from a topic become `RefTrade`s for `tests/support/reference.py` through this
module's own JSON reading (prices as the decimal text the message carries), so the reference of a
synthetic run shares no code with pulse either.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from tests.support.processor_process import PULSE, output_topics, pulse_env
from tests.support.reference import RefTrade
from tests.support.spark_standalone import die_with_parent


@dataclass(frozen=True)
class PartitionState:
    partition: int
    leader: int
    replicas: list[int]
    isr: list[int]


async def _describe(bootstrap: str, topic: str) -> tuple[list[PartitionState], dict[str, str]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        (description,) = await admin.describe_topics([topic])
        (configs,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        await admin.close()
    partitions = sorted((PartitionState(p["partition"], p["leader"], sorted(p["replicas"]), sorted(p["isr"]))
                         for p in description["partitions"]), key=lambda p: p.partition)
    # DescribeConfigs: resources = [(error_code, error_message, type, name, [(name, value, ...)])]
    entries = {entry[0]: entry[1] for entry in configs.resources[0][4]}
    return partitions, entries


def describe_topic(bootstrap: str, topic: str, timeout_s: float = 30.0) -> tuple[list[PartitionState], dict[str, str]]:
    """Partitions (leader, replicas, in-sync replicas) and configs of a topic, retried while a crashed
    node is still in the cluster's metadata (a request sent there fails until it is fenced)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return asyncio.run(_describe(bootstrap, topic))
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


async def _read_topic(bootstrap: str, topic: str, timeout_s: float) -> list[tuple[int, int, dict[str, Any]]]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        if not partitions:
            cluster = await consumer._client.fetch_all_metadata()
            partitions = [TopicPartition(topic, p) for p in sorted(cluster.partitions_for_topic(topic) or [])]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        records: list[tuple[int, int, dict[str, Any]]] = []
        deadline = time.monotonic() + timeout_s
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            if time.monotonic() > deadline:
                raise AssertionError(f"could not read {topic} to its end in {timeout_s}s")
            for tp, messages in (await consumer.getmany(timeout_ms=500)).items():
                # parse_float=Decimal: the price and quantity exactly as written, for the exact reference.
                records.extend((tp.partition, m.offset, json.loads(m.value, parse_float=Decimal)) for m in messages)
        return records
    finally:
        await consumer.stop()


def read_topic(bootstrap: str, topic: str, timeout_s: float = 60.0) -> list[tuple[int, int, dict[str, Any]]]:
    """Every record of `topic` as (partition, offset, JSON value), in offset order per partition."""
    return asyncio.run(_read_topic(bootstrap, topic, timeout_s))


def ids_in_topic_order(records: list[tuple[int, int, dict[str, Any]]]) -> dict[str, list[int]]:
    """Aggregate ids per symbol in the order the topic holds them (a symbol lives in one partition)."""
    ids: dict[str, list[int]] = defaultdict(list)
    for _, _, value in sorted(records, key=lambda r: (r[0], r[1])):
        ids[value["symbol"]].append(int(value["agg_trade_id"]))
    return dict(ids)


def ref_trades(records: list[tuple[int, int, dict[str, Any]]]) -> list[RefTrade]:
    return [RefTrade(v["symbol"], int(v["agg_trade_id"]), Decimal(v["price"]), Decimal(v["quantity"]),
                     int(v["timestamp"]), bool(v["buyer_is_maker"])) for _, _, v in records]


def start_pulse_process(data_dir: Path, bootstrap: str, topic: str, log: Path, *extra: str,
                        **settings: str) -> subprocess.Popen[bytes]:
    """`pulse process` (the job through the runtime, configured by PULSE_* variables) as a child that
    dies with this process, reading `topic` from the start."""
    command = [*PULSE, "process", "--data-dir", str(data_dir), "--bootstrap-servers", bootstrap, "--topic", topic,
               "--starting-offsets", "earliest", *extra]
    with log.open("ab") as out:
        return subprocess.Popen(command, cwd=data_dir.parent, env=pulse_env(**{**output_topics(topic), **settings}),
                                stdout=out, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)  # noqa: PLW1509


def health_status(port: int) -> int | str:
    """The HTTP status of a job's /health, or why there was none."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=3) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError as error:
        return repr(error)


def batches(checkpoint: Path, query: str = "pulse_metrics", kind: str = "commits") -> int:
    """Micro-batches a query planned (`offsets`) or committed (`commits`) in its checkpoint."""
    folder = checkpoint / query / kind
    return len(list(folder.glob("[0-9]*"))) if folder.exists() else 0
