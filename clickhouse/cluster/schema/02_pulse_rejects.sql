-- Cluster variant of pulse/resources/schema/02_pulse_rejects.sql: replicated rows behind a Distributed
-- table of the same name. A rejected message is sharded by where it came from, so a replayed batch
-- rewrites it on the shard that holds it and replacing by version still applies.
-- The columns are those of the single-node table, written again: tests/stack/test_cluster_schema.py
-- fails when the two files disagree.
CREATE TABLE IF NOT EXISTS pulse_rejects_local
(
    rejected_at   DateTime64(3, 'UTC'),
    topic         LowCardinality(String),
    partition     Int32,
    offset        Int64,
    kafka_time    DateTime64(3, 'UTC'),
    reason        String,
    raw_value     String,
    version       UInt64
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/pulse_rejects_local', '{replica}', version)
PARTITION BY toDate(rejected_at)
ORDER BY (topic, partition, offset);

CREATE TABLE IF NOT EXISTS pulse_rejects AS pulse_rejects_local
ENGINE = Distributed('{cluster}', currentDatabase(), pulse_rejects_local, cityHash64(topic, partition, offset));
