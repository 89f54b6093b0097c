"""Binance markets as data: where each one streams aggTrades, where its REST fills gaps, its limits.

A market is chosen by name in settings (`PULSE_PRODUCER__MARKET`); a URL given in settings (a
proxy, the test double) overrides the preset's.
"""

from __future__ import annotations

from dataclasses import dataclass

from pulse.settings import MarketName


@dataclass(frozen=True, slots=True)
class Market:
    name: MarketName
    title: str
    # Combined streams: `<ws_url>?streams=btcusdt@aggTrade/...`.
    ws_url: str
    rest_url: str
    agg_trades_path: str
    exchange_info_path: str
    # Request weight per minute per IP, and what one aggTrades call costs of it.
    weight_per_minute: int
    agg_trades_weight: int


MARKETS: dict[MarketName, Market] = {
    # USD-M serves public market streams on /market; the old /ws and /stream paths accept
    # connections but have sent nothing since 2026-04-23.
    "usdm": Market("usdm", "USD-M futures", "wss://fstream.binance.com/market/stream", "https://fapi.binance.com",
                   "/fapi/v1/aggTrades", "/fapi/v1/exchangeInfo", 2400, 20),
    "spot": Market("spot", "spot", "wss://stream.binance.com:9443/stream", "https://api.binance.com",
                   "/api/v3/aggTrades", "/api/v3/exchangeInfo", 6000, 4),
    "coinm": Market("coinm", "COIN-M futures", "wss://dstream.binance.com/stream", "https://dapi.binance.com",
                    "/dapi/v1/aggTrades", "/dapi/v1/exchangeInfo", 2400, 20),
}
