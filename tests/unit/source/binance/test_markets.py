"""Markets as data: each one's stream and REST paths, a settings URL overriding only the host, and
exchangeInfo as each market spells it (spot and USD-M `status`, COIN-M `contractStatus`)."""

from __future__ import annotations

import orjson
import pytest

from pulse.settings import ProducerSettings
from pulse.source.binance.live import BinanceSource, shards
from pulse.source.binance.markets import MARKETS, market_named
from pulse.source.binance.rest import RestError, symbol_states


def test_each_market_streams_and_fills_gaps_on_its_own_paths():
    assert MARKETS["usdm"].ws_url.endswith("fstream.binance.com/market/stream")
    assert MARKETS["spot"].ws_url.endswith("stream.binance.com:9443/stream")
    assert MARKETS["coinm"].ws_url.endswith("dstream.binance.com/stream")
    assert [MARKETS[m].agg_trades_path for m in ("usdm", "spot", "coinm")] == [
        "/fapi/v1/aggTrades", "/api/v3/aggTrades", "/dapi/v1/aggTrades"]
    assert [MARKETS[m].exchange_info_path for m in ("usdm", "spot", "coinm")] == [
        "/fapi/v1/exchangeInfo", "/api/v3/exchangeInfo", "/dapi/v1/exchangeInfo"]



def test_binance_us_is_spots_protocol_on_its_own_hosts_with_its_own_weight():
    us, spot = market_named("us"), market_named("spot")
    assert (us.ws_url, us.rest_url) == ("wss://stream.binance.us:9443/stream", "https://api.binance.us")
    assert (us.agg_trades_path, us.exchange_info_path) == (spot.agg_trades_path, spot.exchange_info_path)
    assert us.weight_per_minute == 1200 and spot is MARKETS["spot"]

@pytest.mark.parametrize(("market", "override", "expected"), [
    ("usdm", None, "wss://fstream.binance.com/market/stream"),
    ("usdm", "ws://127.0.0.1:9000", "ws://127.0.0.1:9000/market/stream"),
    ("spot", "ws://127.0.0.1:9000/", "ws://127.0.0.1:9000/stream"),
    ("coinm", "wss://proxy.example:443", "wss://proxy.example:443/stream"),
    # A URL with a path of its own is taken as it is (a proxy with another layout, the legacy path).
    ("usdm", "ws://127.0.0.1:9000/stream", "ws://127.0.0.1:9000/stream"),
])
def test_a_settings_url_overrides_the_host_and_keeps_the_market_path(market, override, expected):
    assert MARKETS[market].stream_url(override) == expected


def test_the_source_uses_the_markets_path_under_an_overridden_host():
    settings = ProducerSettings(market="coinm", symbols=["BTCUSD_PERP", "ETHUSD_260327"],
                                ws_base_url="ws://127.0.0.1:9000")
    (stream,) = BinanceSource(settings).streams
    assert stream.url == "ws://127.0.0.1:9000/stream?streams=btcusd_perp@aggTrade/ethusd_260327@aggTrade"


def test_many_symbols_are_spread_over_connections_of_at_most_200_streams():
    symbols = [f"S{i:04d}USDT" for i in range(501)]
    assert [len(shard) for shard in shards(symbols)] == [200, 200, 101]
    source = BinanceSource(ProducerSettings(symbols=symbols))
    assert len(source.streams) == 3
    assert sum(stream.url.count("@aggTrade") for stream in source.streams) == 501


def test_all_must_be_resolved_before_a_source_is_built():
    with pytest.raises(ValueError, match="market_symbols"):
        BinanceSource(ProducerSettings(symbols=["all"]))


def test_exchange_info_is_read_as_each_market_names_the_status():
    usdm = {"timezone": "UTC", "symbols": [
        {"symbol": "BTCUSDT", "status": "TRADING", "contractType": "PERPETUAL", "filters": []},
        {"symbol": "BTCUSDT_260327", "status": "TRADING", "contractType": "CURRENT_QUARTER"},
        {"symbol": "BTCUSDT_250328", "status": "SETTLING"}]}
    coinm = {"symbols": [{"symbol": "BTCUSD_PERP", "contractStatus": "TRADING"},
                         {"symbol": "ETHUSD_260327", "contractStatus": "TRADING"},
                         {"symbol": "ADAUSD_250328", "contractStatus": "DELIVERING"}]}
    assert symbol_states(orjson.dumps(usdm)) == {"BTCUSDT": "TRADING", "BTCUSDT_260327": "TRADING",
                                                 "BTCUSDT_250328": "SETTLING"}
    assert symbol_states(orjson.dumps(coinm)) == {"BTCUSD_PERP": "TRADING", "ETHUSD_260327": "TRADING",
                                                  "ADAUSD_250328": "DELIVERING"}
    # A name Binance's own pattern would refuse is left out rather than failing the whole list.
    assert symbol_states(orjson.dumps({"symbols": [{"symbol": "odd name", "status": "TRADING"}]})) == {}
    with pytest.raises(RestError, match="exchangeInfo"):
        symbol_states(b'{"code": -1003}')
