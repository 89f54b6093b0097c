-- Real-Time Mode (Pulse 2026-12): pulse_metrics.version is the window's trade count, no longer the
-- Spark batch id. Rows written before carry batch ids, which are larger, so ReplacingMergeTree would
-- keep an old row over any newer state of the same window. This rewrites every kept row with
-- version = trade_count. Run it once, with no job writing (docs/operations.md), e.g.
--   clickhouse-client --database pulse --multiquery < clickhouse/migrations/2026-12-version-is-trade-count.sql
-- ClickHouse refuses ALTER UPDATE of a ReplacingMergeTree's version column, hence a copy and an
-- atomic swap; the views read the table by name and follow the swap.
DROP TABLE IF EXISTS pulse_metrics_migrating;
CREATE TABLE pulse_metrics_migrating AS pulse_metrics;
INSERT INTO pulse_metrics_migrating SELECT * REPLACE (trade_count AS version) FROM pulse_metrics FINAL;
EXCHANGE TABLES pulse_metrics AND pulse_metrics_migrating;
DROP TABLE pulse_metrics_migrating;
