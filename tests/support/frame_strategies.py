"""Hypothesis strategies for broken Binance frames, shared by the unit and integration fuzz tests."""

from __future__ import annotations

import json

from hypothesis import strategies as st

VALID = {"e": "aggTrade", "E": 1617647797640, "a": 9445517, "s": "SANDUSDT", "p": "0.69067", "q": "369",
         "f": 12821738, "l": 12821738, "T": 1617647797485, "m": True}
REQUIRED = ("e", "E", "s", "a", "p", "q", "f", "l", "T", "m")


@st.composite
def broken_frames(draw: st.DrawFn) -> str:
    """A real frame with one field removed, retyped or made out of range: always invalid."""
    payload = dict(VALID)
    key = draw(st.sampled_from(REQUIRED))
    how = draw(st.sampled_from(["drop", "retype", "range"]))
    if how == "drop" and key != "s":  # a missing symbol can be filled from a default one
        del payload[key]
    elif key in ("p", "q"):
        # Floats: a JSON number where Binance sends a decimal string.
        payload[key] = draw(st.sampled_from(["0", "-1", "nan", "inf", "", "abc", "1e999"]) | st.floats())
    elif key in ("E", "a", "f", "T", "l"):
        payload[key] = draw(st.integers(max_value=-1) | st.text(max_size=5) | st.floats() | st.booleans())
    elif key == "m":
        payload[key] = draw(st.integers() | st.text(max_size=3) | st.none())
    elif key == "e":
        payload[key] = draw(st.text(max_size=10).filter(lambda text: text != "aggTrade"))
    else:
        payload[key] = draw(st.sampled_from(["", "BTC/USDT", "btc usdt", "A" * 21, None, 5]))
    envelope = draw(st.booleans())
    document = {"stream": "sandusdt@aggTrade", "data": payload} if envelope else payload
    return json.dumps(document, allow_nan=True)
