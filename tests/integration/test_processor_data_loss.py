"""failOnDataLoss=false: offsets deleted from Kafka before the job read them are skipped, and counted
in pulse_health.data_loss_offsets, while everything still there is aggregated."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from aiokafka.structs import TopicPartition

from tests.support.pipeline import process_topic
from tests.support.topic_writer import trade_message, write_messages

pytestmark = pytest.mark.integration

START_MS = 1_767_225_600_000


def _trades(ids: range) -> list[dict[str, Any] | bytes | str]:
    return [trade_message("LOSSUSDT", i, 100.0 + i % 3, 1.0, START_MS + i * 100, i % 2 == 0) for i in ids]


async def _delete_before(bootstrap: str, topic: str, partition: int, offset: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_records({TopicPartition(topic, partition): RecordsToDelete(before_offset=offset)})
    finally:
        await admin.close()


def _run_until_caught_up(spark, settings, bootstrap, database) -> None:
    process_topic(settings, timeout_s=90)


def test_deleted_offsets_are_counted_and_the_rest_is_processed(kafka, spark, database, settings):
    topic = settings.kafka.trades_topic
    write_messages(kafka.bootstrap, topic, _trades(range(20)), partition=0)
    _run_until_caught_up(spark, settings, kafka.bootstrap, database)

    # While the job is down, 30 more trades arrive and retention takes the first 12 of them.
    written = write_messages(kafka.bootstrap, topic, _trades(range(20, 50)), partition=0)
    lost_until = written[12].offset
    asyncio.run(_delete_before(kafka.bootstrap, topic, 0, lost_until))
    _run_until_caught_up(spark, settings, kafka.bootstrap, database)

    health = database.query_arrow(
        "SELECT sum(data_loss_offsets) AS lost FROM pulse_health WHERE query_name = 'pulse_metrics'").to_pylist()
    assert health[0]["lost"] == 12
    counted = database.query_arrow(
        "SELECT sum(trade_count) AS trades, min(first_agg_trade_id) AS first FROM pulse_metrics_latest").to_pylist()
    assert counted[0]["trades"] == 20 + 18, "every trade still in Kafka must be aggregated exactly once"
    ids = database.query_arrow(
        "SELECT first_agg_trade_id AS f, last_agg_trade_id AS l FROM pulse_metrics_latest ORDER BY f").to_pylist()
    covered = {i for row in ids for i in range(row["f"], row["l"] + 1)}
    assert not covered & set(range(20, 32)), "deleted trades cannot appear in any window"
