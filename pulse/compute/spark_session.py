"""A SparkSession with the official Kafka connector on its classpath, quiet and tidy.

Everything the driver JVM says goes under `<data_dir>/logs/`: log4j output to `spark.log` through
a config file handed to the JVM (`-Dlog4j2.configurationFile`), and what the JVM prints itself
(the launcher's `WARNING: Using incubator modules`, anything on System.out) to `spark-jvm.log`:
pyspark starts the JVM with our stdout and stderr, so those two descriptors point at the file
while it launches. The JVM also starts in `<data_dir>/spark-work`, because Spark resolves some
folders against its working directory (`artifacts/spark-*` of the artifact manager), and nothing
a run writes belongs where the user stands. The driver maps its class archive (pulse.jvm).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from pyspark import SparkContext
from pyspark.errors import PySparkException
from pyspark.sql import SparkSession

from pulse.errors import SparkStartFailed
from pulse.jvm import archive_options, jit_options
from pulse.settings import PulseSettings

# log4j2 for the driver (local mode runs the executors in it too). WARN keeps the file readable;
# the Kafka clients log every connection at INFO.
_LOG4J2 = """\
status = error
rootLogger.level = warn
rootLogger.appenderRef.file.ref = file
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.append = true
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = %d{{yy/MM/dd HH:mm:ss}} %p %c{{1}}: %m%n%ex
# Spark's own template silences these two: harmless noise at every start.
logger.hadoop_native.name = org.apache.hadoop.util.NativeCodeLoader
logger.hadoop_native.level = error
logger.spark_utils.name = org.apache.spark.util.Utils
logger.spark_utils.level = error
"""

SPARK_DRIVER = "spark-driver"  # its class archive's name (pulse.jvm)

# One launch at a time: the working directory and the two descriptors belong to the whole process.
_launching = threading.Lock()


def connector_jars(jars_dir: Path) -> list[Path]:
    folder = jars_dir / "spark-kafka"
    jars = sorted(folder.glob("*.jar"))
    if not any(jar.name.startswith("spark-sql-kafka-0-10") for jar in jars):
        raise FileNotFoundError(
            f"the Spark Kafka connector is not in {folder}: run `make setup` (or set PULSE_JARS_DIR)"
        )
    return [jar.resolve() for jar in jars]


def logs_dir(settings: PulseSettings) -> Path:
    return (settings.data_dir / "logs").resolve()


def log4j_config(settings: PulseSettings) -> Path:
    """The driver's log4j2 configuration, written under the data directory's logs folder."""
    logs = logs_dir(settings)
    logs.mkdir(parents=True, exist_ok=True)
    path = logs / "spark-log4j2.properties"
    path.write_text(_LOG4J2.format(log=logs / "spark.log"))
    return path


@contextlib.contextmanager
def _jvm_launch(work_dir: Path, output: Path) -> Iterator[None]:
    """While pyspark starts the driver JVM: its working directory, and its stdout/stderr to `output`."""
    work_dir.mkdir(parents=True, exist_ok=True)
    with _launching:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = (os.dup(1), os.dup(2))
        here = os.getcwd()
        try:
            with output.open("ab") as log:
                os.dup2(log.fileno(), 1)
                os.dup2(log.fileno(), 2)
            os.chdir(work_dir)
            yield
        finally:
            os.chdir(here)
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def build_spark_session(settings: PulseSettings) -> SparkSession:
    spark_settings = settings.spark
    data_dir = settings.data_dir.resolve()
    local_dir = data_dir / "spark-local"
    local_dir.mkdir(parents=True, exist_ok=True)
    archive = archive_options(settings.jars_dir, SPARK_DRIVER, settings.class_archives)
    java_options = " ".join([f"-Dlog4j2.configurationFile={log4j_config(settings)}", *archive,
                             *jit_options(settings.quick_jit)])
    extra = dict(spark_settings.extra_conf)
    if "spark.driver.extraJavaOptions" in extra:
        java_options = f"{java_options} {extra.pop('spark.driver.extraJavaOptions')}"
    builder = (
        SparkSession.builder.master(settings.spark_master)
        .appName(spark_settings.app_name)
        .config("spark.jars", ",".join(str(jar) for jar in connector_jars(settings.jars_dir)))
        .config("spark.sql.shuffle.partitions", str(spark_settings.shuffle_partitions))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.local.dir", str(local_dir))
        .config("spark.sql.warehouse.dir", str(data_dir / "spark-warehouse"))
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.host", spark_settings.driver_host)
        .config("spark.driver.bindAddress", spark_settings.driver_bind_address)
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        # Micro-batches of a 1-second job are tiny: skip the state store's maintenance churn.
        .config("spark.sql.streaming.minBatchesToRetain", "20")
        .config("spark.sql.adaptive.enabled", "false")
        .config("spark.driver.memory", spark_settings.driver_memory)
        .config("spark.driver.extraJavaOptions", java_options)
        .config("spark.log.level", "WARN")
    )
    if settings.quick_jit and "spark.executor.extraJavaOptions" not in extra:
        # A cluster's executors live as long as the run: C1 only for them too.
        builder = builder.config("spark.executor.extraJavaOptions", " ".join(jit_options(quick=True)))
    for key, value in extra.items():
        builder = builder.config(key, value)
    with _own_sigint(), _start_failures():
        if SparkContext._gateway is not None:  # the JVM runs already (a shared session): nothing is launched
            return builder.getOrCreate()
        with _jvm_launch(data_dir / "spark-work", logs_dir(settings) / "spark-jvm.log"):
            return builder.getOrCreate()


def end_driver_jvm(timeout_s: float = 300.0) -> dict[str, str]:
    """Ends this process's Spark JVM, once its sessions stopped, and waits for its exit; returns it
    with its classpath, as `LocalKafkaBroker.archived_jvms` does. For the warm-up (pulse.warmup): the
    driver writes its class archive at exit, which the JVM pyspark started would otherwise only
    reach when this process ends. It exits on its own once its standard input closes."""
    gateway = SparkContext._gateway
    if gateway is None:
        return {}
    classpath = str(gateway.jvm.System.getProperty("java.class.path"))
    process = gateway.proc
    process.stdin.close()
    process.wait(timeout=timeout_s)
    SparkContext._gateway = None
    SparkContext._jvm = None
    return {SPARK_DRIVER: classpath}


@contextlib.contextmanager
def _start_failures() -> Iterator[None]:
    """PySpark's own error at start (the JVM did not come up, a setting it refused) as SparkStartFailed."""
    try:
        yield
    except PySparkException as error:
        raise SparkStartFailed(str(error)) from error


@contextlib.contextmanager
def _own_sigint() -> Iterator[None]:
    """Keep the process's Ctrl-C handler: a new SparkContext replaces it with one that cancels
    Spark's jobs and raises KeyboardInterrupt, while `pulse live` means "drain and stop in order"."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
