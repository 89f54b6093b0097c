"""Real parts for the integration and stack tests, started by the project itself, once per pytest process.

- `kafka`: the embedded KRaft broker (Apache Kafka 4.1, jars from `make setup`).
- `spark`: pyspark in local mode with the official Kafka connector.
- `chdb_engine`: the in-process ClickHouse engine; tests get their own database from `database`.
Topics and databases are unique per test, so tests never see each other's data.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pulse.broker.local_kafka import LocalKafkaBroker, ensure_topics
from pulse.settings import KafkaSettings, PulseSettings
from pulse.storage.clickhouse import ChdbEngine, ChdbTransport, apply_schema
from tests.support.names import unique_name

# A developer's own PULSE_* variables (a named broker, an HTTP store, another mode) must not steer the
# tests, nor the `pulse` commands they start with this environment: every test sets what it needs.
for _name in [name for name in os.environ if name.startswith("PULSE_")]:
    del os.environ[_name]

# A suite started in the background (`cmd &` in a script, CI runners) inherits an ignored SIGINT, and
# every `pulse` command it starts would too: Python leaves an inherited SIG_IGN as it is, so a demo
# told to stop by SIGINT would play on. The tests stand in for a user at a terminal, whose Ctrl-C
# reaches the command: a Python handler here is reset to the default in each child at exec.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


# Modules whose tests share a module fixture (a cluster, one `make demo`): one worker runs each whole.
ONE_WORKER_MODULES = frozenset({
    "tests/integration/test_scale_out.py",
    "tests/integration/test_kafka_cluster.py",
    "tests/integration/test_make_demo.py",
    "tests/stack/test_cluster_schema.py",
})


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: a plain pytest without it runs serially
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`make test`'s workers (pytest-xdist) take one test at a time, in the order below, except that a
    module of ONE_WORKER_MODULES goes to one worker whole. (xdist's own `--dist loadgroup` marks do
    not group under pytest 9: they rename `item._nodeid`, which pytest 9 no longer reads.)"""
    from xdist.scheduler import LoadScopeScheduling

    class TestsOrSharedModules(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if module in ONE_WORKER_MODULES else nodeid

    return TestsOrSharedModules(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The order tests are handed out: the drills that wait out real timeouts first, so that their
    waits overlap the rest, then the other integration tests, the stack checks, and the unit tests,
    short ones that fill the last gaps. A plain `pytest` runs them in the same order."""
    def rank(item: pytest.Item) -> int:
        if item.get_closest_marker("slow"):
            return 0
        return {"integration": 1, "stack": 2}.get(item.path.parent.name, 3)
    items.sort(key=rank)


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pulse-run")


@pytest.fixture(scope="session")
def base_settings(run_dir: Path) -> PulseSettings:
    # Ports 0: tests run many producers and jobs, each serving /metrics and /health on a port of its own.
    # JIT "quick": the shared broker and Spark serve runs that end by themselves, as a replay's do.
    return PulseSettings(_env_file=None, data_dir=run_dir).override(  # type: ignore[call-arg]
        producer={"metrics_port": 0}, spark={"health_port": 0}, jit="quick")


@pytest.fixture(scope="session")
def kafka(base_settings: PulseSettings) -> Iterator[LocalKafkaBroker]:
    broker = LocalKafkaBroker(base_settings.jars_dir, base_settings.data_dir, quick_jit=base_settings.quick_jit)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def spark(base_settings: PulseSettings):
    from pulse.compute.spark_session import build_spark_session

    session = build_spark_session(base_settings)
    yield session
    session.stop()


@pytest.fixture(scope="session")
def chdb_engine(base_settings: PulseSettings) -> Iterator[ChdbEngine]:
    engine = ChdbEngine.at(base_settings.chdb_path)
    yield engine
    engine.close()


@pytest.fixture
def topics(kafka: LocalKafkaBroker) -> KafkaSettings:
    """Fresh trades and dead-letter topics for one test."""
    settings = KafkaSettings(bootstrap_servers=kafka.bootstrap, trades_topic=unique_name("trades"),
                             dead_letter_topic=unique_name("dlq"), metrics_topic=unique_name("metrics"),
                             rejects_topic=unique_name("rejects"), partitions=3)
    asyncio.run(ensure_topics(kafka.bootstrap, [settings.trades_topic, settings.dead_letter_topic],
                              settings.partitions))
    return settings


@pytest.fixture
def database(chdb_engine: ChdbEngine, base_settings: PulseSettings) -> ChdbTransport:
    """A fresh ClickHouse database with the Pulse schema, for one test."""
    transport = ChdbTransport(base_settings.chdb_path, unique_name("pulse_test"))
    apply_schema(transport, base_settings.schema_dir)
    return transport


@pytest.fixture
def settings(base_settings: PulseSettings, topics: KafkaSettings, database: ChdbTransport,
             tmp_path: Path) -> PulseSettings:
    """Settings of one test: its topics, its database, its checkpoints, replay from the start."""
    return base_settings.model_copy(update={
        "kafka": topics,
        "clickhouse": base_settings.clickhouse.model_copy(update={"database": database.database}),
        "spark": base_settings.spark.model_copy(update={
            "starting_offsets": "earliest", "checkpoint_dir": tmp_path / "checkpoints", "trigger_ms": 250,
            "rejects_trigger_ms": 500, "realtime_batch_s": 2.0}),
    })
