-- One row per (venue, symbol, 1-second window), as computed by the Spark job. The key puts venue
-- last so that tables made before venues migrate in place (clickhouse/migrations/2026-12-venue.sql).
-- The job runs in update mode: a window is written again each time more of its trades arrive, and
-- a batch replayed after a crash writes the same rows again. ReplacingMergeTree(version), with
-- version = the window's trade count, keeps its fullest state whatever order the writes come in,
-- which is what makes the sink's effect exactly-once. Read it through pulse_metrics_latest (or with FINAL) for one row per window.
CREATE TABLE IF NOT EXISTS pulse_metrics
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
ENGINE = ReplacingMergeTree(version)
PARTITION BY toDate(window_start)
ORDER BY (symbol, window_start, venue);

-- Exactly one row per window: the newest version.
CREATE VIEW IF NOT EXISTS pulse_metrics_latest AS
SELECT * FROM pulse_metrics FINAL;
