"""The embedded Apache Kafka broker: one KRaft node (broker + controller) in a child JVM.

Jars come from Maven Central through `make setup` (jvm/kafka-broker/pom.xml). Storage is formatted
on first start under `<data_dir>/kafka`; ports are picked free once and kept, so a restarted broker
is found again by clients that were connected to it. The JVM is tied to this process with
PR_SET_PDEATHSIG, so even a `kill -9` of Pulse leaves no orphan broker behind.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

_PR_SET_PDEATHSIG = 1


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


class KafkaStartError(RuntimeError):
    pass


class LocalKafkaBroker:
    def __init__(self, jars_dir: Path, data_dir: Path, heap: str = "512m") -> None:
        self.classpath_dir = jars_dir / "kafka-broker"
        self.home = data_dir / "kafka"
        self.heap = heap
        self._process: subprocess.Popen[bytes] | None = None
        self.port, self.controller_port = self._load_or_pick_ports()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _load_or_pick_ports(self) -> tuple[int, int]:
        ports_file = self.home / "ports"
        if ports_file.exists():
            broker, controller = ports_file.read_text().split()
            return int(broker), int(controller)
        return free_port(), free_port()

    def _java_command(self, main_class: str, *args: str) -> list[str]:
        if not any(self.classpath_dir.glob("kafka_2.13-*.jar")):
            raise KafkaStartError(
                f"Kafka broker jars are missing in {self.classpath_dir}: run `make setup` (or set PULSE_JARS_DIR)"
            )
        return [
            "java", f"-Xmx{self.heap}", "-Xms128m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.home / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.home / 'logs'}",
            "-cp", str(self.classpath_dir / "*"), main_class, *args,
        ]

    def _write_config(self) -> Path:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "ports").write_text(f"{self.port} {self.controller_port}\n")
        (self.home / "log4j2.properties").write_text(
            "rootLogger.level = WARN\n"
            "rootLogger.appenderRef.file.ref = file\n"
            "appender.file.type = File\n"
            "appender.file.name = file\n"
            f"appender.file.fileName = {self.home / 'logs' / 'server.log'}\n"
            "appender.file.layout.type = PatternLayout\n"
            "appender.file.layout.pattern = [%d] %p %m (%c)%n\n"
        )
        config = self.home / "server.properties"
        config.write_text("\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
            f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            f"log.dirs={self.home / 'log'}",
            "num.partitions=1",
            "auto.create.topics.enable=false",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=4",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "log.retention.hours=24",
            "",
        ]))
        return config

    def _format_storage(self, config: Path) -> None:
        if (self.home / "log" / "meta.properties").exists():
            return
        cluster_id = "-"
        # The storage tool's argument parser takes an id starting with "-" (1 in 64) for an option.
        while cluster_id.startswith("-"):
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        result = subprocess.run(
            self._java_command("kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(config)),
            capture_output=True, text=True, timeout=120, check=False,
        )
        if result.returncode != 0:
            raise KafkaStartError(f"formatting Kafka storage failed:\n{result.stdout}\n{result.stderr}")

    def start(self, timeout_s: float = 90.0) -> str:
        """Start (formatting storage on first use) and wait until the broker accepts connections."""
        if self.running:
            return self.bootstrap
        config = self._write_config()
        self._format_storage(config)
        log = (self.home / "logs").joinpath("stdout.log")
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as stdout:
            self._process = subprocess.Popen(
                self._java_command("kafka.Kafka", str(config)),
                stdout=stdout, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,  # noqa: PLW1509
            )
        deadline = time.monotonic() + timeout_s
        while not _port_open(self.port):
            if self._process.poll() is not None:
                raise KafkaStartError(f"Kafka exited with {self._process.returncode}; see {log}")
            if time.monotonic() > deadline:
                self.stop()
                raise KafkaStartError(f"Kafka did not open port {self.port} in {timeout_s:.0f}s; see {log}")
            time.sleep(0.2)
        return self.bootstrap

    def stop(self, timeout_s: float = 30.0) -> None:
        """Controlled shutdown; SIGKILL if the JVM does not exit in time."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def kill(self) -> None:
        """Crash the broker (SIGKILL), as a power cut would; for failure tests."""
        if self._process is not None and self._process.poll() is None:
            os.kill(self._process.pid, signal.SIGKILL)
            self._process.wait(timeout=10)
        self._process = None

    def __enter__(self) -> LocalKafkaBroker:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


async def ensure_topics(bootstrap: str, topics: Iterable[str], partitions: int,
                        timeout_s: float = 60.0) -> None:
    """Create topics if missing, retrying while a just-started broker elects its controller."""
    import asyncio  # noqa: PLC0415

    deadline = time.monotonic() + timeout_s
    wanted = list(topics)
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [t for t in wanted if t not in existing]
            if missing:
                # Another client may create the same topic between our list and create.
                with contextlib.suppress(TopicAlreadyExistsError):
                    await admin.create_topics(
                        [NewTopic(name=t, num_partitions=partitions, replication_factor=1) for t in missing]
                    )
            return
        except (KafkaError, OSError) as error:  # a just-started broker refuses or times out
            if time.monotonic() > deadline:
                raise KafkaStartError(f"could not create topics {wanted} on {bootstrap}: {error}") from error
            await asyncio.sleep(0.5)
        finally:
            await admin.close()


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """The next offset to be written in each partition of `topic`."""
    from aiokafka import AIOKafkaConsumer, TopicPartition  # noqa: PLC0415

    # A consumer that subscribed to nothing knows no partitions: the admin client asks the cluster.
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (description,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    partitions = [TopicPartition(topic, entry["partition"]) for entry in description["partitions"]]
    if not partitions:
        raise KafkaStartError(f"topic {topic} has no partitions on {bootstrap}")
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        offsets = await consumer.end_offsets(partitions)
        return {tp.partition: offset for tp, offset in offsets.items()}
    finally:
        await consumer.stop()
