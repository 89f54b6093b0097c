-- The 1-second rows in the shape of the 5s/1m rollups (bucket_start and the same columns), so a
-- Grafana panel reads any of the three by name: the dashboards pick pulse_metrics_1s for short
-- ranges and a rollup for longer ones, with one query text.
CREATE VIEW IF NOT EXISTS pulse_metrics_1s AS
SELECT
    m.venue AS venue,
    m.symbol AS symbol,
    m.window_start AS bucket_start,
    m.vwap AS vwap,
    m.net_delta AS net_delta,
    m.buy_pressure_pct AS buy_pressure_pct,
    m.total_volume AS total_volume,
    m.trade_count AS trade_count,
    m.open AS open,
    m.high AS high,
    m.low AS low,
    m.close AS close,
    m.expected_trade_count AS expected_trade_count
FROM pulse_metrics AS m FINAL;
