-- One row per processor micro-batch: what came in, what was refused, what arrived too late.
-- Feeds the pipeline-health dashboard (rows/s, rejects, late trades, watermark, batch duration).
CREATE TABLE IF NOT EXISTS pulse_health
(
    reported_at              DateTime64(3, 'UTC'),
    query_name               LowCardinality(String),
    batch_id                 Int64,
    input_rows               UInt64,
    input_rows_per_second    Float64,
    processed_rows_per_second Float64,
    late_rows_dropped        UInt64,
    state_rows               UInt64,
    watermark                Nullable(DateTime64(3, 'UTC')),
    batch_duration_ms        UInt64,
    data_loss_offsets        UInt64
)
ENGINE = MergeTree
PARTITION BY toDate(reported_at)
ORDER BY (query_name, reported_at);
