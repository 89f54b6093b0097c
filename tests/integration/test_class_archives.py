"""The JVMs' class archives (pulse/jvm.py): written at a JVM's exit, kept only once a JVM maps them,
and mapped by the broker and the Spark driver that the suite itself started."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pyspark import SparkContext

from pulse.broker.local_kafka import STORAGE_TOOL, LocalKafkaBroker
from pulse.compute.spark_session import SPARK_DRIVER
from pulse.jvm import FOLDER, archive_options, keep_written
from tests.support.recordings import ROOT

pytestmark = pytest.mark.integration


def _storage_tool(jars: Path, classpath: str, *options: str) -> subprocess.CompletedProcess[str]:
    """A short JVM of the broker's jars: Kafka's storage tool printing a random cluster id."""
    return subprocess.run(["java", *options, "-cp", classpath, STORAGE_TOOL, "random-uuid"], cwd=jars.parent,
                          capture_output=True, text=True, timeout=120, check=False)


def test_an_archive_written_at_exit_is_kept_and_mapped_a_truncated_one_is_refused(base_settings, tmp_path):
    classpath = LocalKafkaBroker(base_settings.jars_dir, tmp_path).classpath
    jars = tmp_path / "jars"
    written = _storage_tool(jars, classpath, *archive_options(jars, "whole", "write"))
    assert written.returncode == 0, written.stderr
    _storage_tool(jars, classpath, *archive_options(jars, "cut", "write"))
    part = jars / FOLDER / "cut.jsa.part"
    part.write_bytes(part.read_bytes()[: 1 << 20])  # as if the JVM died while dumping

    outcome = keep_written(jars, {"whole": classpath, "cut": classpath, "never": classpath})
    assert outcome["whole"] == "kept"
    assert outcome["cut"].startswith("refused by the JVM"), outcome
    assert outcome["never"].startswith("not written"), outcome
    assert sorted(p.name for p in (jars / FOLDER).iterdir()) == ["whole.jsa"], "nothing half-written, no crash log"

    mapped = _storage_tool(jars, classpath, "-Xshare:on", *archive_options(jars, "whole", "use"))
    assert mapped.returncode == 0, mapped.stderr
    # The archive belongs to its classpath: another one is refused, and the JVM goes on without it.
    other = _storage_tool(jars, f"{tmp_path}:{classpath}", *archive_options(jars, "whole", "use"))
    assert other.returncode == 0 and "Unable to use shared archive" in other.stdout + other.stderr


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def _maps(archive: Path, classpath: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["java", "-Xshare:on", f"-XX:SharedArchiveFile={archive}", "-cp", classpath, "-version"],
                          cwd=archive.parent, capture_output=True, text=True, timeout=60, check=False)


def test_the_suites_broker_and_spark_driver_map_the_archives_make_setup_wrote(base_settings, kafka, spark):
    folder = base_settings.jars_dir / FOLDER
    assert sorted(p.name for p in folder.glob("*.jsa")) == [
        "kafka-broker.jsa", "kafka-storage-tool.jsa", f"{SPARK_DRIVER}.jsa"], "run `make setup` (its warm-up)"
    broker_pid = kafka.pid(1)
    assert broker_pid is not None
    assert f"-XX:SharedArchiveFile={folder / 'kafka-broker.jsa'}" in _cmdline(broker_pid)
    gateway = SparkContext._gateway
    assert gateway is not None
    assert any(f"-XX:SharedArchiveFile={folder / SPARK_DRIVER}.jsa" in arg for arg in _cmdline(gateway.proc.pid))
    # Mapped, not merely named: a JVM with each one's exact classpath maps the archive or refuses to start.
    driver_classpath = str(spark.sparkContext._jvm.System.getProperty("java.class.path"))
    for archive, classpath in [(folder / "kafka-broker.jsa", kafka.classpath),
                               (folder / "kafka-storage-tool.jsa", kafka.classpath),
                               (folder / f"{SPARK_DRIVER}.jsa", driver_classpath)]:
        check = _maps(archive, classpath)
        assert check.returncode == 0, f"{archive.name}: {check.stdout}{check.stderr}"


def test_a_warm_up_that_cannot_run_says_why_and_setup_goes_on(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PULSE_JARS_DIR": str(tmp_path / "no-jars")}
    result = subprocess.run([sys.executable, "-m", "pulse.warmup"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("warm-up: no class archives written, JVMs start without them (")
    assert "make setup" in last
    assert "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "no-jars" / FOLDER).exists() or not any((tmp_path / "no-jars" / FOLDER).iterdir())

