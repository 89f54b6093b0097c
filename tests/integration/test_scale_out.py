"""Beyond one machine, on real engines started here on loopback: a Spark standalone cluster losing
its worker mid-stream (the Kafka cluster's drills are test_kafka_cluster.py).

A master and a worker from pyspark's own distribution run the Pulse job, started as users start it
(`pulse process` with PULSE_SPARK__MASTER=spark://…, through the runtime). The driver is a child
process because a Spark driver is one per process, and this one already has the tests' local
session. The worker (with its executors) is killed mid-stream and started again. The cluster starts
once for the module (`make test` keeps the module on one worker: tests/conftest.py).

Windows are compared with the independent reference (tests/support/reference.py). No JVM may
outlive a test: every process started here is tied to this one (PR_SET_PDEATHSIG), stopped in
`finally`, and looked for afterwards with psutil by the folder it ran in.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from pulse.broker.local_kafka import free_port
from pulse.compute.spark_session import connector_jars
from pulse.settings import KafkaSettings, PulseSettings
from tests.support.pipeline import publish_recording
from tests.support.processor_process import WINDOWS_SQL, pulse_sql
from tests.support.producer_harness import fresh_topics
from tests.support.recordings import SPOT_RAW, USDM_RAW, recording
from tests.support.reference import assert_windows_match, reference_windows, trades_from_recording
from tests.support.scale_out import (
    batches,
    health_status,
    start_pulse_process,
)
from tests.support.spark_standalone import StandaloneCluster, app_dirs, leftovers, master_log_mentions, shipped_jars

pytestmark = pytest.mark.integration
JOB_TIMEOUT_S = 300
# Every task of both Real-Time Mode queries runs at once: one slot spare over what the job needs.
WORKER_CORES = PulseSettings().task_slots() + 1


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


@pytest.mark.slow
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


@pytest.mark.slow
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
    # The rejects query reads batches as small on a short trigger too: at its default 10 s, reading the
    # recording 250 offsets at a time would keep `--until-idle` waiting minutes for it.
    env = _cluster_env(standalone, checkpoints, PULSE_SPARK__MODE="microbatch",
                       PULSE_SPARK__MAX_OFFSETS_PER_TRIGGER="250", PULSE_SPARK__REJECTS_TRIGGER_MS="500",
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


@pytest.mark.slow
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
    env = _cluster_env(standalone, checkpoints, PULSE_SPARK__REALTIME_BATCH_S="1", PULSE_SPARK__STALL_EXIT_S="30")
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
