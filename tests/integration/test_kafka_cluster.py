"""Beyond one machine, on real engines started here on loopback: a three-broker Kafka cluster
losing a member mid-stream.

Three KRaft nodes from the pinned jars (`LocalKafkaBroker(nodes=3)`), the trades topic with
replication factor 3 and min.insync.replicas=2; the leader of a partition is killed with SIGKILL
while the synthetic source publishes through the producer and the job reads. And a partition placed
on one node alone loses it for good (until restarted): the producer's other partitions must keep
being acknowledged meanwhile. The cluster starts once for the module (`make test` keeps the module
on one worker: tests/conftest.py); a test that kills a node gets it back after it.

Windows are compared with the independent reference (tests/support/reference.py). No JVM may
outlive the module: every node is tied to this process (PR_SET_PDEATHSIG), stopped in `finally`,
and looked for afterwards with psutil by the folder it ran in.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from pulse.broker.lanes import partition_for
from pulse.broker.local_kafka import LocalKafkaBroker, end_offsets
from pulse.runtime import Plan, Runtime, Until
from pulse.settings import KafkaSettings, PulseSettings
from pulse.source.synthetic import SyntheticSource
from pulse.storage.clickhouse import ChdbTransport, apply_schema
from tests.support.names import unique_name
from tests.support.pipeline import metrics_rows
from tests.support.reference import assert_windows_match, reference_windows
from tests.support.scale_out import describe_topic, ids_in_topic_order, read_topic, ref_trades
from tests.support.spark_standalone import leftovers

pytestmark = pytest.mark.integration

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT", "DOGEUSDT"]
RATE_PER_S = 1_000
TOTAL = 25_000
# Above the ~11 s from a SIGKILL to the first ack of a new leader (docs/scaling.md).
FAILOVER_WATERMARK_S = 30.0


def _batch_id(query: Any) -> int:
    """The id of the query's last completed micro-batch (-1 before the first)."""
    progress: Any = query.lastProgress
    return int(progress["batchId"]) if progress else -1


@pytest.fixture(scope="module")
def kafka_nodes(base_settings: PulseSettings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafkaBroker]:
    """Three KRaft nodes, started once for the module's tests."""
    folder = tmp_path_factory.mktemp("kafka-cluster")
    cluster = LocalKafkaBroker(base_settings.jars_dir, folder, nodes=3, quick_jit=base_settings.quick_jit)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
    assert leftovers(folder) == [], "Kafka nodes outlived the cluster"


@pytest.fixture
def kafka_cluster(kafka_nodes: LocalKafkaBroker) -> Iterator[LocalKafkaBroker]:
    """The module's cluster with every node up; the nodes a test killed are started again after it."""
    yield kafka_nodes
    for node_id in kafka_nodes.node_ids:
        kafka_nodes.start_node(node_id)


@pytest.mark.slow
def test_leader_killed_under_load_nothing_lost_or_doubled_and_the_job_goes_on(
        spark, chdb_engine, base_settings, kafka_cluster, tmp_path):
    database = ChdbTransport(base_settings.chdb_path, unique_name("pulse_failover"))
    apply_schema(database, base_settings.schema_dir)
    settings = base_settings.override(
        kafka=KafkaSettings(bootstrap_servers=kafka_cluster.bootstrap, trades_topic=unique_name("trades"),
                            dead_letter_topic=unique_name("dlq"), gaps_topic=unique_name("gaps"), partitions=3,
                            replication_factor=3, min_insync_replicas=2).model_dump(),
        clickhouse={"database": database.database},
        # The other partitions keep publishing through the failover, so the stalled partition's
        # trades reach the job ~10 s behind theirs: a watermark longer than the failover keeps them.
        spark={"starting_offsets": "earliest", "checkpoint_dir": str(tmp_path / "checkpoints"), "trigger_ms": 250,
               "rejects_trigger_ms": 500, "watermark_s": FAILOVER_WATERMARK_S},
        # Until Kafka fences the dead leader (broker.session.timeout.ms, 9 s) and elects another,
        # aiokafka holds that partition's batch and its lane backs up for ~10 s (the other lanes
        # keep publishing). The queue must hold that lane's share of rate x failover time, or
        # drop-oldest drops (counted) trades; the test leaves room for the whole rate.
        producer={"queue_max": 100_000})
    topic = settings.kafka.trades_topic

    plan = Plan(settings, SyntheticSource(SYMBOLS, RATE_PER_S, total=TOTAL, seed=11), compute=True, finish_s=240)
    with Runtime(plan).start() as run:
        partitions, configs = describe_topic(kafka_cluster.bootstrap, topic)
        assert [p.replicas for p in partitions] == [[1, 2, 3]] * 3
        assert [p.isr for p in partitions] == [[1, 2, 3]] * 3
        assert configs["min.insync.replicas"] == "2"

        queries, service = run.queries, run.producer
        assert queries is not None and service is not None
        _wait_for(lambda: service.published >= TOTAL // 5, "the producer to get going", run)
        # The leader of the partition that took the most trades so far: kill -9, no controlled shutdown.
        written = asyncio.run(end_offsets(kafka_cluster.bootstrap, topic))
        victim_partition = max(written, key=lambda partition: written[partition])
        leader = partitions[victim_partition].leader
        batch_at_kill = _batch_id(queries.metrics)
        published_at_kill = service.published
        kafka_cluster.kill_node(leader)
        killed_at = time.monotonic()

        assert run.wait(Until.SOURCE_ENDED, timeout_s=240) == Until.SOURCE_ENDED
        recovered_after = time.monotonic() - killed_at
        assert service.router.trades == TOTAL
        assert service.published == TOTAL, f"{service.published} of {TOTAL} acknowledged"
        assert sum(service.queue.dropped.values()) == 0
        assert service.published > published_at_kill

        assert run.wait(Until.CAUGHT_UP) == Until.CAUGHT_UP
        assert queries.metrics.isActive and queries.rejects.isActive
        assert _batch_id(queries.metrics) > batch_at_kill
        after, _ = describe_topic(kafka_cluster.bootstrap, topic)
        assert after[victim_partition].leader not in (leader, -1)
        assert leader not in after[victim_partition].isr
        rows = metrics_rows(database)
        late = database.query_arrow("SELECT sum(late_trades) AS n FROM pulse_health").to_pylist()[0]["n"]

    records = read_topic(kafka_cluster.bootstrap, topic)
    ids = ids_in_topic_order(records)
    generated = {symbol: len(symbol_ids) for symbol, symbol_ids in ids.items()}
    assert sum(generated.values()) == TOTAL, f"the topic holds {sum(generated.values())} trades, not {TOTAL}"
    for symbol, symbol_ids in ids.items():
        # Contiguous from 1, each once, in order: the idempotent producer neither lost, doubled nor
        # reordered anything across the failover.
        assert symbol_ids == list(range(1, len(symbol_ids) + 1)), f"{symbol}: ids not contiguous"
    # Nothing was late: the watermark outlasted the failover, during which the other partitions'
    # event time ran ahead of the stalled one's.
    assert late == 0
    assert_windows_match(rows, reference_windows(ref_trades(records)))
    print(f"leader {leader} of partition {victim_partition} killed; producer done {recovered_after:.1f}s later")


# One symbol's partition per node, and the first partition twice as busy as each other one.
LANE_SYMBOLS = {0: ["SOLUSDT", "BNBUSDT"], 1: ["LTCUSDT"], 2: ["BTCUSDT", "ETHUSDT", "ADAUSDT"]}
LANE_RATE_PER_S = 2_000
LANE_TOTAL = 40_000


async def _create_topic_one_partition_per_node(bootstrap: str, topic: str, nodes: list[int]) -> None:
    """Partition i on node i+1 alone: killing that node leaves the partition without any leader
    until the node is back, while the others stay writable."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, -1, -1, replica_assignments={
            partition: [node] for partition, node in enumerate(nodes)})])
    finally:
        await admin.close()


def _acked(service: Any, symbols: list[str]) -> int:
    by_symbol = dict(service.publisher.stats.published_by_symbol)  # one copy: the producer's thread adds
    return sum(by_symbol.get(symbol, 0) for symbol in symbols)


def _wait_for(condition: Any, what: str, run: Runtime, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        run.raise_if_failed()
        assert not run.source_ended, f"the producer ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.slow
def test_a_partition_without_a_leader_holds_back_only_its_own_trades(base_settings, kafka_cluster):
    """The producer's lanes: while one partition cannot be written at all, the others keep being
    acknowledged; once it is back, its held trades follow, none lost, doubled or out of order."""
    assert all(partition_for(s.encode(), 3) == p for p, symbols in LANE_SYMBOLS.items() for s in symbols)
    settings = base_settings.override(
        kafka=KafkaSettings(bootstrap_servers=kafka_cluster.bootstrap, trades_topic=unique_name("trades"),
                            dead_letter_topic=unique_name("dlq"), gaps_topic=unique_name("gaps"),
                            partitions=3).model_dump(),
        # The stalled lane's share of the whole run fits in the queue, so nothing is dropped; aiokafka
        # keeps retrying the partition's batch (same sequence numbers) until the node is back.
        producer={"queue_max": 100_000, "request_timeout_ms": 180_000})
    topic = settings.kafka.trades_topic
    asyncio.run(_create_topic_one_partition_per_node(kafka_cluster.bootstrap, topic, kafka_cluster.node_ids))
    stalled = 0
    others = LANE_SYMBOLS[1] + LANE_SYMBOLS[2]
    symbols = LANE_SYMBOLS[stalled] + others

    with Runtime(Plan(settings, SyntheticSource(symbols, LANE_RATE_PER_S, total=LANE_TOTAL, seed=5))).start() as run:
        service = run.producer
        assert service is not None
        _wait_for(lambda: service.publisher is not None, "the producer", run)
        _wait_for(lambda: all(_acked(service, [s]) >= 100 for s in symbols), "every partition acknowledged",
                  run)
        kafka_cluster.kill_node(kafka_cluster.node_ids[stalled])

        # Acks that were on their way at the kill have landed once the others moved on a little.
        at_kill = _acked(service, others)
        _wait_for(lambda: _acked(service, others) >= at_kill + 300, "the other partitions after the kill",
                  run)
        stalled_before, others_before = _acked(service, LANE_SYMBOLS[stalled]), _acked(service, others)
        _wait_for(lambda: _acked(service, others) >= others_before + 5_000,
                  "the other partitions to keep being acknowledged", run)
        assert _acked(service, LANE_SYMBOLS[stalled]) == stalled_before, "acks from a partition without a node"
        assert len(service.queue) > 0, "the stalled partition's trades wait in its lane"

        kafka_cluster.start_node(kafka_cluster.node_ids[stalled])
        assert run.wait(Until.SOURCE_ENDED, timeout_s=240) == Until.SOURCE_ENDED
        assert service.published == LANE_TOTAL
        assert sum(service.queue.dropped.values()) == 0

    ids = ids_in_topic_order(read_topic(kafka_cluster.bootstrap, topic))
    assert set(ids) == set(symbols)
    assert sum(map(len, ids.values())) == LANE_TOTAL
    for symbol, symbol_ids in ids.items():
        assert symbol_ids == list(range(1, len(symbol_ids) + 1)), f"{symbol}: ids not contiguous and in order"


def test_replication_settings_reach_topic_creation_and_refuse_an_impossible_quorum(monkeypatch):
    monkeypatch.setenv("PULSE_KAFKA__REPLICATION_FACTOR", "3")
    monkeypatch.setenv("PULSE_KAFKA__MIN_INSYNC_REPLICAS", "2")
    kafka = PulseSettings(_env_file=None).kafka  # type: ignore[call-arg]
    assert (kafka.replication_factor, kafka.topic_configs()) == (3, {"min.insync.replicas": "2"})
    assert KafkaSettings().topic_configs() == {}, "the broker's default unless set"
    with pytest.raises(ValueError, match="min_insync_replicas"):
        KafkaSettings(replication_factor=1, min_insync_replicas=2)
