"""A SparkSession with the official Kafka connector on its classpath."""

from __future__ import annotations

from pathlib import Path

from pyspark.sql import SparkSession

from pulse.settings import PulseSettings


def connector_jars(jars_dir: Path) -> list[Path]:
    folder = jars_dir / "spark-kafka"
    jars = sorted(folder.glob("*.jar"))
    if not any(jar.name.startswith("spark-sql-kafka-0-10") for jar in jars):
        raise FileNotFoundError(
            f"the Spark Kafka connector is not in {folder}: run `make setup` (or set PULSE_JARS_DIR)"
        )
    return jars


def build_spark_session(settings: PulseSettings) -> SparkSession:
    spark_settings = settings.spark
    local_dir = settings.data_dir / "spark-local"
    local_dir.mkdir(parents=True, exist_ok=True)
    builder = (
        SparkSession.builder.master(spark_settings.master)
        .appName(spark_settings.app_name)
        .config("spark.jars", ",".join(str(jar) for jar in connector_jars(settings.jars_dir)))
        .config("spark.sql.shuffle.partitions", str(spark_settings.shuffle_partitions))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.local.dir", str(local_dir.resolve()))
        .config("spark.sql.warehouse.dir", str((settings.data_dir / "spark-warehouse").resolve()))
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.host", spark_settings.driver_host)
        .config("spark.driver.bindAddress", spark_settings.driver_bind_address)
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        # Micro-batches of a 1-second job are tiny: skip the state store's maintenance churn.
        .config("spark.sql.streaming.minBatchesToRetain", "20")
        .config("spark.sql.adaptive.enabled", "false")
        .config("spark.driver.memory", spark_settings.driver_memory)
        .config("spark.log.level", "WARN")
    )
    for key, value in spark_settings.extra_conf.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()
