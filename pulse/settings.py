"""The one typed settings object of Pulse.

Read once at the entry point (`pulse.cli`) from the environment (prefix `PULSE_`, nested fields
with `__`, e.g. `PULSE_KAFKA__BOOTSTRAP_SERVERS`) and an optional `.env`, then passed inward.
Library code never reads the environment itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from pulse.resources import schema_dir as package_schema_dir

# The JVM jars are no package data: `make setup` fetches them into the checkout's .cache/jars;
# images that install Pulse elsewhere point PULSE_JARS_DIR at their copy.
_CHECKOUT = Path(__file__).resolve().parents[1]


class KafkaSettings(BaseModel):
    # None means: start the embedded single-node KRaft broker under the data directory.
    bootstrap_servers: str | None = None
    trades_topic: str = "pulse.aggtrades.v1"
    dead_letter_topic: str = "pulse.aggtrades.dlq.v1"
    # Aggregate-id ranges the producer could not recover (pulse.broker.trade_message.encode_gap).
    gaps_topic: str = "pulse.aggtrades.gaps.v1"
    # Real-Time Mode: the job writes window updates and rejects here with Spark's own Kafka sink
    # (keyed by symbol and window, by topic/partition/offset); the store writer inserts them.
    metrics_topic: str = "pulse.metrics.v1"
    rejects_topic: str = "pulse.rejects.v1"
    partitions: int = Field(default=3, ge=1)
    # Copies of every partition of the topics Pulse creates: 3 on a cluster of 3 or more brokers,
    # 1 for the embedded single node (a topic cannot have more copies than there are brokers).
    replication_factor: int = Field(default=1, ge=1)
    # With acks=all, how many copies a write needs before it counts; 2 of 3 keeps the topics
    # writable while one broker is down. None leaves the broker's default (1).
    min_insync_replicas: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _insync_within_replicas(self) -> Self:
        if self.min_insync_replicas is not None and self.min_insync_replicas > self.replication_factor:
            raise ValueError(f"min_insync_replicas ({self.min_insync_replicas}) exceeds "
                             f"replication_factor ({self.replication_factor}): no write could ever succeed")
        return self

    def topic_configs(self) -> dict[str, str]:
        """Per-topic settings Pulse creates its topics with."""
        if self.min_insync_replicas is None:
            return {}
        return {"min.insync.replicas": str(self.min_insync_replicas)}


# Binance markets (and Binance.US, which speaks Binance spot's protocol); their URLs and limits are
# data beside the source (pulse.source.binance.markets).
MarketName = Literal["usdm", "spot", "coinm", "us"]
# Every venue Pulse reads trades of (pulse.source.venues; docs/venues.md).
VenueName = Literal["binance-usdm", "binance-spot", "binance-coinm", "binance-us", "okx", "coinbase",
                    "bybit-linear", "bybit-spot", "kraken"]
# The JVMs' class-data archives (pulse.jvm): "use" maps them when present, "off" never does,
# "write" is the warm-up run of `make setup` whose JVMs dump them at exit.
ClassArchives = Literal["use", "off", "write"]
# How much the JVMs compile (pulse.jvm.jit_options): "quick" stops at the C1 compiler, "full" adds C2,
# "auto" is quick for a run that ends by itself (a replay, --until-idle) and full for one that runs
# until stopped. Measured (docs/benchmarks.md): C1 alone takes about 30% off a replay's CPU and 40%
# off the job's backlog rate, so only a run that stays up earns C2's compile time back.
JitMode = Literal["auto", "quick", "full"]


class ProducerSettings(BaseModel):
    # NoDecode: PULSE_PRODUCER__SYMBOLS=BTCUSDT,ETHUSDT is a comma list, not JSON.
    symbols: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["BTCUSDT"])
    market: MarketName = "usdm"
    # Another venue than Binance's markets (docs/venues.md); None: Binance's `market`.
    venue: VenueName | None = None
    # Seconds between the keep-alive messages of venues that want them (OKX, Bybit); None: the venue's own.
    keepalive_s: float | None = Field(default=None, gt=0)
    # None: the market's own endpoints. Set them for a proxy, or a local double of Binance in tests.
    ws_base_url: str | None = None
    rest_base_url: str | None = None
    # The same per venue, for runs over several (`pulse live --symbols okx:BTC-USDT,coinbase:BTC-USD`):
    # JSON, e.g. PULSE_PRODUCER__WS_BASE_URLS='{"okx": "ws://127.0.0.1:9001"}'; they win over the above.
    ws_base_urls: dict[VenueName, str] = Field(default_factory=dict)
    rest_base_urls: dict[VenueName, str] = Field(default_factory=dict)
    queue_max: int = Field(default=10_000, ge=1)
    # The publisher hands aiokafka whole batches (everything queued meanwhile), so lingering on
    # top only adds latency; under load batches grow by themselves while a request is in flight.
    linger_ms: int = Field(default=0, ge=0)
    max_batch_bytes: int = Field(default=256 * 1024, ge=1024)
    # zstd (level 3): aiokafka compresses lz4 at level 9, which cost ~3.8 µs per trade record against
    # zstd's ~0.3 µs, and zstd packs these JSON records tighter (~14x vs ~10x); CPU is what limits
    # the producer (bench/producer_bench.py, docs/producer.md).
    compression: Literal["lz4", "zstd", "gzip", "none"] = "zstd"
    stall_timeout_s: float = Field(default=30.0, gt=0)
    reconnect_initial_s: float = Field(default=0.5, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)
    # Binance closes every connection at 24 h; rotate a little before that.
    rotate_after_s: float = Field(default=23.5 * 3600, gt=0)
    # Both connections deliver during the overlap; duplicates are dropped by aggregate id.
    rotate_overlap_s: float = Field(default=5.0, ge=0)
    # None: the market's IP limit (USD-M and COIN-M 2,400, spot 6,000 request weight per minute).
    rest_weight_budget_per_min: int | None = Field(default=None, ge=20)
    # A gap may be frames still in flight on the other connection during a rotation: wait this
    # long before asking REST, then give up on what REST cannot return after gap_fill_timeout_s.
    gap_grace_s: float = Field(default=0.5, ge=0)
    gap_fill_timeout_s: float = Field(default=30.0, gt=0)
    # aiokafka: how long a batch may wait for an absent broker before it is re-queued.
    request_timeout_ms: int = Field(default=30_000, ge=1000)
    # /health turns unready when records wait and no ack came for this long.
    health_ack_stale_s: float = Field(default=10.0, gt=0)
    metrics_port: int = Field(default=9108, ge=0)
    # Loopback unless told: the docker stack sets 0.0.0.0 inside the container and publishes the
    # port on the host's 127.0.0.1 only.
    metrics_host: str = "127.0.0.1"
    shutdown_timeout_s: float = Field(default=10.0, gt=0)

    @field_validator("symbols", mode="before")
    @classmethod
    def _split_symbols(cls, value: object) -> object:
        if isinstance(value, str) and value.lstrip().startswith("["):
            return json.loads(value)
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("symbols")
    @classmethod
    def _upper_symbols(cls, value: list[str]) -> list[str]:
        return [symbol.upper() for symbol in value]

    @field_validator("venue", mode="before")
    @classmethod
    def _no_venue(cls, value: object) -> object:
        # Compose passes an unset PRODUCER_VENUE as "": Binance's market then.
        return None if value == "" else value

    def for_venue(self, venue: VenueName | None, symbols: list[str] | None) -> ProducerSettings:
        """These settings for one venue of a run (None: Binance's `market`), with its own URLs if
        set, and `symbols` unless None."""
        update: dict[str, object] = {} if symbols is None else {"symbols": symbols}
        if venue is not None:
            update.update(venue=venue, market=venue.removeprefix("binance-") if venue.startswith("binance-")
                          else self.market)
        if venue in self.ws_base_urls:
            update["ws_base_url"] = self.ws_base_urls[venue]
        if venue in self.rest_base_urls:
            update["rest_base_url"] = self.rest_base_urls[venue]
        return self.model_validate({**self.model_dump(), **update})


# Runs that await their end (`pulse demo`, `pulse live`, `--until-idle`, the notebook) see it at a batch end.
REPLAY_BATCH_S = 5.0


class SparkSettings(BaseModel):
    # "realtime": Spark's Real-Time Mode, long-running tasks that process each trade as it arrives
    # and write through Spark's Kafka sink to the store writer (p50 tens of ms, docs/benchmarks.md).
    # "microbatch": a batch every trigger_ms, written by a foreachBatch callback (p50 ~0.6-2 s).
    mode: Literal["realtime", "microbatch"] = "realtime"
    # Real-Time Mode: how long one batch of the long-running tasks lasts: a checkpoint interval, not a
    # latency (Spark's default is 5 minutes). At its end Spark commits offsets and state, advances the
    # watermark and evicts closed windows; a trade is "late" when its window ended at or before the
    # watermark of the batch it arrives in (docs/signals.md). Each end stalls the stream ~0.4-0.7 s
    # on two cores: at 5 s batches that put p99 freshness at 0.8-1.1 s, at 60 s 0.27 s
    # (docs/benchmarks.md). Runs that wait for a batch end to know they are done (`pulse demo`,
    # `pulse live`, `--until-idle`, the notebook) use REPLAY_BATCH_S (short_batches()).
    realtime_batch_s: float = Field(default=60.0, ge=1)
    # None: sized from the topic. Real-Time Mode runs every stage's tasks at once, so local mode
    # needs a slot per input partition for each query plus the shuffle partitions (task_slots()).
    master: str | None = None
    app_name: str = "pulse-processor"
    # A batch with data takes ~0.3-0.5 s on two cores; a 250 ms trigger starts the next one as soon
    # as the last ends, which cut p99 freshness by a quarter against 500 ms (docs/benchmarks.md).
    trigger_ms: int = Field(default=250, ge=50)
    # Rejects are for inspection, not for the live view: a slower trigger leaves the 2 cores
    # to the metrics query, whose freshness is what users watch.
    # Measured (docs/benchmarks.md): every rejects batch re-reads and re-parses the topic on the same
    # two cores, and at 2 s it cost the metrics query about a third of its freshness.
    rejects_trigger_ms: int = Field(default=10_000, ge=50)
    watermark_s: float = Field(default=2.0, ge=0)
    starting_offsets: Literal["earliest", "latest"] = "latest"
    max_offsets_per_trigger: int | None = Field(default=None, ge=1)
    # One partition for the stateful stage: each partition is a state store committed to disk
    # every batch, and at a few hundred trades a batch the second one cost more than it spread
    # (batches 1.2 s -> 0.7 s, docs/benchmarks.md). On a cluster: at least the executors' cores.
    # Fixed by a query's checkpoint once it exists: a changed value applies to new checkpoints only.
    shuffle_partitions: int = Field(default=1, ge=1)
    # Update mode emits on data; batches without data only move the watermark and evict state.
    no_data_batches: bool = True
    # "hdfs" (Spark's default, in-memory maps snapshotted per batch) or "rocksdb" (with changelog
    # checkpointing). Fixed by an existing checkpoint: switching needs a new one (docs/operations.md).
    # None: rocksdb in Real-Time Mode (the only store it accepts), hdfs for micro-batches.
    state_store: Literal["hdfs", "rocksdb"] | None = None

    @model_validator(mode="after")
    def _realtime_needs_rocksdb(self) -> Self:
        if self.mode == "realtime" and self.state_store == "hdfs":
            raise ValueError("Real-Time Mode keeps its state in RocksDB only: unset state_store,"
                             " or set mode=microbatch")
        if self.mode == "realtime" and self.max_offsets_per_trigger is not None:
            raise ValueError("max_offsets_per_trigger sizes micro-batches: Real-Time Mode reads every"
                             " trade as it comes; unset it, or set mode=microbatch")
        return self

    @property
    def state_store_provider(self) -> Literal["hdfs", "rocksdb"]:
        return self.state_store or ("rocksdb" if self.mode == "realtime" else "hdfs")
    # None: <data_dir>/checkpoints. On a cluster, a path every node and the driver share.
    checkpoint_dir: Path | None = None
    # Local mode talks over loopback; on a cluster, the address executors reach the driver at.
    driver_host: str = "127.0.0.1"
    driver_bind_address: str = "127.0.0.1"
    driver_memory: str = "2g"
    # The job's /health (ready while both queries run and report progress) and /metrics.
    health_port: int = Field(default=9109, ge=0)
    # Loopback unless told: the docker stack sets 0.0.0.0 inside the container.
    health_host: str = "127.0.0.1"
    # Queries report progress after every trigger and, when idle, every 10 s: silence this long is a stall.
    health_stale_s: float = Field(default=60.0, gt=0)
    # Real-Time Mode: no progress for this long (plus one batch) ends the job, non-zero with one line,
    # for its supervisor to restart it from the checkpoint. A batch there ends on time whatever it reads,
    # so such silence is a stuck batch (a worker lost while its tasks waited to launch), not a long
    # one; None leaves it to /health. Micro-batches may legitimately run long, and are not timed.
    stall_exit_s: float | None = Field(default=300.0, gt=0)
    # Anything else Spark accepts, e.g. PULSE_SPARK__EXTRA_CONF='{"spark.executor.memory": "4g"}'.
    extra_conf: dict[str, str] = Field(default_factory=dict)


class WriterSettings(BaseModel):
    """The store writer (Real-Time Mode): job output topics -> pulse_metrics / pulse_rejects."""

    # A poll returns as soon as records arrive; this bounds how long it waits when none do.
    max_wait_ms: int = Field(default=20, ge=1, le=1000)
    max_records: int = Field(default=50_000, ge=1)
    group_id: str = "pulse-store-writer"
    # True: the writer runs inside `pulse process` / `demo` / `live` (a chDB store can only be
    # opened by one process). False: it runs as `pulse store` (the docker stack's store-writer).
    in_process: bool = True
    # /health turns red when records wait and no insert succeeded for this long.
    stale_s: float = Field(default=15.0, gt=0)
    # Inserts that fail (ClickHouse unreachable) are retried with backoff up to this pause.
    retry_max_s: float = Field(default=5.0, gt=0)
    health_port: int = Field(default=9110, ge=0)
    health_host: str = "127.0.0.1"


class SignalSettings(BaseModel):
    # Dead bands on top of the 1e-9 float tolerance; 0 reproduces the seed's rule exactly.
    price_deadband_rel: float = Field(default=0.0, ge=0)
    delta_deadband_rel: float = Field(default=0.0, ge=0)


class ClickHouseSettings(BaseModel):
    transport: Literal["chdb", "http"] = "chdb"
    database: str = "pulse"
    # chDB: store under <data_dir>/chdb unless given.
    chdb_path: Path | None = None
    host: str = "localhost"
    port: int = 8123
    username: str = "pulse_writer"
    password: SecretStr = SecretStr("")
    secure: bool = False
    # Seconds to connect, and to wait for an answer, over HTTP: a stalled server fails a call (the writer
    # retries it) instead of hanging the process.
    timeout_s: float = Field(default=30.0, gt=0)
    # Create the tables over HTTP too (chDB stores always get them); every statement is idempotent.
    apply_schema: bool = False


class PulseSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="PULSE_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
    )

    data_dir: Path = Path(".pulse")
    jars_dir: Path = _CHECKOUT / ".cache" / "jars"
    # The package's own schema files unless a deployment points elsewhere.
    schema_dir: Path = Field(default_factory=package_schema_dir)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    producer: ProducerSettings = Field(default_factory=ProducerSettings)
    spark: SparkSettings = Field(default_factory=SparkSettings)
    signal: SignalSettings = Field(default_factory=SignalSettings)
    writer: WriterSettings = Field(default_factory=WriterSettings)
    clickhouse: ClickHouseSettings = Field(default_factory=ClickHouseSettings)
    # The JVMs' class-data archives under <jars_dir>/class-archives (pulse/jvm.py).
    class_archives: ClassArchives = "use"
    jit: JitMode = "auto"

    def override(self, **changes: Any) -> Self:
        """A copy with `changes` applied and validated as the environment would be.

        Nested sections take a dict of their fields: `settings.override(spark={"trigger_ms": 250})`.
        """
        merged = _merge(self.model_dump(), changes)
        return self.model_validate(merged)

    def jit_for(self, bounded: bool) -> PulseSettings:
        """These settings with "auto" decided for a run that ends by itself (`bounded`) or not."""
        if self.jit != "auto":
            return self
        return self.override(jit="quick" if bounded else "full")

    @property
    def quick_jit(self) -> bool:
        """Outside a run ("auto" not decided), the JVM compiles fully."""
        return self.jit == "quick"

    @property
    def checkpoint_dir(self) -> Path:
        return self.spark.checkpoint_dir or self.data_dir / "checkpoints"

    @property
    def realtime(self) -> bool:
        return self.spark.mode == "realtime"

    def task_slots(self) -> int:
        """Local task slots the job needs: Real-Time Mode keeps every task of both queries running
        at once (metrics: a task per input partition plus the shuffle partitions; rejects: a task
        per input partition), plus one for the late-trade count, a batch job of one task that runs
        when a batch dropped trades behind the watermark; micro-batches need no more than the
        machine's two cores."""
        if not self.realtime:
            return 2
        return 2 * self.kafka.partitions + self.spark.shuffle_partitions + 1

    def short_batches(self) -> PulseSettings:
        """These settings for a run whose end is awaited (a replay, `--until-idle`, `pulse live`'s
        stop): Real-Time Mode batches no longer than REPLAY_BATCH_S, since "all processed" is seen
        at a batch end, within seconds rather than a minute."""
        return self.override(spark={"realtime_batch_s": min(self.spark.realtime_batch_s, REPLAY_BATCH_S)})

    @property
    def health_stale_after_s(self) -> float:
        """Silence after which the job's /health is red: Real-Time Mode reports progress only when a
        batch ends, so a whole batch comes on top of `health_stale_s`."""
        return self.spark.health_stale_s + (self.spark.realtime_batch_s if self.realtime else 0.0)

    @property
    def stall_exit_after_s(self) -> float | None:
        """Silence after which a Real-Time Mode job ends itself (None: never, and never in micro-batch mode)."""
        if not self.realtime or self.spark.stall_exit_s is None:
            return None
        return self.spark.stall_exit_s + self.spark.realtime_batch_s

    @property
    def spark_master(self) -> str:
        return self.spark.master or f"local[{self.task_slots()}]"

    @property
    def chdb_path(self) -> Path:
        return self.clickhouse.chdb_path or self.data_dir / "chdb"


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in changes.items():
        if key not in base:
            raise ValueError(f"unknown setting {key!r}")
        if isinstance(value, dict) and isinstance(base[key], dict) and key != "extra_conf":
            merged[key] = _merge(base[key], value)
        else:
            merged[key] = value
    return merged
