"""Bybit v5 public trades (`publicTrade.{symbol}`), linear contracts and spot.

Built from Bybit's v5 documentation (https://bybit-exchange.github.io/docs/v5/websocket/public/trade).
Endpoints: `wss://stream.bybit.com/v5/public/linear` and `/v5/public/spot`; a client sends
`{"op": "ping"}` every 20 s to keep the connection. A push:

    {"topic": "publicTrade.BTCUSDT", "type": "snapshot", "ts": 1672304486868,
     "data": [{"T": 1672304486865, "s": "BTCUSDT", "S": "Buy", "v": "0.001", "p": "16578.50",
               "L": "PlusTick", "i": "20f43950-d8dd-5b31-9112-a178eb6023af", "BT": false}]}

- `S` is the TAKER's side.
- `v` is in base-coin units on linear (USDT/USDC) contracts and spot.
- `i` is a trade id: digits on spot, a UUID on derivatives. Neither is promised consecutive, so
  trades are deduplicated by id and no gap is detected (docs/venues.md).
Replies (`{"success": true, "op": "subscribe"}`, the pong to a ping) are skipped.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from pulse.model import Trade
from pulse.source.contract import (
    NotATrade,
    PositiveDecimal,
    Symbol,
    TradeTime,
    check_not_ahead,
    decoded_data,
    guarded,
    numeric_id,
    positive_double,
    push_or_reply,
    split_glued,
)


class BybitTrade(msgspec.Struct, frozen=True):
    T: TradeTime  # trade time, ms
    s: Symbol
    S: Literal["Buy", "Sell"]  # the taker's side
    v: PositiveDecimal  # base-coin quantity
    p: PositiveDecimal
    i: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class _Push(msgspec.Struct, frozen=True):
    topic: str
    ts: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
    data: msgspec.Raw


class _Reply(msgspec.Struct, frozen=True):
    op: str


_push = msgspec.json.Decoder(_Push)
_trades = msgspec.json.Decoder(list[BybitTrade])
_reply = msgspec.json.Decoder(_Reply)


class BybitReader:
    """Bybit v5 frames of one category (`bybit-linear` or `bybit-spot`) -> trades."""

    def __init__(self, venue: str) -> None:
        self.venue = venue

    def trades(self, raw: str | bytes, received_ms: int) -> list[Trade]:
        return guarded(lambda frame: self._trades(frame, received_ms), raw)

    def _trades(self, raw: str | bytes, received_ms: int) -> list[Trade]:
        push = push_or_reply(_push, _reply, raw, "Bybit")
        if not push.topic.startswith("publicTrade."):
            raise NotATrade(push.topic)
        wires = decoded_data(_trades, push.data)
        return [self._convert(wire, push.ts, received_ms) for wire in wires]

    def _convert(self, wire: BybitTrade, event_ms: int, received_ms: int) -> Trade:
        check_not_ahead("T", wire.T, event_ms, received_ms)
        ident = numeric_id("i", wire.i)
        base, quote = split_glued(wire.s)
        return Trade(symbol=wire.s, agg_trade_id=ident, price=positive_double("p", wire.p),
                     quantity=positive_double("v", wire.v), first_trade_id=ident, last_trade_id=ident,
                     trade_time_ms=wire.T, event_time_ms=event_ms, buyer_is_maker=wire.S == "Sell",
                     ingest_time_ms=received_ms, venue=self.venue, base=base, quote=quote)


def subscriptions(symbols: list[str]) -> list[str]:
    """`{"op": "subscribe", "args": ["publicTrade.BTCUSDT", ...]}`, ten topics a request (spot's limit)."""
    topics = [f"publicTrade.{s}" for s in symbols]
    return [msgspec.json.encode({"op": "subscribe", "args": topics[i:i + 10]}).decode()
            for i in range(0, len(topics), 10)]


# Bybit drops a connection without a ping for long; it recommends one every 20 s.
KEEPALIVE = (20.0, '{"op":"ping"}')
