"""Parsing of Binance aggTrade frames: every accepted shape, and every way a frame can be wrong."""

from __future__ import annotations

import json

import pytest

from pulse.source.binance_schema import InvalidFrame, NotATrade, parse_frame, to_trade

PAYLOAD = {"e": "aggTrade", "E": 1617647797640, "a": 9445517, "s": "SANDUSDT", "p": "0.69067", "q": "369",
           "f": 12821738, "l": 12821738, "T": 1617647797485, "m": True}


def frame(**changes: object) -> str:
    payload = {**PAYLOAD, **changes}
    return json.dumps({key: value for key, value in payload.items() if value is not ...})


def test_bare_payload_and_envelope_give_the_same_record():
    bare = parse_frame(frame())
    wrapped = parse_frame(json.dumps({"stream": "sandusdt@aggTrade", "data": PAYLOAD}))
    assert bare == wrapped
    assert (bare.s, bare.a, bare.p, bare.q, bare.T, bare.m) == ("SANDUSDT", 9445517, "0.69067", "369",
                                                                1617647797485, True)


def test_conversion_keeps_values_and_maps_maker_flag_to_taker_side():
    trade = to_trade(parse_frame(frame()), ingest_time_ms=42)
    assert trade.side == "SELL"  # m = true: the buyer was the maker, so the taker sold
    assert to_trade(parse_frame(frame(m=False)), 42).side == "BUY"
    assert (trade.price, trade.quantity, trade.trade_time_ms, trade.ingest_time_ms) == (0.69067, 369.0,
                                                                                       1617647797485, 42)


def test_unknown_keys_are_ignored_and_nq_is_kept():
    parsed = parse_frame(frame(M=True, st=0, nq="300", x="whatever"))
    assert parsed.nq == "300"
    assert to_trade(parsed, 0).quantity_no_rpi == 300.0


def test_other_streams_are_not_trades():
    with pytest.raises(NotATrade):
        parse_frame(json.dumps({"stream": "btcusdt@depth@100ms", "data": {"e": "depthUpdate"}}))
    with pytest.raises(NotATrade):
        parse_frame(json.dumps({"result": None, "id": 1}))


def test_default_symbol_fills_in_only_when_missing():
    assert parse_frame(frame(s=...), default_symbol="btcusdt").s == "BTCUSDT"
    assert parse_frame(frame(), default_symbol="BTCUSDT").s == "SANDUSDT"


@pytest.mark.parametrize(("raw", "reason"), [
    ("not json", "not JSON"),
    ("[1, 2]", "payload must be a JSON object"),
    (frame(e="trade"), "unknown event type"),
    (frame(s=...), "field 's'"),
    (frame(s=""), "field 's'"),
    (frame(p="abc"), "field 'p' is not a number"),
    (frame(p=1.5), "field 'p' must be a decimal string"),
    (frame(p="0"), "field 'p' must be finite and > 0"),
    (frame(q="-1"), "field 'q' must be finite and > 0"),
    (frame(q="NaN"), "field 'q' must be finite and > 0"),
    (frame(q="inf"), "field 'q' must be finite and > 0"),
    (frame(a="1"), "field 'a' must be an integer"),
    (frame(a=True), "field 'a' must be an integer"),
    (frame(T=...), "field 'T' must be an integer"),
    (frame(T=-5), "field 'T' must be >= 0"),
    (frame(m="true"), "field 'm' must be a boolean"),
    (frame(f=10, l=9), "last trade id 9 precedes first trade id 10"),
    (frame(nq="0"), "field 'nq' must be finite and > 0"),
    (json.dumps({"stream": "x@aggTrade", "data": "oops"}), "payload must be a JSON object"),
])
def test_malformed_frames_are_refused_with_a_reason(raw, reason):
    with pytest.raises(InvalidFrame) as refused:
        parse_frame(raw)
    assert reason in refused.value.reason
