"""Parsing of Binance aggTrade frames: every accepted shape, and every way a frame can be wrong."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from pulse.model import DeadLetter
from pulse.source.base import FrameDecoder
from pulse.source.binance.wire import InvalidFrame, NotATrade, decode_frame, to_trade

PAYLOAD = {"e": "aggTrade", "E": 1617647797640, "a": 9445517, "s": "SANDUSDT", "p": "0.69067", "q": "369",
           "f": 12821738, "l": 12821738, "T": 1617647797485, "m": True}


def frame(**changes: object) -> str:
    payload = {**PAYLOAD, **changes}
    return json.dumps({key: value for key, value in payload.items() if value is not ...})


def test_bare_payload_and_envelope_give_the_same_record():
    bare = decode_frame(frame())
    wrapped = decode_frame(json.dumps({"stream": "sandusdt@aggTrade", "data": PAYLOAD}))
    assert bare == wrapped
    assert (bare.s, bare.a, bare.p, bare.q, bare.T, bare.m) == ("SANDUSDT", 9445517, "0.69067", "369",
                                                                1617647797485, True)


def test_conversion_keeps_values_and_maps_maker_flag_to_taker_side():
    trade = to_trade(decode_frame(frame()), ingest_time_ms=1617647797700)
    assert trade.side == "SELL"  # m = true: the buyer was the maker, so the taker sold
    assert to_trade(decode_frame(frame(m=False)), 1617647797700).side == "BUY"
    assert (trade.price, trade.quantity, trade.trade_time_ms, trade.ingest_time_ms) == (0.69067, 369.0,
                                                                                       1617647797485, 1617647797700)


def test_unknown_keys_are_ignored_and_nq_is_kept():
    parsed = decode_frame(frame(M=True, st=0, nq="300", x="whatever"))
    assert parsed.nq == "300"
    assert to_trade(parsed, 1617647797700).quantity_no_rpi == 300.0


def test_other_streams_are_not_trades():
    with pytest.raises(NotATrade):
        decode_frame(json.dumps({"stream": "btcusdt@depth@100ms", "data": {"e": "depthUpdate"}}))
    with pytest.raises(NotATrade):
        decode_frame(json.dumps({"result": None, "id": 1}))


def test_default_symbol_fills_in_only_when_missing():
    assert decode_frame(frame(s=...), default_symbol="btcusdt").s == "BTCUSDT"
    assert decode_frame(frame(), default_symbol="BTCUSDT").s == "SANDUSDT"


@pytest.mark.parametrize(("raw", "reason"), [
    ("not json", "not JSON"),
    ("[1, 2]", "payload: expected `object`, got `array`"),
    (frame(e="trade"), "field 'e': invalid enum value 'trade'"),
    (frame(e=...), "missing required field `e`"),
    (frame(s=...), "missing required field `s`"),
    (frame(s=""), "field 's': must be a Binance symbol"),
    (frame(s="BTC USDT"), "field 's': must be a Binance symbol"),
    (frame(p="abc"), "field 'p': must be a decimal string > 0"),
    (frame(p=1.5), "field 'p': expected `str`, got `float`"),
    (frame(p="0"), "field 'p': must be a decimal string > 0"),
    (frame(p="0.000"), "field 'p': must be a decimal string > 0"),
    (frame(q="-1"), "field 'q': must be a decimal string > 0"),
    (frame(q="NaN"), "field 'q': must be a decimal string > 0"),
    (frame(q="inf"), "field 'q': must be a decimal string > 0"),
    (frame(q="1e5"), "field 'q': must be a decimal string > 0"),
    (frame(a="1"), "field 'a': expected `int`, got `str`"),
    (frame(a=True), "field 'a': expected `int`, got `bool`"),
    (frame(T=...), "missing required field `T`"),
    (frame(T=-5), "field 'T': trade time before 2017-01-01"),
    (frame(T=1_400_000_000_000), "field 'T': trade time before 2017-01-01"),
    (frame(T=2**70), "field 'T': beyond a 64-bit integer"),
    (frame(m="true"), "field 'm': expected `bool`, got `str`"),
    (frame(f=10, l=9), "last trade id 9 precedes first trade id 10"),
    (frame(nq="0"), "field 'nq': must be a decimal string > 0"),
    (json.dumps({"stream": "x@aggTrade", "data": "oops"}), "payload: expected `object`, got `str`"),
])
def test_malformed_frames_are_refused_with_a_reason(raw, reason):
    with pytest.raises(InvalidFrame) as refused:
        decode_frame(raw)
    assert reason in refused.value.reason


@pytest.mark.parametrize("symbol", ["BTCUSDT", "BTCUSDT_260327", "BTCUSD_PERP", "ETHUSD_260327", "1000PEPEUSDT"])
def test_binance_symbols_of_every_market_are_accepted(symbol):
    assert decode_frame(frame(s=symbol)).s == symbol


HOSTILE = [
    ("1" + "0" * 400, "p", "is not a positive finite double"),
    ("0." + "0" * 400 + "1", "p", "is not a positive finite double"),
    ("NaN", "q", "must be a decimal string > 0"),
    ("-Infinity", "q", "must be a decimal string > 0"),
    ("0", "q", "must be a decimal string > 0"),
]


@pytest.mark.parametrize(("value", "field", "reason"), HOSTILE)
def test_decimals_that_no_double_holds_are_dead_lettered(value, field, reason):
    _refused(frame(**{field: value}), f"field '{field}'", reason)


@pytest.mark.parametrize(("changes", "reason"), [
    ({"T": 4102444800000, "E": 4102444800000}, "after its receipt"),  # year 2100, both stamps
    ({"T": 1617647797485 + 120_000}, "after the frame's event time"),
    ({"T": 2**70}, "beyond a 64-bit integer"),
    ({"T": 1_000}, "before 2017-01-01"),
    ({"m": "true"}, "field 'm': expected `bool`"),
    ({"s": "BTC'USDT"}, "field 's': must be a Binance symbol"),
    ({"s": "BTC\u0000USDT"}, "field 's': must be a Binance symbol"),
    ({"s": "A" * 10_000}, "field 's': must be a Binance symbol"),
])
def test_times_sides_and_symbols_no_trade_has_are_dead_lettered(changes, reason):
    _refused(frame(**changes), reason)


def test_deep_invalid_and_huge_frames_are_dead_lettered_with_what_fits():
    _refused('{"a":' * 100_000 + "1" + "}" * 100_000, "nested deeper than the decoder follows")
    _refused(b'{"stream": "btcusdt@aggTrade", "data": {"s": "\xff\xfe"}}', "not UTF-8 text")
    letter = _refused(frame(x="a" * 3_000_000), "over the 1,048,576-byte limit")
    assert len(letter.raw) == 4096, "a huge frame's dead letter keeps its head"


def _refused(raw: str | bytes, *reasons: str) -> DeadLetter:
    letters: list[DeadLetter] = []
    out = SimpleNamespace(dead_letter=letters.append, trade=None, gap=None)
    assert FrameDecoder("test").decode(raw, out, None) is None
    (letter,) = letters
    assert all(reason in letter.reason for reason in reasons), letter.reason
    return letter
