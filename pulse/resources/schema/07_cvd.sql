-- Cumulative volume delta: the running sum of net_delta (taker buys minus taker sells) per venue and symbol,
-- from the start of a chosen range. A parameterised view, because CVD only means something from a
-- starting point: the range is part of the definition, not a filter on the result.
--   SELECT * FROM pulse_cvd(from_time = now() - INTERVAL 15 MINUTE, to_time = now()) WHERE symbol = 'BTCUSDT'
-- Both bounds are inclusive and compared with window_start, as Grafana's $__timeFilter does.
-- One row per window (pulse_metrics_latest): a rewritten window's delta is added once, as written last.
CREATE VIEW IF NOT EXISTS pulse_cvd AS
SELECT
    venue,
    symbol,
    window_start,
    window_end,
    close,
    net_delta,
    sum(net_delta) OVER (PARTITION BY venue, symbol ORDER BY window_start
                         ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS cvd
FROM pulse_metrics_latest
WHERE window_start >= {from_time:DateTime64(3, 'UTC')}
  AND window_start <= {to_time:DateTime64(3, 'UTC')};
