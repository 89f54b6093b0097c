-- Cluster variant of pulse/resources/schema/03_pulse_health.sql: replicated rows behind a Distributed
-- table of the same name. Health rows are only ever added, never replaced, so any shard will do.
-- The columns are those of the single-node table, written again: tests/stack/test_cluster_schema.py
-- fails when the two files disagree.
CREATE TABLE IF NOT EXISTS pulse_health_local
(
    reported_at              DateTime64(3, 'UTC'),
    query_name               LowCardinality(String),
    batch_id                 Int64,
    input_rows               UInt64,
    input_rows_per_second    Float64,
    processed_rows_per_second Float64,
    late_rows_dropped        UInt64,
    late_trades              UInt64 DEFAULT 0,
    state_rows               UInt64,
    watermark                Nullable(DateTime64(3, 'UTC')),
    batch_duration_ms        UInt64,
    data_loss_offsets        UInt64
)
ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/{database}/pulse_health_local', '{replica}')
PARTITION BY toDate(reported_at)
ORDER BY (query_name, reported_at);

CREATE TABLE IF NOT EXISTS pulse_health AS pulse_health_local
ENGINE = Distributed('{cluster}', currentDatabase(), pulse_health_local, rand());

-- Added after the first release: keep existing tables in step (no-op on fresh ones). The replicated
-- table passes the change to its other replica through Keeper; the Distributed table is per node.
ALTER TABLE pulse_health_local ADD COLUMN IF NOT EXISTS late_trades UInt64 DEFAULT 0 AFTER late_rows_dropped;
ALTER TABLE pulse_health ADD COLUMN IF NOT EXISTS late_trades UInt64 DEFAULT 0 AFTER late_rows_dropped;
