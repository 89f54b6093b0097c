"""Kraken spot trades: the websocket v2 `trade` channel.

Built from Kraken's v2 documentation (https://docs.kraken.com/api/docs/websocket-v2/trade).
Endpoint `wss://ws.kraken.com/v2`; a client subscribes by message:

    {"method": "subscribe", "params": {"channel": "trade", "symbol": ["BTC/USD"], "snapshot": false}}

is answered once per symbol (`{"method": "subscribe", "result": {"channel": "trade", "symbol":
"BTC/USD", "snapshot": false}, "success": true, "time_in": "...", "time_out": "..."}`), and trades
come as:

    {"channel": "trade", "type": "update", "data": [{"symbol": "BTC/USD", "side": "sell",
     "price": 26617.4, "qty": 0.00373, "ord_type": "market", "trade_id": 69876211,
     "timestamp": "2023-09-25T07:49:37.708706Z"}]}

- `side` is the TAKER's side.
- `price` and `qty` are JSON numbers (not strings, unlike the other venues); `qty` is in the base
  currency.
- `trade_id` is "a sequence number, unique per book": ids run without gaps per symbol, so a skipped
  range is a gap. Kraken's REST `Trades` pages by time, not by id: the gap is reported, not filled.
- `type: "snapshot"` (the last 50 trades, only when subscribed with `"snapshot": true`) shares the
  schema: such trades count once, by id.
- The `heartbeat` channel (about once a second) and `status` (on connect) are skipped, as are the
  method replies (acks, `pong` to `{"method": "ping"}`).
- Symbols are Kraken's own (`BTC/USD`, never `XBT` in v2): asset and quote split on the slash.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import msgspec

from pulse.model import FIRST_TRADE_MS, Trade
from pulse.source.contract import (
    InvalidFrame,
    NotATrade,
    check_not_ahead,
    decoded_data,
    guarded,
    iso_ms,
    push_or_reply,
)

KrakenSymbol = Annotated[str, msgspec.Meta(pattern=r"^[.A-Z0-9]{1,12}/[.A-Z0-9]{1,7}$", max_length=20)]
TradeId = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
Positive = Annotated[float, msgspec.Meta(gt=0)]


class KrakenTrade(msgspec.Struct, frozen=True):
    symbol: KrakenSymbol
    side: Literal["buy", "sell"]  # the taker's side
    price: Positive
    qty: Positive  # base currency
    trade_id: TradeId
    timestamp: str  # RFC 3339, microseconds


class _Push(msgspec.Struct, frozen=True):
    channel: str
    type: str = ""
    data: msgspec.Raw = msgspec.Raw(b"null")


class _Reply(msgspec.Struct, frozen=True):
    method: str


_push = msgspec.json.Decoder(_Push)
_reply = msgspec.json.Decoder(_Reply)
_trades = msgspec.json.Decoder(list[KrakenTrade])


class KrakenReader:
    """Kraken v2 frames -> trades."""

    venue = "kraken"

    def trades(self, raw: str | bytes, received_ms: int) -> list[Trade]:
        return guarded(lambda frame: self._trades(frame, received_ms), raw)

    def _trades(self, raw: str | bytes, received_ms: int) -> list[Trade]:
        push = push_or_reply(_push, _reply, raw, "Kraken")
        if push.channel != "trade":
            raise NotATrade(push.channel)  # heartbeat, status
        wires = decoded_data(_trades, push.data)
        return [self._convert(wire, received_ms) for wire in wires]

    def _convert(self, wire: KrakenTrade, received_ms: int) -> Trade:
        for field, value in (("price", wire.price), ("qty", wire.qty)):
            if not math.isfinite(value):  # 1e999 decodes to inf
                raise InvalidFrame(f"field {field!r}: not a finite number")
        trade_ms = iso_ms("timestamp", wire.timestamp)
        if trade_ms < FIRST_TRADE_MS:
            raise InvalidFrame("field 'timestamp': trade time before 2017-01-01, earlier than Pulse reads")
        check_not_ahead("timestamp", trade_ms, trade_ms, received_ms)
        base, quote = wire.symbol.split("/")
        return Trade(symbol=wire.symbol, agg_trade_id=wire.trade_id, price=wire.price, quantity=wire.qty,
                     first_trade_id=wire.trade_id, last_trade_id=wire.trade_id, trade_time_ms=trade_ms,
                     event_time_ms=trade_ms, buyer_is_maker=wire.side == "sell", ingest_time_ms=received_ms,
                     venue=self.venue, base=base, quote=quote)


def subscriptions(symbols: list[str]) -> list[str]:
    """One `trade` subscription for every symbol, without the snapshot of past trades: they would
    reach the job behind its watermark."""
    return [msgspec.json.encode({"method": "subscribe", "params": {"channel": "trade", "symbol": symbols,
                                                                    "snapshot": False}}).decode()]


# Kraken's heartbeats keep a subscribed connection open; a ping now and then is what its docs suggest
# to check the connection from the client's side.
KEEPALIVE = (30.0, '{"method":"ping"}')
