-- Kafka messages the processor could not turn into a trade: kept with the raw value and the
-- reason, never dropped silently. (symbol-less by nature, so ordered by where they came from.)
CREATE TABLE IF NOT EXISTS pulse_rejects
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
ENGINE = ReplacingMergeTree(version)
PARTITION BY toDate(rejected_at)
ORDER BY (topic, partition, offset);
