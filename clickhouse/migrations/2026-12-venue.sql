-- Venues (Pulse 2026-12): pulse_metrics gains `venue` (with the symbol's base_asset and quote_asset,
-- and each window's first_trade_time), and a window is one per (venue, symbol, second). Rows written
-- before carry venue, asset and quote '' (unnamed) and a first_trade_time of 1970 (unknown). The sorting key, which ReplacingMergeTree
-- replaces by, gains venue in place: ClickHouse lets ALTER append a column added by the same
-- statement to ORDER BY, without rewriting a part. Run it once, with no job writing
-- (docs/operations.md), then re-apply the schema so the views read the new column, e.g.
--   clickhouse-client --database pulse --multiquery < clickhouse/migrations/2026-12-venue.sql
--   docker compose run --rm processor pulse process --apply-schema   (or restart the processor)
-- A Spark checkpoint of the metrics query from before venues cannot resume (its state is keyed by
-- symbol): start the job on a new checkpoint from the topic's committed offsets (docs/operations.md).
ALTER TABLE pulse_metrics
    ADD COLUMN venue LowCardinality(String) FIRST,
    ADD COLUMN base_asset LowCardinality(String) AFTER symbol,
    ADD COLUMN quote_asset LowCardinality(String) AFTER base_asset,
    ADD COLUMN first_trade_time DateTime64(3, 'UTC') AFTER max_write_latency_ms,
    MODIFY ORDER BY (symbol, window_start, venue);
-- Views are dropped (their column lists were fixed when made, even `SELECT *`) and made again by the schema.
DROP VIEW IF EXISTS pulse_metrics_latest;
DROP VIEW IF EXISTS pulse_metrics_5s;
DROP VIEW IF EXISTS pulse_metrics_1m;
DROP VIEW IF EXISTS pulse_metrics_1s;
DROP VIEW IF EXISTS pulse_cvd;
DROP VIEW IF EXISTS pulse_signal_quality;
DROP VIEW IF EXISTS pulse_signal_outcomes;
