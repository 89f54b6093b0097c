-- Do the signals mean anything? What the price did 5, 30 and 60 seconds after each window, and how
-- often it moved the way the signal pointed. Plain views over the newest version of each window
-- (pulse_metrics_latest), so a window rewritten by late trades or a replay counts once, as written last.
--
-- For a window w of a symbol (on one venue), with close c (the price of its highest aggregate id) and end e:
--   forward price  = close of the symbol's latest window with window_end <= e + h (w itself if none
--                    came after it within h: a quiet market did not move).
--   forward return = (forward price / c - 1) x 10 000 bps.
--   w counts for h only if the symbol has a window with window_end >= e + h, so the last seconds of
--   the data, whose future is not known yet, are left out rather than scored as "no move".
--   direction: STRONG BUY and ACCUMULATING are up, STRONG SELL and DISTRIBUTING down, NEUTRAL none.
--   hit: a strictly positive return for up, strictly negative for down (NULL without a direction).

-- One row per window and horizon that counts.
CREATE VIEW IF NOT EXISTS pulse_signal_outcomes AS
SELECT
    venue,
    symbol,
    window_start,
    window_end,
    signal,
    close,
    horizon_s,
    forward_price,
    (forward_price / close - 1) * 10000 AS forward_return_bps,
    toInt8(multiIf(signal IN ('STRONG BUY', 'ACCUMULATING'), 1,
                   signal IN ('STRONG SELL', 'DISTRIBUTING'), -1,
                   0)) AS direction,
    -- Prices compared, not the return's sign: (f / c - 1) can round to 0 for neighbouring floats.
    multiIf(direction = 1, forward_price > close,
            direction = -1, forward_price < close,
            NULL) AS hit
FROM
(
    SELECT
        venue,
        symbol,
        window_start,
        window_end,
        signal,
        close,
        -- Integer milliseconds, so the frames below are exact ranges on the time axis.
        toUnixTimestamp64Milli(window_end) AS end_ms,
        max(end_ms) OVER (PARTITION BY venue, symbol) AS last_end_ms,
        -- The frame holds the windows ending in [e, e + h]: its last row is the latest one ending by
        -- e + h (w itself at least). One window per (venue, symbol, window_start), so the order has no ties.
        last_value(close) OVER (PARTITION BY venue, symbol ORDER BY end_ms
                                RANGE BETWEEN CURRENT ROW AND 5000 FOLLOWING) AS forward_5s,
        last_value(close) OVER (PARTITION BY venue, symbol ORDER BY end_ms
                                RANGE BETWEEN CURRENT ROW AND 30000 FOLLOWING) AS forward_30s,
        last_value(close) OVER (PARTITION BY venue, symbol ORDER BY end_ms
                                RANGE BETWEEN CURRENT ROW AND 60000 FOLLOWING) AS forward_60s
    FROM pulse_metrics_latest
)
ARRAY JOIN
    [5, 30, 60] AS horizon_s,
    [forward_5s, forward_30s, forward_60s] AS forward_price
-- The symbol's data reaches e + h: the outcome is known.
WHERE end_ms + 1000 * horizon_s <= last_end_ms;

-- Per symbol, signal and horizon: how many windows counted, their mean forward return, and the
-- share that moved the signal's way (NULL for NEUTRAL, which points nowhere).
CREATE VIEW IF NOT EXISTS pulse_signal_quality AS
SELECT
    symbol,
    signal,
    horizon_s,
    count()                                                    AS signals,
    avg(forward_return_bps)                                    AS mean_return_bps,
    if(any(direction) = 0, NULL, 100 * countIf(hit = 1) / count()) AS hit_rate_pct
FROM pulse_signal_outcomes
GROUP BY symbol, signal, horizon_s
ORDER BY symbol, signal, horizon_s;
