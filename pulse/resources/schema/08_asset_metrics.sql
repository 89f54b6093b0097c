-- One view across venues: per asset and second, over every venue that traded it. USD and the dollar
-- stablecoins (USDT, USDC) are one quote family, so BTCUSDT on Binance, BTC-USD-SWAP on OKX and
-- BTC-USD on Coinbase count together; other quotes (EUR, BTC, ...) are families of their own.
-- Quantities are base units on every venue (contracts converted by the producer, docs/venues.md),
-- quote volumes in the quote family's units.
--   total_volume      Σ base volume over venues
--   net_delta         Σ taker buys − Σ taker sells over venues; cvd its running sum per asset and
--                     family from the first second stored (pulse_cvd for one venue and a chosen start)
--   vwap              Σ quote volume / Σ base volume: the cross-venue VWAP
--   venues            how many venues traded the asset in that second; venue_share each one's share
--                     of the volume (0..1)
--   spread_bps        (highest − lowest venue VWAP) / lowest × 10 000, 0 with one venue
--   first_venue       the venue whose first trade of the second came first (ties: by name)
-- One row per window (pulse_metrics_latest): a rewritten window counts once, as written last.
CREATE VIEW IF NOT EXISTS pulse_asset_metrics AS
SELECT
    asset,
    quote_family,
    window_start,
    total_volume,
    net_delta,
    sum(net_delta) OVER (PARTITION BY asset, quote_family ORDER BY window_start
                         ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS cvd,
    vwap,
    venues,
    venue_share,
    spread_bps,
    first_venue,
    trade_count
FROM
(
    SELECT
        asset,
        quote_family,
        window_start,
        sum(v_volume)                                                   AS total_volume,
        sum(v_buy) - sum(v_sell)                                        AS net_delta,
        sum(v_quote) / total_volume                                     AS vwap,
        count()                                                         AS venues,
        mapFromArrays(groupArray(venue), arrayMap(v -> v / total_volume, groupArray(v_volume))) AS venue_share,
        (max(v_vwap) - min(v_vwap)) / min(v_vwap) * 10000               AS spread_bps,
        argMin(venue, (v_first, venue))                                 AS first_venue,
        sum(v_trades)                                                   AS trade_count
    FROM
    (
        -- One row per venue: a venue may trade the asset under several symbols (spot and swaps).
        SELECT
            m.venue AS venue,
            m.base_asset AS asset,
            if(m.quote_asset IN ('USD', 'USDT', 'USDC'), 'USD', m.quote_asset) AS quote_family,
            m.window_start AS window_start,
            -- Names of their own: an alias equal to a column would be read inside the next sum.
            sum(m.total_volume)                     AS v_volume,
            sum(m.buy_volume)                       AS v_buy,
            sum(m.sell_volume)                      AS v_sell,
            sum(m.quote_volume)                     AS v_quote,
            v_quote / v_volume                      AS v_vwap,
            min(m.first_trade_time)                 AS v_first,
            sum(m.trade_count)                      AS v_trades
        FROM pulse_metrics_latest AS m
        -- Rows from before venues name no asset.
        WHERE m.base_asset != ''
        GROUP BY venue, asset, quote_family, window_start
    )
    GROUP BY asset, quote_family, window_start
);
