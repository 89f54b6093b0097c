"""Every venue's reader, on its documented messages and on the real recordings (../shared/data/venues,
recorded by the cryptofeed project, Bryant Moscon, XFree86 1.1): sides, contracts, ids, skips, refusals."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest

from pulse.errors import UsageError
from pulse.model import encode_trade
from pulse.source.base import FrameDecoder
from pulse.source.bybit.wire import BybitReader
from pulse.source.coinbase.wire import CoinbaseReader
from pulse.source.contract import InvalidFrame, NotATrade, iso_ms, numeric_id, split_dashed, split_glued
from pulse.source.kraken.wire import KrakenReader
from pulse.source.okx.wire import Instrument, OkxReader
from pulse.source.replay import ReplaySource
from pulse.source.venues import VENUE_NAMES, VENUES, reader_for
from tests.support.venue_reference import (
    BINANCE_US,
    COINBASE,
    OKX,
    OKX_INSTRUMENTS,
    binance_us_trades,
    coinbase_trades,
    okx_trades,
    venue_recording,
)
from tests.unit.source.test_replay import _replay

RECEIVED = 1_700_000_000_000


def test_every_venue_name_has_a_row():
    assert set(VENUES) == set(VENUE_NAMES)


@pytest.mark.parametrize(("symbol", "base", "quote"), [
    ("BTCUSDT", "BTC", "USDT"), ("ETHBTC", "ETH", "BTC"), ("BTCUSDT_260327", "BTC", "USDT"),
    ("BTCUSD_PERP", "BTC", "USD"), ("1000PEPEUSDC", "1000PEPE", "USDC"), ("BTCPERP", "BTC", "USDC"),
    ("OMGBUSD", "OMG", "BUSD"), ("BTCTUSD", "BTC", "TUSD"), ("BATUSD_260327", "BAT", "USD"),
    ("WEIRD", "WEIRD", "")])
def test_glued_symbols_split_into_asset_and_quote(symbol, base, quote):
    assert split_glued(symbol) == (base, quote)


def test_dashed_symbols_split_into_asset_and_quote():
    assert split_dashed("BTC-USD-SWAP") == ("BTC", "USD")
    assert split_dashed("BTC-USD-220527") == ("BTC", "USD")
    assert split_dashed("ETH-USDC") == ("ETH", "USDC")


def test_iso_times_keep_milliseconds_truncated():
    assert iso_ms("time", "2021-04-17T16:43:30.244975Z") == 1618677810244
    assert iso_ms("time", "2023-02-09T20:19:35.39625135Z") == 1675973975396
    assert iso_ms("time", "2023-02-09T20:19:35Z") == 1675973975000
    with pytest.raises(InvalidFrame, match="ISO 8601"):
        iso_ms("time", "2023-02-09 20:19:35")


def test_ids_that_are_not_digits_get_a_stable_digest():
    assert numeric_id("i", "12345") == 12345
    uuid = "20f43950-d8dd-5b31-9112-a178eb6023af"
    assert numeric_id("i", uuid) == numeric_id("i", uuid) < 2**63
    assert numeric_id("i", uuid) != numeric_id("i", uuid.replace("a", "b"))


# -- OKX: side is the taker's; derivatives count contracts --------------------------------------

def _okx(inst: str, side: str = "buy", sz: str = "1", px: str = "30000", ts: str = "1652459199958") -> str:
    return json.dumps({"arg": {"channel": "trades", "instId": inst},
                       "data": [{"instId": inst, "tradeId": "7849", "px": px, "sz": sz, "side": side, "ts": ts}]})


def test_okx_side_is_the_takers_and_spot_sizes_are_base_units():
    (buy,) = OkxReader().trades(_okx("BTC-USDT", "buy", "0.5"), RECEIVED)
    (sell,) = OkxReader().trades(_okx("BTC-USDT", "sell", "0.5"), RECEIVED)
    assert (buy.side, sell.side) == ("BUY", "SELL")
    assert (buy.quantity, buy.venue_quantity, buy.base, buy.quote, buy.venue) == (0.5, None, "BTC", "USDT", "okx")


def test_okx_contracts_become_base_units_linear_and_inverse():
    reader = OkxReader({
        "BTC-USDT-SWAP": Instrument("BTC-USDT-SWAP", "SWAP", "BTC", "USDT", 0.01, "BTC"),
        "BTC-USD-220527": Instrument("BTC-USD-220527", "FUTURES", "BTC", "USD", 100.0, "USD")})
    (linear,) = reader.trades(_okx("BTC-USDT-SWAP", sz="3"), RECEIVED)
    (inverse,) = reader.trades(_okx("BTC-USD-220527", sz="3", px="30000"), RECEIVED)
    assert math.isclose(linear.quantity, 0.03) and linear.venue_quantity == 3
    assert math.isclose(inverse.quantity, 0.01) and inverse.venue_quantity == 3


def test_okx_contract_without_its_instrument_is_refused_with_what_to_do():
    with pytest.raises(InvalidFrame, match=r"contracts.*instruments"):
        OkxReader().trades(_okx("UNI-USD-SWAP"), RECEIVED)


def test_okx_events_and_other_channels_are_skipped_broken_pushes_refused():
    with pytest.raises(NotATrade):
        OkxReader().trades('{"event":"subscribe","arg":{"channel":"trades","instId":"BTC-USDT"}}', RECEIVED)
    with pytest.raises(NotATrade):
        OkxReader().trades('{"arg":{"channel":"tickers","instId":"BTC-USDT"},"data":[{}]}', RECEIVED)
    with pytest.raises(InvalidFrame, match="px"):
        OkxReader().trades(_okx("BTC-USDT", px="-1"), RECEIVED)
    with pytest.raises(InvalidFrame, match="side"):
        OkxReader().trades(_okx("BTC-USDT", side="up"), RECEIVED)
    with pytest.raises(InvalidFrame, match="future"):
        OkxReader().trades(_okx("BTC-USDT", ts=str(RECEIVED + 3_600_000)), RECEIVED)


# -- Coinbase: side is the maker's ----------------------------------------------------------------

MATCH = {"type": "match", "trade_id": 881613, "maker_order_id": "a", "taker_order_id": "b", "side": "sell",
         "size": "0.04", "price": "14.7775", "product_id": "BAND-GBP", "sequence": 1,
         "time": "2021-04-17T16:43:30.244075Z"}


def test_coinbase_exchange_match_side_is_the_makers():
    (taker_buy,) = CoinbaseReader().trades(json.dumps(MATCH), RECEIVED)
    (taker_sell,) = CoinbaseReader().trades(json.dumps({**MATCH, "side": "buy"}), RECEIVED)
    assert (taker_buy.side, taker_sell.side) == ("BUY", "SELL")
    assert (taker_buy.symbol, taker_buy.base, taker_buy.quote, taker_buy.agg_trade_id) == (
        "BAND-GBP", "BAND", "GBP", 881613)
    assert taker_buy.trade_time_ms == 1618677810244


def test_coinbase_advanced_trade_market_trades_and_heartbeats():
    message = {"channel": "market_trades", "client_id": "", "timestamp": "2023-02-09T20:19:35.39625135Z",
               "sequence_num": 0, "events": [{"type": "snapshot", "trades": [
                   {"trade_id": "12", "product_id": "ETH-USD", "price": "1260.01", "size": "0.3", "side": "BUY",
                    "time": "2023-02-09T20:19:35.265Z"},
                   {"trade_id": "13", "product_id": "ETH-USD", "price": "1260.02", "size": "0.1", "side": "SELL",
                    "time": "2023-02-09T20:19:35.266Z"}]}]}
    first, second = CoinbaseReader().trades(json.dumps(message), RECEIVED)
    assert (first.side, second.side) == ("SELL", "BUY")
    assert (first.agg_trade_id, second.quantity) == (12, 0.1)
    with pytest.raises(NotATrade):
        CoinbaseReader().trades('{"channel":"heartbeats","timestamp":"2023-02-09T20:19:35Z","events":[]}', RECEIVED)
    with pytest.raises(NotATrade):
        CoinbaseReader().trades('{"type":"l2update","product_id":"BTC-USD","changes":[]}', RECEIVED)
    with pytest.raises(InvalidFrame, match="size"):
        CoinbaseReader().trades(json.dumps({**MATCH, "size": "NaN"}), RECEIVED)


# -- Bybit: S is the taker's ------------------------------------------------------------------------

def test_bybit_public_trade_side_is_the_takers_and_replies_are_skipped():
    push = {"topic": "publicTrade.BTCUSDT", "type": "snapshot", "ts": 1672304486868, "data": [
        {"T": 1672304486865, "s": "BTCUSDT", "S": "Buy", "v": "0.001", "p": "16578.50", "L": "PlusTick",
         "i": "20f43950-d8dd-5b31-9112-a178eb6023af", "BT": False},
        {"T": 1672304486866, "s": "BTCUSDT", "S": "Sell", "v": "0.002", "p": "16578.00", "L": "MinusTick",
         "i": "2290000000061666327", "BT": False}]}
    buy, sell = BybitReader("bybit-linear").trades(json.dumps(push), RECEIVED)
    assert (buy.side, sell.side, buy.venue, buy.base, buy.quote) == ("BUY", "SELL", "bybit-linear", "BTC", "USDT")
    assert sell.agg_trade_id == 2290000000061666327
    with pytest.raises(NotATrade):
        BybitReader("bybit-spot").trades('{"success":true,"ret_msg":"pong","conn_id":"x","op":"ping"}', RECEIVED)
    with pytest.raises(NotATrade):
        BybitReader("bybit-spot").trades('{"topic":"orderbook.50.BTCUSDT","ts":1,"data":{}}', RECEIVED)



def test_a_frame_of_several_trades_is_read_whole_and_never_as_one():
    push = json.dumps({"topic": "publicTrade.BTCUSDT", "type": "snapshot", "ts": 1672304486868, "data": [
        {"T": 1672304486865, "s": "BTCUSDT", "S": "Buy", "v": "0.001", "p": "16578.50", "i": "1", "BT": False},
        {"T": 1672304486866, "s": "BTCUSDT", "S": "Sell", "v": "0.002", "p": "16578.00", "i": "2", "BT": False}]})
    letters: list[object] = []
    out = SimpleNamespace(dead_letter=letters.append)
    decoder = FrameDecoder("test", BybitReader("bybit-linear"))
    assert [t.agg_trade_id for t in decoder.trades(push, out)] == [1, 2]
    # The one-trade form (Binance's frames) refuses rather than drop the second trade.
    with pytest.raises(ValueError, match="a frame of 2 trades from bybit-linear"):
        decoder.decode(push, out)
    assert decoder.trades("{not json", out) == [] and decoder.decode("{not json", out) is None and len(letters) == 2

# -- Kraken v2: side is the taker's, numbers for price and size ------------------------------------

KRAKEN_TRADE = {"symbol": "BTC/USD", "side": "sell", "price": 26617.4, "qty": 0.00373, "ord_type": "market",
                "trade_id": 69876211, "timestamp": "2023-09-25T07:49:37.708706Z"}


def _kraken(*trades: dict[str, object], kind: str = "update") -> str:
    return json.dumps({"channel": "trade", "type": kind, "data": list(trades)})


def test_kraken_trade_side_is_the_takers_and_the_symbol_splits_on_its_slash():
    sell, buy = KrakenReader().trades(_kraken(KRAKEN_TRADE, {**KRAKEN_TRADE, "side": "buy", "trade_id": 69876212,
                                                             "price": 26618, "qty": 2}), 1_695_628_178_000)
    assert (sell.side, buy.side) == ("SELL", "BUY")
    assert (sell.symbol, sell.venue, sell.base, sell.quote) == ("BTC/USD", "kraken", "BTC", "USD")
    assert (sell.price, sell.quantity, sell.agg_trade_id, sell.trade_time_ms) == (
        26617.4, 0.00373, 69876211, 1_695_628_177_708)
    assert (buy.price, buy.quantity) == (26618.0, 2.0)  # JSON integers are numbers too
    (snapshot,) = KrakenReader().trades(_kraken(KRAKEN_TRADE, kind="snapshot"), 1_695_628_178_000)
    assert snapshot == sell


@pytest.mark.parametrize("frame", [
    '{"channel":"heartbeat"}',
    '{"channel":"status","type":"update","data":[{"api_version":"v2","system":"online","version":"2.0.0"}]}',
    '{"method":"subscribe","result":{"channel":"trade","snapshot":false,"symbol":"BTC/USD"},"success":true,'
    '"time_in":"2023-09-25T07:49:37.708706Z","time_out":"2023-09-25T07:49:37.708906Z"}',
    '{"method":"pong","time_in":"2023-09-25T07:49:37.708706Z","time_out":"2023-09-25T07:49:37.708906Z"}',
])
def test_kraken_heartbeats_status_and_replies_are_skipped(frame):
    with pytest.raises(NotATrade):
        KrakenReader().trades(frame, RECEIVED)


@pytest.mark.parametrize(("change", "reason"), [
    ({"price": "26617.4"}, "price"),  # a string where Kraken sends a number
    ({"qty": 0}, "qty"),
    ({"price": "1e999"}, "price"),  # written bare below: a JSON number no double holds
    ({"symbol": "BTCUSD"}, "symbol"),
    ({"symbol": "btc/usd"}, "symbol"),
    ({"side": "BUY"}, "side"),
    ({"trade_id": -1}, "trade_id"),
    ({"timestamp": "2023-09-25 07:49:37"}, "timestamp"),
    ({"timestamp": "2016-12-31T23:59:59.999Z"}, "2017"),
])
def test_kraken_broken_trades_are_refused_with_the_field(change, reason):
    frame = _kraken({**KRAKEN_TRADE, **change}).replace('"1e999"', "1e999")
    with pytest.raises(InvalidFrame, match=reason):
        KrakenReader().trades(frame, 1_695_628_178_000)


def test_the_trade_message_carries_venue_asset_quote_and_the_venues_quantity():
    reader = OkxReader({"BTC-USD-220527": Instrument("BTC-USD-220527", "FUTURES", "BTC", "USD", 100.0, "USD")})
    (trade,) = reader.trades(_okx("BTC-USD-220527", sz="3", px="30000"), RECEIVED)
    message = json.loads(encode_trade(trade))
    assert {k: message[k] for k in ("venue", "base_asset", "quote_asset", "venue_quantity", "symbol")} == {
        "venue": "okx", "base_asset": "BTC", "quote_asset": "USD", "venue_quantity": 3.0, "symbol": "BTC-USD-220527"}


def test_instruments_are_for_okx_and_coinm_only_and_must_be_readable(tmp_path):
    with pytest.raises(UsageError, match="okx and binance-coinm only, not coinbase"):
        reader_for("coinbase", instruments=venue_recording(OKX_INSTRUMENTS))
    with pytest.raises(UsageError, match="cannot read"):
        reader_for("okx", instruments=tmp_path / "missing")
    (tmp_path / "junk").write_text('{"code": "0"}\n')
    with pytest.raises(UsageError, match="not a list of OKX instruments"):
        reader_for("okx", instruments=tmp_path / "junk")
    with pytest.raises(UsageError, match="binance-coinm counts contracts: give --instruments FILE"):
        reader_for("binance-coinm")
    with pytest.raises(UsageError, match="not a Binance exchangeInfo reply"):
        reader_for("binance-coinm", instruments=tmp_path / "junk")


def _coinm_frame(symbol: str, q: str, p: str) -> str:
    return json.dumps({"stream": f"{symbol.lower()}@aggTrade", "data": {
        "e": "aggTrade", "E": RECEIVED - 5, "s": symbol, "a": 7, "p": p, "q": q, "f": 9, "l": 9,
        "T": RECEIVED - 10, "m": True}})


def test_coinm_contracts_become_base_units_with_the_listed_contract_size(tmp_path):
    """COIN-M's `q` counts contracts of `contractSize` USD: 3 BTCUSD_PERP contracts (100 USD each) at
    60,000 are 0.005 BTC; the venue's 3 is kept. A symbol exchangeInfo does not size is dead-lettered."""
    info = tmp_path / "exchangeInfo.json"
    info.write_text(json.dumps({"symbols": [{"symbol": "BTCUSD_PERP", "contractStatus": "TRADING",
                                             "contractSize": 100},
                                            {"symbol": "ETHUSD_260327", "contractStatus": "TRADING",
                                             "contractSize": 10}]}))
    reader = reader_for("binance-coinm", instruments=info)
    (btc,) = reader.trades(_coinm_frame("BTCUSD_PERP", "3", "60000"), RECEIVED)
    (eth,) = reader.trades(_coinm_frame("ETHUSD_260327", "4", "2500"), RECEIVED)
    assert (btc.quantity, btc.venue_quantity, btc.base, btc.quote) == (0.005, 3.0, "BTC", "USD")
    assert (eth.quantity, eth.venue_quantity, eth.base, eth.quote) == (0.016, 4.0, "ETH", "USD")
    with pytest.raises(InvalidFrame, match="no contract size for BNBUSD_PERP"):
        reader.trades(_coinm_frame("BNBUSD_PERP", "1", "600"), RECEIVED)


# -- the real recordings, against the independent reader --------------------------------------------

@pytest.mark.parametrize(("name", "venue", "expected"), [
    (BINANCE_US, "binance-us", lambda: binance_us_trades(venue_recording(BINANCE_US))),
    (OKX, "okx", lambda: okx_trades(venue_recording(OKX), venue_recording(OKX_INSTRUMENTS))),
    (COINBASE, "coinbase", lambda: coinbase_trades(venue_recording(COINBASE))),
])
def test_recordings_replay_to_the_reference_trades(name, venue, expected):
    instruments = venue_recording(OKX_INSTRUMENTS) if venue == "okx" else None
    source = ReplaySource(venue_recording(name), venue=venue, instruments=instruments)
    out = _replay(source)
    assert not out.dead_letters, out.dead_letters[:3]
    want = expected()
    assert len(out.trades) == len(want) > 0
    for got, ref in zip(out.trades, want, strict=True):
        assert (got.venue, got.symbol, got.agg_trade_id, got.trade_time_ms) == (venue, ref.symbol, ref.agg_id,
                                                                                ref.time_ms)
        assert math.isclose(got.quantity, float(ref.qty), rel_tol=1e-12)
        assert got.buyer_is_maker == ref.buyer_maker
    assert source.stats.skipped_lines > 0 and source.telemetry().counters["frames_skipped"] > 0


def test_coinbase_snapshot_trades_count_once():
    source = ReplaySource(venue_recording(COINBASE), venue="coinbase")
    out = _replay(source)
    ids = [(t.symbol, t.agg_trade_id) for t in out.trades]
    assert len(ids) == len(set(ids))
