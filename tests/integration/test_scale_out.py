"""Beyond one machine, on real engines started here on loopback: a Spark standalone cluster and a
three-broker Kafka cluster, each losing a member mid-stream.

- Spark: a master and a worker from pyspark's own distribution run the Pulse job, started as users
  start it (`pulse process` with PULSE_SPARK__MASTER=spark://…, through the runtime). The driver
  is a child process because a Spark driver is one per process, and this one already has the
  tests' local[2] session. The worker (with its executors) is killed mid-stream and started again.
- Kafka: three KRaft nodes from the pinned jars (`LocalKafkaBroker(nodes=3)`), the trades topic
  with replication factor 3 and min.insync.replicas=2; the leader of a partition is killed with
  SIGKILL while the synthetic source publishes through the producer and the job reads. And a
  partition placed on one node alone loses it for good (until restarted): the producer's other
  partitions must keep being acknowledged meanwhile.

Windows are compared with the independent reference (tests/support/reference.py). No JVM may
outlive a test: every process started here is tied to this one (PR_SET_PDEATHSIG), stopped in
`finally`, and looked for afterwards with psutil by the folder it ran in.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from pulse.broker.lanes import partition_for
from pulse.broker.local_kafka import LocalKafkaBroker, end_offsets, free_port
from pulse.compute.spark_session import connector_jars
from pulse.runtime import Plan, Runtime, Until
from pulse.settings import KafkaSettings, PulseSettings
from pulse.source.synthetic import SyntheticSource
from pulse.storage.clickhouse import ChdbTransport, apply_schema
from tests.support.names import unique_name
from tests.support.pipeline import metrics_rows, publish_recording
from tests.support.processor_process import WINDOWS_SQL, pulse_sql
from tests.support.producer_harness import fresh_topics
from tests.support.recordings import SPOT_RAW, USDM_RAW, recording
from tests.support.reference import assert_windows_match, reference_windows, trades_from_recording
from tests.support.scale_out import (
    batches,
    describe_topic,
    health_status,
    ids_in_topic_order,
    read_topic,
    ref_trades,
    start_pulse_process,
)
from tests.support.spark_standalone import StandaloneCluster, app_dirs, leftovers, master_log_mentions, shipped_jars

pytestmark = pytest.mark.integration

JOB_TIMEOUT_S = 300
# Every task of both Real-Time Mode queries runs at once: one slot spare over what the job needs.
WORKER_CORES = PulseSettings().task_slots() + 1


# --- Spark standalone ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def standalone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandaloneCluster]:
    """A master and one worker, as `start-master.sh` and `start-worker.sh` would run them. The worker
    offers the task slots a Real-Time Mode job needs (docs/scaling.md), more than this machine's
    cores: a slot is a thread, and RTM's tasks mostly wait for the next trade."""
    cluster = StandaloneCluster(tmp_path_factory.mktemp("spark-standalone"))
    try:
        cluster.start_master()
        cluster.start_worker(cores=WORKER_CORES)
        yield cluster
    finally:
        cluster.stop()
    assert leftovers(cluster.root) == [], "Spark processes outlived the cluster"


def _cluster_env(cluster: StandaloneCluster, checkpoints: Path, **more: str) -> dict[str, str]:
    return {"PULSE_SPARK__MASTER": cluster.url, "PULSE_SPARK__CHECKPOINT_DIR": str(checkpoints),
            "PULSE_SPARK__TRIGGER_MS": "250", "PULSE_SPARK__HEALTH_PORT": "0", **more}


def _finish(process: Any, log: Path, timeout_s: float = JOB_TIMEOUT_S) -> None:
    """Wait for `pulse process` to end by itself, cleanly, taking its Spark driver JVM along."""
    started: dict[int, psutil.Process] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while process.poll() is None:
            with contextlib.suppress(psutil.NoSuchProcess):
                started.update((p.pid, p) for p in psutil.Process(process.pid).children(recursive=True))
            assert time.monotonic() < deadline, f"the job did not finish in {timeout_s:.0f}s"
            time.sleep(0.5)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
    assert process.returncode == 0, log.read_text()[-4000:]
    _, alive = psutil.wait_procs(list(started.values()), timeout=30)
    assert not alive, f"the job left {[p.pid for p in alive]} behind"


def test_the_job_on_a_standalone_cluster_matches_the_reference(kafka, base_settings, standalone, tmp_path):
    topics = fresh_topics(kafka.bootstrap)
    published = publish_recording(base_settings.override(kafka=topics.model_dump()), recording(SPOT_RAW))
    reference = reference_windows(trades_from_recording(recording(SPOT_RAW)))
    assert published == sum(w.trade_count for w in reference.values())

    # Checkpoints on a path the driver and the executors both reach; on one machine any folder is.
    checkpoints = tmp_path / "shared" / "checkpoints"
    data_dir = tmp_path / "driver"
    data_dir.mkdir()
    log = tmp_path / "process.log"
    apps_before = len(app_dirs(standalone.workers[0]))
    registered_before = len(master_log_mentions(standalone, r"Registered app pulse-processor"))
    process = start_pulse_process(data_dir, kafka.bootstrap, topics.trades_topic, log, "--until-idle", "2",
                                  **_cluster_env(standalone, checkpoints))
    _finish(process, log)

    # The job (app name from PulseSettings.spark.app_name) registered with this master.
    assert len(master_log_mentions(standalone, r"Registered app pulse-processor")) == registered_before + 1
    assert_windows_match(pulse_sql(data_dir, WINDOWS_SQL), reference)
    # The tasks ran in executors of the worker, which fetched the connector from the driver (spark.jars).
    assert len(app_dirs(standalone.workers[0])) == apps_before + 1, "no executor of this job ran on the worker"
    assert {jar.name for jar in connector_jars(base_settings.jars_dir)} <= shipped_jars(standalone.workers[0])
    # The driver wrote offsets and commits, the executors the state of the windows: both in the one
    # checkpoint folder, none beside the driver's data.
    assert batches(checkpoints) > 0
    assert list((checkpoints / "pulse_metrics" / "state").rglob("*.delta")) or \
        list((checkpoints / "pulse_metrics" / "state").rglob("*.changelog")), "no state store files"
    assert not (data_dir / "checkpoints").exists()


def test_worker_lost_mid_stream_the_job_waits_visibly_recovers_and_a_restart_stays_exact(
        kafka, base_settings, standalone, tmp_path):
    """Micro-batch mode: a lost worker stalls the job, which waits for resources and goes on."""
    topics = fresh_topics(kafka.bootstrap)
    spot = recording(SPOT_RAW)
    publish_recording(base_settings.override(kafka=topics.model_dump()), spot)
    checkpoints = tmp_path / "shared" / "checkpoints"
    data_dir = tmp_path / "driver"
    data_dir.mkdir()
    log = tmp_path / "process.log"
    health_port = free_port()
    # Small micro-batches so that the loss lands mid-stream; a short staleness so /health shows the stall.
    env = _cluster_env(standalone, checkpoints, PULSE_SPARK__MODE="microbatch",
                       PULSE_SPARK__MAX_OFFSETS_PER_TRIGGER="250",
                       PULSE_SPARK__HEALTH_PORT=str(health_port), PULSE_SPARK__HEALTH_STALE_S="3")
    process = start_pulse_process(data_dir, kafka.bootstrap, topics.trades_topic, log, "--until-idle", "3", **env)
    try:
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while batches(checkpoints) < 2:
            assert process.poll() is None, log.read_text()[-4000:]
            assert time.monotonic() < deadline, "the job committed no batches on the cluster"
            time.sleep(0.1)
        committed = batches(checkpoints)
        killed = standalone.kill_worker(0)
        assert len(killed) >= 2, "the worker ran no executor to lose"

        # No executor anywhere: the job neither fails nor pretends; it stops committing and its
        # /health turns 503 once progress is stale, while the driver waits for resources.
        statuses: list[int | str] = []
        deadline = time.monotonic() + 30
        while 503 not in statuses:
            assert time.monotonic() < deadline, f"/health never reported the stall: {statuses}"
            statuses.append(health_status(health_port))
            time.sleep(0.5)
        assert process.poll() is None, "the job died with its worker:\n" + log.read_text()[-4000:]
        # A batch already running may still commit, none after it.
        stalled_at = batches(checkpoints)
        assert stalled_at <= committed + 1
        time.sleep(2)
        assert batches(checkpoints) == stalled_at

        standalone.start_worker(cores=WORKER_CORES, index=0)
        _finish(process, log)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
    assert batches(checkpoints) > stalled_at, "nothing was committed after the worker came back"
    assert_windows_match(pulse_sql(data_dir, WINDOWS_SQL), reference_windows(trades_from_recording(spot)))
    _restart_with_more_data(kafka, base_settings, topics, data_dir, log, env, spot)


def test_worker_lost_under_real_time_mode_the_job_stops_with_one_line_and_a_restart_stays_exact(
        kafka, base_settings, standalone, tmp_path):
    """Real-Time Mode does not retry its long-running tasks, so a lost worker fails the query.
    `pulse process` exits non-zero with the one line saying why and what to do (a
    supervisor restarts it, as compose's `restart: unless-stopped` does); the restart on the same
    checkpoint, once a worker is back, leaves the table exact.

    When the worker goes while a batch's tasks wait to be launched, Spark neither fails the query
    nor runs them (seen once in five runs, 2026-12-04): then the job ends itself once no progress
    came for PULSE_SPARK__STALL_EXIT_S plus a batch, with a line of its own saying the same."""
    topics = fresh_topics(kafka.bootstrap)
    spot = recording(SPOT_RAW)
    checkpoints = tmp_path / "shared" / "checkpoints"
    data_dir = tmp_path / "driver"
    data_dir.mkdir()
    log = tmp_path / "process.log"
    env = _cluster_env(standalone, checkpoints, PULSE_SPARK__REALTIME_BATCH_S="1", PULSE_SPARK__STALL_EXIT_S="10")
    process = start_pulse_process(data_dir, kafka.bootstrap, topics.trades_topic, log, **env)
    try:
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while batches(checkpoints) < 1:
            assert process.poll() is None, log.read_text()[-4000:]
            assert time.monotonic() < deadline, "the job committed no batches on the cluster"
            time.sleep(0.1)
        # Trades arrive while the job runs: part of them before the loss, the rest after it.
        publish_recording(base_settings.override(kafka=topics.model_dump()), spot)
        killed = standalone.kill_worker(0)
        assert len(killed) >= 2, "the worker ran no executor to lose"
        assert process.wait(timeout=120) != 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
    last_line = log.read_text().strip().splitlines()[-1]
    # Spark reports the loss as the executor's (its tasks failed) or, when it replans first, as the
    # slots it cannot find; a batch left waiting is Pulse's stall line: each says what to do.
    assert last_line.startswith("pulse process: "), last_line
    assert "resumes from its checkpoint" in last_line or "needs more task slots" in last_line, last_line
    assert "Traceback" not in log.read_text()

    standalone.start_worker(cores=WORKER_CORES, index=0)
    process = start_pulse_process(data_dir, kafka.bootstrap, topics.trades_topic, log, "--until-idle", "3", **env)
    _finish(process, log)
    assert_windows_match(pulse_sql(data_dir, WINDOWS_SQL), reference_windows(trades_from_recording(spot)))
    _restart_with_more_data(kafka, base_settings, topics, data_dir, log, env, spot)


def _restart_with_more_data(kafka: Any, base_settings: PulseSettings, topics: KafkaSettings, data_dir: Path,
                            log: Path, env: dict[str, str], first: Path) -> None:
    """A restart of the job on the same checkpoint, with more data meanwhile: it resumes where it
    stopped, and the table is exactly both recordings, each window once."""
    usdm = recording(USDM_RAW)
    publish_recording(base_settings.override(kafka=topics.model_dump()), usdm)
    process = start_pulse_process(data_dir, kafka.bootstrap, topics.trades_topic, log, "--until-idle", "2", **env)
    _finish(process, log)
    both = reference_windows(trades_from_recording(first) + trades_from_recording(usdm))
    assert_windows_match(pulse_sql(data_dir, WINDOWS_SQL), both)


# --- Kafka cluster ------------------------------------------------------------------------------------

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT", "DOGEUSDT"]
RATE_PER_S = 1_000
TOTAL = 25_000
# Above the ~11 s from a SIGKILL to the first ack of a new leader (docs/scaling.md).
FAILOVER_WATERMARK_S = 30.0


def _batch_id(query: Any) -> int:
    """The id of the query's last completed micro-batch (-1 before the first)."""
    progress: Any = query.lastProgress
    return int(progress["batchId"]) if progress else -1


@pytest.fixture
def kafka_cluster(base_settings: PulseSettings, tmp_path: Path) -> Iterator[LocalKafkaBroker]:
    cluster = LocalKafkaBroker(base_settings.jars_dir, tmp_path / "kafka-cluster", nodes=3,
                               quick_jit=base_settings.quick_jit)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
    assert leftovers(tmp_path / "kafka-cluster") == [], "Kafka nodes outlived the cluster"


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
