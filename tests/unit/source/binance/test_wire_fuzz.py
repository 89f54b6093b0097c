"""Fuzzing the frame path with hypothesis: whatever arrives, the parser either returns a valid trade
or refuses it with a reason (InvalidFrame) or skips it (NotATrade) - never anything else - and
the router sends every refused frame to the dead-letter queue, counted, without raising."""

from __future__ import annotations

import asyncio
import json
import math
import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pulse.broker.kafka_publisher import DropOldestQueue
from pulse.model import SYMBOL_PATTERN
from pulse.producer import Router
from pulse.settings import KafkaSettings
from pulse.source.base import FrameDecoder
from pulse.source.binance.wire import InvalidFrame, NotATrade, decode_frame
from tests.support.frame_strategies import REQUIRED, VALID, broken_frames

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=10,
)


def _check(raw: str | bytes) -> str:
    """Parse; returns 'trade', 'skip' or 'invalid' and checks the invariants of an accepted trade."""
    try:
        wire = decode_frame(raw)
    except InvalidFrame as invalid:
        assert invalid.reason
        return "invalid"
    except NotATrade:
        return "skip"
    assert wire.e == "aggTrade" and re.match(SYMBOL_PATTERN, wire.s)
    for number in (wire.p, wire.q):
        assert math.isfinite(float(number)) and float(number) > 0
    assert min(wire.E, wire.a, wire.f, wire.l, wire.T) >= 0 and wire.l >= wire.f
    assert isinstance(wire.m, bool)
    return "trade"


@settings(max_examples=3000, deadline=None)
# Long inputs too: hostile frames are rarely short.
@given(st.binary(max_size=20_000) | st.text(max_size=20_000))
def test_arbitrary_bytes_and_text_never_crash_the_parser(raw: bytes | str) -> None:
    _check(raw)


@settings(max_examples=3000, deadline=None)
@given(json_values)
def test_arbitrary_json_never_crashes_the_parser(value: Any) -> None:
    _check(json.dumps(value))


@settings(max_examples=3000, deadline=None)
@given(broken_frames())
def test_every_broken_field_is_refused_with_a_reason(raw: str) -> None:
    assert _check(raw) == "invalid", raw


@settings(max_examples=500, deadline=None)
@given(st.lists(broken_frames() | st.text(max_size=50), min_size=1, max_size=20))
def test_router_sends_every_refused_frame_to_the_dead_letter_queue(frames: list[str]) -> None:
    async def scenario() -> None:
        kafka = KafkaSettings(trades_topic="t", dead_letter_topic="dlq")
        queue = DropOldestQueue(10_000)
        router = Router(kafka, queue)
        decoder = FrameDecoder("fuzz")
        outcomes = [_check(raw) for raw in frames]
        for raw in frames:
            trade = decoder.decode(raw, router)
            if trade is not None:
                router.trade(trade)
        records = await queue.take(10_000) if len(queue) else []
        dead = [json.loads(r.value) for r in records if r.topic == "dlq"]
        assert [d["raw"] for d in dead] == [raw for raw, o in zip(frames, outcomes, strict=True) if o == "invalid"]
        assert all(d["reason"] for d in dead)
        assert router.invalid == len(dead)
        assert router.trades == outcomes.count("trade")

    asyncio.run(scenario())


field_values = st.one_of(
    st.integers(min_value=-2, max_value=2**63), st.booleans(), st.none(), st.floats(),
    st.sampled_from(["0.5", "1", "0", "-1", "nan", "inf", "1e999", " 2 ", "", "BTCUSDT", "btc", "aggTrade", "x!"]),
)


@settings(max_examples=3000, deadline=None)
@given(st.dictionaries(st.sampled_from([*REQUIRED, "nq", "M"]), field_values, max_size=12))
def test_bare_and_enveloped_payloads_are_judged_alike(changes: dict[str, Any]) -> None:
    """The one-pass envelope decode is an optimisation only: same record, or the same refusal."""
    payload = {**VALID, **changes}
    outcomes: list[object] = []
    for raw in (json.dumps({"stream": "btcusdt@aggTrade", "data": payload}), json.dumps(payload)):
        try:
            outcomes.append(decode_frame(raw))
        except InvalidFrame as refused:
            # A JSON syntax error is reported at its byte offset, which the envelope shifts.
            outcomes.append(refused.reason.split(" (byte ")[0])
    assert outcomes[0] == outcomes[1]
