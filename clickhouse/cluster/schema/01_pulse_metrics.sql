-- Cluster variant of pulse/resources/schema/01_pulse_metrics.sql (docker-compose.cluster.yml mounts it
-- over that file; the views of 04_ to 07_ are the single-node files, unchanged). Each node keeps its
-- rows in pulse_metrics_local, a ReplicatedReplacingMergeTree(version): replicas share one Keeper path
-- ({shard}) and copy each other's parts, and replacing by version works as on one node. The job and
-- Grafana use pulse_metrics, a Distributed table over the cluster: inserts go to the shard of the
-- symbol (every version of a window lands on the same shard, so FINAL still sees them together),
-- reads fan out to one replica per shard. Every statement is idempotent, like the single-node files.
-- The columns are those of the single-node table, written again: tests/stack/test_cluster_schema.py
-- fails when the two files disagree.
CREATE TABLE IF NOT EXISTS pulse_metrics_local
(
    venue                  LowCardinality(String),
    symbol                 LowCardinality(String),
    base_asset             LowCardinality(String),
    quote_asset            LowCardinality(String),
    window_start           DateTime64(3, 'UTC'),
    window_end             DateTime64(3, 'UTC'),
    vwap                   Float64,
    net_delta              Float64,
    buy_pressure_pct       Float64,
    total_volume           Float64,
    trade_count            UInt64,
    avg_price_1_sec        Float64,
    signal                 LowCardinality(String),
    open                   Float64,
    high                   Float64,
    low                    Float64,
    close                  Float64,
    buy_volume             Float64,
    sell_volume            Float64,
    quote_volume           Float64,
    first_agg_trade_id     UInt64,
    last_agg_trade_id      UInt64,
    expected_trade_count   UInt64,
    avg_ingest_latency_ms  Float64,
    max_ingest_latency_ms  Float64,
    avg_write_latency_ms   Float64,
    max_write_latency_ms   Float64,
    first_trade_time       DateTime64(3, 'UTC'),
    written_at             DateTime64(3, 'UTC'),
    version                UInt64
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/pulse_metrics_local', '{replica}', version)
PARTITION BY toDate(window_start)
ORDER BY (symbol, window_start, venue);

CREATE TABLE IF NOT EXISTS pulse_metrics AS pulse_metrics_local
ENGINE = Distributed('{cluster}', currentDatabase(), pulse_metrics_local, cityHash64(symbol));

-- Exactly one row per window: the newest version (FINAL runs on each shard's replica).
CREATE VIEW IF NOT EXISTS pulse_metrics_latest AS
SELECT * FROM pulse_metrics FINAL;
