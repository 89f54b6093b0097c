-- 5-second and 1-minute rollups for Grafana's longer time ranges.
-- These are views over the deduplicated 1-second rows, not incremental materialized views: the job
-- writes each 1-second window several times (update mode, replays), and an incremental rollup
-- would add every version of a window into its bucket. Summing the sums keeps VWAP exact.
CREATE VIEW IF NOT EXISTS pulse_metrics_5s AS
SELECT
    m.venue AS venue,
    m.symbol AS symbol,
    toStartOfInterval(m.window_start, INTERVAL 5 SECOND) AS bucket_start,
    sum(m.quote_volume) / sum(m.total_volume)             AS vwap,
    sum(m.buy_volume) - sum(m.sell_volume)                AS net_delta,
    100 * sum(m.buy_volume) / sum(m.total_volume)         AS buy_pressure_pct,
    sum(m.total_volume)                                 AS total_volume,
    sum(m.trade_count)                                  AS trade_count,
    argMin(m.open, m.window_start)                        AS open,
    max(m.high)                                         AS high,
    min(m.low)                                          AS low,
    argMax(m.close, m.window_start)                       AS close,
    sum(m.expected_trade_count)                         AS expected_trade_count
FROM pulse_metrics AS m FINAL
GROUP BY venue, symbol, bucket_start;

CREATE VIEW IF NOT EXISTS pulse_metrics_1m AS
SELECT
    m.venue AS venue,
    m.symbol AS symbol,
    toStartOfMinute(m.window_start)                     AS bucket_start,
    sum(m.quote_volume) / sum(m.total_volume)             AS vwap,
    sum(m.buy_volume) - sum(m.sell_volume)                AS net_delta,
    100 * sum(m.buy_volume) / sum(m.total_volume)         AS buy_pressure_pct,
    sum(m.total_volume)                                 AS total_volume,
    sum(m.trade_count)                                  AS trade_count,
    argMin(m.open, m.window_start)                        AS open,
    max(m.high)                                         AS high,
    min(m.low)                                          AS low,
    argMax(m.close, m.window_start)                       AS close,
    sum(m.expected_trade_count)                         AS expected_trade_count
FROM pulse_metrics AS m FINAL
GROUP BY venue, symbol, bucket_start;
