"""The embedded Apache Kafka: one KRaft node (broker + controller) in a child JVM, or several as one cluster.

Jars come from Maven Central through `make setup` (jvm/kafka-broker/pom.xml). Storage is formatted
on first start under `<data_dir>/kafka`; ports are picked free once and kept, so a restarted broker
is found again by clients that were connected to it. Each JVM is tied to this process with
PR_SET_PDEATHSIG, so even a `kill -9` of Pulse leaves no orphan broker behind.

`nodes=3` runs three combined broker+controller nodes from the same jars, each in its own JVM and
folder (`<data_dir>/kafka/node-<id>`), with a three-voter controller quorum: the smallest cluster
that keeps topics with replication factor 3 and min.insync.replicas=2 writable while any one node
is down. The single-node layout and behaviour are unchanged.

Both JVMs (the storage formatter and the node) map the class archives `make setup` wrote (pulse.jvm).
"""

from __future__ import annotations

import base64
import ctypes
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, for_code
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_fixed

from pulse.errors import PulseError, first_line
from pulse.jvm import archive_options, jit_options
from pulse.settings import ClassArchives

_PR_SET_PDEATHSIG = 1
# CreateTopics answers per topic; these codes mean the topic is there, as wanted.
_NO_ERROR, _TOPIC_ALREADY_EXISTS = 0, 36
STORAGE_TOOL = "kafka.tools.StorageTool"


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: ask the kernel to SIGTERM the broker if we die.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


class KafkaStartError(PulseError, RuntimeError):
    """The embedded broker (or the topics Pulse needs) could not be set up."""

    def line(self, logs: Path) -> str:
        return f"the Kafka broker did not start: {first_line(str(self))}"


class _Node:
    """One KRaft node: its folder, its two ports (kept across restarts) and its JVM."""

    def __init__(self, node_id: int, home: Path) -> None:
        self.node_id = node_id
        self.home = home
        self.process: subprocess.Popen[bytes] | None = None
        ports_file = home / "ports"
        if ports_file.exists():
            broker, controller = ports_file.read_text().split()
            self.port, self.controller_port = int(broker), int(controller)
        else:
            self.port, self.controller_port = free_port(), free_port()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def log(self) -> Path:
        return self.home / "logs" / "stdout.log"


class LocalKafkaBroker:
    """The embedded Kafka: `nodes=1` (the default) is the single node Pulse always ran.

    `port`, `controller_port` and `home` are those of node 1; `bootstrap` names every node.
    """

    def __init__(self, jars_dir: Path, data_dir: Path, heap: str = "512m", nodes: int = 1,
                 class_archives: ClassArchives = "use", quick_jit: bool = False) -> None:
        if nodes < 1:
            raise ValueError(f"a Kafka cluster needs at least one node, got {nodes}")
        self.jars_dir = jars_dir
        self.classpath_dir = jars_dir / "kafka-broker"
        # Nodes of a cluster would all dump to one file: only a single node writes archives.
        self.class_archives: ClassArchives = "use" if class_archives == "write" and nodes > 1 else class_archives
        self.quick_jit = quick_jit
        self.home = data_dir / "kafka"
        self.heap = heap
        homes = [self.home] if nodes == 1 else [self.home / f"node-{i}" for i in range(1, nodes + 1)]
        self._nodes = {i: _Node(i, home) for i, home in enumerate(homes, start=1)}
        self.port, self.controller_port = self._nodes[1].port, self._nodes[1].controller_port

    @property
    def node_ids(self) -> list[int]:
        return list(self._nodes)

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{node.port}" for node in self._nodes.values())

    @property
    def running(self) -> bool:
        return all(node.running for node in self._nodes.values())

    def node_running(self, node_id: int) -> bool:
        return self._nodes[node_id].running

    def pid(self, node_id: int) -> int | None:
        """The JVM of a node, while it runs (for tests that watch processes)."""
        process = self._nodes[node_id].process
        return process.pid if process is not None and process.poll() is None else None

    def _java_command(self, node: _Node, main_class: str, *args: str) -> list[str]:
        if not any(self.classpath_dir.glob("kafka_2.13-*.jar")):
            raise KafkaStartError(
                f"Kafka broker jars are missing in {self.classpath_dir}: run `make setup` (or set PULSE_JARS_DIR)"
            )
        jvm = "kafka-storage-tool" if main_class == STORAGE_TOOL else "kafka-broker"
        return [
            "java", f"-Xmx{self.heap}", "-Xms128m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
            *archive_options(self.jars_dir, jvm, self.class_archives),
            # The storage formatter lives a second: never worth C2.
            *jit_options(self.quick_jit or jvm == "kafka-storage-tool"),
            f"-Dlog4j2.configurationFile={node.home / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={node.home / 'logs'}",
            "-cp", self.classpath, main_class, *args,
        ]

    @property
    def classpath(self) -> str:
        return str(self.classpath_dir / "*")

    @property
    def archived_jvms(self) -> dict[str, str]:
        """The JVMs this broker starts that have class archives, with their classpath (pulse.jvm)."""
        return {"kafka-storage-tool": self.classpath, "kafka-broker": self.classpath}

    def _write_config(self, node: _Node) -> Path:
        node.home.mkdir(parents=True, exist_ok=True)
        (node.home / "ports").write_text(f"{node.port} {node.controller_port}\n")
        (node.home / "log4j2.properties").write_text(
            "rootLogger.level = WARN\n"
            "rootLogger.appenderRef.file.ref = file\n"
            "appender.file.type = File\n"
            "appender.file.name = file\n"
            f"appender.file.fileName = {node.home / 'logs' / 'server.log'}\n"
            "appender.file.layout.type = PatternLayout\n"
            "appender.file.layout.pattern = [%d] %p %m (%c)%n\n"
        )
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self._nodes.values())
        # Internal topics as durable as the cluster allows: replicated on up to 3 nodes, and on a
        # cluster a write to them needs 2 in sync, like the trades topic.
        replicas = min(3, len(self._nodes))
        min_isr = min(2, len(self._nodes))
        config = node.home / "server.properties"
        config.write_text("\n".join([
            "process.roles=broker,controller",
            f"node.id={node.node_id}",
            f"controller.quorum.voters={voters}",
            f"listeners=PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{node.port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            f"log.dirs={node.home / 'log'}",
            "num.partitions=1",
            "auto.create.topics.enable=false",
            f"offsets.topic.replication.factor={replicas}",
            "offsets.topic.num.partitions=4",
            f"transaction.state.log.replication.factor={replicas}",
            f"transaction.state.log.min.isr={min_isr}",
            f"share.coordinator.state.topic.replication.factor={replicas}",
            f"share.coordinator.state.topic.min.isr={min_isr}",
            "group.initial.rebalance.delay.ms=0",
            "log.retention.hours=24",
            "",
        ]))
        return config

    def _cluster_id(self) -> str:
        """One id for every node of the cluster, kept beside them so a re-formatted node rejoins."""
        id_file = self.home / "cluster.id"
        if id_file.exists():
            return id_file.read_text().strip()
        cluster_id = "-"
        # The storage tool's argument parser takes an id starting with "-" (1 in 64) for an option.
        while cluster_id.startswith("-"):
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        self.home.mkdir(parents=True, exist_ok=True)
        id_file.write_text(cluster_id + "\n")
        return cluster_id

    def _format_storage(self, node: _Node, config: Path, cluster_id: str) -> subprocess.Popen[str] | None:
        if (node.home / "log" / "meta.properties").exists():
            return None
        return subprocess.Popen(
            self._java_command(node, STORAGE_TOOL, "format", "-t", cluster_id, "-c", str(config)),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=_die_with_parent,  # noqa: PLW1509
        )

    def _launch(self, node: _Node, config: Path) -> None:
        node.log.parent.mkdir(parents=True, exist_ok=True)
        with node.log.open("ab") as stdout:
            node.process = subprocess.Popen(
                self._java_command(node, "kafka.Kafka", str(config)),
                stdout=stdout, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,  # noqa: PLW1509
            )

    def start(self, timeout_s: float = 90.0) -> str:
        """Start every node that is not running (formatting storage on first use) and wait until
        each accepts connections. A cluster's nodes start together: each waits for a controller
        quorum, which only a majority of them can form."""
        self._start([node for node in self._nodes.values() if not node.running], timeout_s)
        return self.bootstrap

    def start_node(self, node_id: int, timeout_s: float = 90.0) -> None:
        """(Re)start one node of a cluster, e.g. after `kill_node`; it rejoins with its old storage."""
        node = self._nodes[node_id]
        if not node.running:
            self._start([node], timeout_s)

    def _start(self, nodes: list[_Node], timeout_s: float) -> None:
        if not nodes:
            return
        cluster_id = self._cluster_id()
        configs = {node.node_id: self._write_config(node) for node in nodes}
        # Formatting is a JVM start of its own: all nodes at once, not one after the other.
        formats = {node.node_id: self._format_storage(node, configs[node.node_id], cluster_id) for node in nodes}
        for node_id, formatting in formats.items():
            if formatting is None:
                continue
            output, _ = formatting.communicate(timeout=120)
            if formatting.returncode != 0:
                raise KafkaStartError(f"formatting Kafka storage of node {node_id} failed:\n{output}")
        for node in nodes:
            self._launch(node, configs[node.node_id])
        deadline = time.monotonic() + timeout_s
        for node in nodes:
            while not _port_open(node.port):
                process = node.process
                if process is None or process.poll() is not None:
                    code = None if process is None else process.returncode
                    self.stop()
                    raise KafkaStartError(f"Kafka node {node.node_id} exited with {code}; see {node.log}")
                if time.monotonic() > deadline:
                    self.stop()
                    raise KafkaStartError(
                        f"Kafka node {node.node_id} did not open port {node.port} in {timeout_s:.0f}s; see {node.log}")
                time.sleep(0.2)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Controlled shutdown of every node at once; SIGKILL whatever does not exit in time.

        Together, not in turn: the last nodes of a cluster stopped one by one would wait for a
        controller quorum that the first ones took away with them.
        """
        running = [node.process for node in self._nodes.values() if node.running]
        for node in self._nodes.values():
            node.process = None
        for process in running:
            if process is not None:
                process.terminate()
        deadline = time.monotonic() + timeout_s
        for process in running:
            if process is None:
                continue
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)

    def kill(self) -> None:
        """Crash every node (SIGKILL), as a power cut would; for failure tests."""
        for node_id in self._nodes:
            self.kill_node(node_id)

    def kill_node(self, node_id: int) -> None:
        """Crash one node (SIGKILL): its partitions lose their leader or a replica."""
        node = self._nodes[node_id]
        if node.process is not None and node.process.poll() is None:
            os.kill(node.process.pid, signal.SIGKILL)
            node.process.wait(timeout=10)
        node.process = None

    def __enter__(self) -> LocalKafkaBroker:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


async def ensure_topics(bootstrap: str, topics: Iterable[str], partitions: int,
                        timeout_s: float = 60.0, replication_factor: int = 1,
                        configs: Mapping[str, str] | None = None) -> None:
    """Create topics if missing, retrying while a just-started broker elects its controller.

    On a just-started cluster the controller may know fewer brokers than `replication_factor`
    for a moment: every refusal is retried until `timeout_s`, then raised with Kafka's reason.
    """
    wanted = list(topics)
    topic_configs = dict(configs or {})
    try:
        async for attempt in _retrying(timeout_s):
            with attempt:
                await _create_missing(bootstrap, wanted, partitions, replication_factor, topic_configs)
    except (KafkaError, OSError) as error:
        raise KafkaStartError(f"could not create topics {wanted} on {bootstrap}: {error}") from error


def _retrying(timeout_s: float) -> AsyncRetrying:
    """Kafka's refusals and timeouts (a just-started or failing-over cluster), retried every 0.5 s."""
    return AsyncRetrying(retry=retry_if_exception_type((KafkaError, OSError)), wait=wait_fixed(0.5),
                         stop=stop_after_delay(timeout_s), reraise=True)


async def _create_missing(bootstrap: str, wanted: list[str], partitions: int, replication_factor: int,
                          topic_configs: dict[str, str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        missing = [t for t in wanted if t not in existing]
        if missing:
            response = await admin.create_topics([
                NewTopic(name=t, num_partitions=partitions, replication_factor=replication_factor,
                         topic_configs=topic_configs) for t in missing])
            # The answer carries an error per topic instead of raising; another client creating
            # the same topic between our list and create is no error.
            for topic, code, *message in response.topic_errors:
                if code not in (_NO_ERROR, _TOPIC_ALREADY_EXISTS):
                    raise for_code(code)(f"topic {topic}: {message[0] if message else ''}")
    finally:
        await admin.close()


async def end_offsets(bootstrap: str, topic: str, timeout_s: float = 30.0) -> dict[int, int]:
    """The next offset to be written in each partition of `topic`.

    Retried with fresh clients until `timeout_s`: while a crashed node of a cluster is not yet
    fenced, metadata still lists it, and a request the client happens to send there fails.
    """
    return await _retried_offsets(bootstrap, topic, earliest=False, timeout_s=timeout_s)


async def log_start_offsets(bootstrap: str, topic: str, timeout_s: float = 30.0) -> dict[int, int]:
    """The oldest offset still held in each partition of `topic` (retention deletes below it)."""
    return await _retried_offsets(bootstrap, topic, earliest=True, timeout_s=timeout_s)


async def _retried_offsets(bootstrap: str, topic: str, earliest: bool, timeout_s: float) -> dict[int, int]:
    try:
        async for attempt in _retrying(timeout_s):
            with attempt:
                return await _offsets(bootstrap, topic, earliest)
    except (KafkaError, OSError) as error:
        raise KafkaStartError(f"no offsets for topic {topic} on {bootstrap}: {first_line(str(error))}") from error
    raise AssertionError("unreachable: tenacity returns or raises")


async def _offsets(bootstrap: str, topic: str, earliest: bool) -> dict[int, int]:
    from aiokafka import AIOKafkaConsumer, TopicPartition  # noqa: PLC0415

    # A consumer that subscribed to nothing knows no partitions: the admin client asks the cluster.
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (description,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    # A topic created a moment ago (or a broker just back) may answer with an error code or no
    # partitions until its leaders are elected: both are raised as Kafka errors, so they are retried.
    code = description.get("error_code", _NO_ERROR)
    if code != _NO_ERROR:
        raise for_code(code)(f"topic {topic}")
    partitions = [TopicPartition(topic, entry["partition"]) for entry in description["partitions"]]
    if not partitions:
        raise KafkaError(f"topic {topic} has no partitions yet")
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        offsets = await (consumer.beginning_offsets(partitions) if earliest else consumer.end_offsets(partitions))
        return {tp.partition: offset for tp, offset in offsets.items()}
    finally:
        await consumer.stop()
