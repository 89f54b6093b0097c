-- One row per processor micro-batch: what came in, what was refused, what arrived too late.
-- Feeds the pipeline-health dashboard (rows/s, rejects, late trades, watermark, batch duration).
-- late_rows_dropped is Spark's numRowsDroppedByWatermark: rows after partial aggregation (one per
-- window and partition), not trades. late_trades is the exact number of trades dropped as late.
-- data_loss_offsets: offsets planned for the batch but gone from Kafka (failOnDataLoss=false).
CREATE TABLE IF NOT EXISTS pulse_health
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
ENGINE = MergeTree
PARTITION BY toDate(reported_at)
ORDER BY (query_name, reported_at);

-- Added after the first release: keep existing tables in step (no-op on fresh ones).
ALTER TABLE pulse_health ADD COLUMN IF NOT EXISTS late_trades UInt64 DEFAULT 0 AFTER late_rows_dropped;
