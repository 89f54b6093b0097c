"""Binance markets as data: where each one streams aggTrades, where its REST fills gaps, its limits.

A market is chosen by name in settings (`PULSE_PRODUCER__MARKET`). A URL given in settings (a
proxy, the test double) overrides the preset's host; the preset's path stays unless the URL
brings one of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

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
    # Request weight per minute per IP, and what one aggTrades and one exchangeInfo call cost of it.
    weight_per_minute: int
    agg_trades_weight: int
    exchange_info_weight: int

    @property
    def ws_path(self) -> str:
        return urlsplit(self.ws_url).path

    def stream_url(self, override: str | None) -> str:
        """The combined-stream base URL: the preset's, or `override`'s host with the preset's path."""
        if not override:
            return self.ws_url
        if urlsplit(override).path.strip("/"):
            return override
        return override.rstrip("/") + self.ws_path


# Binance's own markets.
MARKETS: dict[MarketName, Market] = {
    # USD-M serves public market streams on /market; the old /ws and /stream paths accept
    # connections but have sent nothing since 2026-04-23.
    "usdm": Market("usdm", "USD-M futures", "wss://fstream.binance.com/market/stream", "https://fapi.binance.com",
                   "/fapi/v1/aggTrades", "/fapi/v1/exchangeInfo", 2400, 20, 1),
    "spot": Market("spot", "spot", "wss://stream.binance.com:9443/stream", "https://api.binance.com",
                   "/api/v3/aggTrades", "/api/v3/exchangeInfo", 6000, 4, 20),
    "coinm": Market("coinm", "COIN-M futures", "wss://dstream.binance.com/stream", "https://dapi.binance.com",
                    "/dapi/v1/aggTrades", "/dapi/v1/exchangeInfo", 2400, 20, 1),
}

# Binance.US, another exchange on Binance spot's frames and REST paths, on its own hosts
# (https://docs.binance.us). Its exchangeInfo (recorded 2021, ../shared/data/venues) allows 1,200
# request weight per minute; the per-call weights are taken as spot's, the larger of the two.
BINANCE_US = Market("us", "Binance.US spot", "wss://stream.binance.us:9443/stream", "https://api.binance.us",
                    "/api/v3/aggTrades", "/api/v3/exchangeInfo", 1200, 4, 20)


def market_named(name: MarketName) -> Market:
    """The preset a `PULSE_PRODUCER__MARKET` names: one of Binance's markets, or Binance.US."""
    return BINANCE_US if name == "us" else MARKETS[name]
