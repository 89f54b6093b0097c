"""OKX v5 public `trades` channel, and the instruments that say what a contract is worth.

Built from OKX's API v5 documentation (https://www.okx.com/docs-v5/en/#order-book-trading-market-data-ws-trades-channel
and #public-data-rest-api-get-instruments). A push of the channel (`wss://ws.okx.com:8443/ws/v5/public`):

    {"arg": {"channel": "trades", "instId": "BTC-USD-220527"},
     "data": [{"instId": "BTC-USD-220527", "tradeId": "7849", "px": "30218.8", "sz": "1",
               "side": "buy", "ts": "1652459199958"}]}

- `side` is the TAKER's side ("buy": the taker bought).
- `sz` is in base currency on SPOT, in CONTRACTS on SWAP and FUTURES: one contract is worth
  `ctVal` (× `ctMult`) of `ctValCcy`. A linear contract (BTC-USDT-SWAP: 0.01 BTC) is worth base
  units, an inverse one (BTC-USD-SWAP: 100 USD) quote units, so its base quantity is sz·ctVal/px.
- `tradeId` grows per instrument but is not promised to be consecutive: trades are deduplicated
  by id, gaps are not detected (docs/venues.md).
Replies to `{"op": "subscribe"}` (`{"event": "subscribe", ...}`) and other channels are skipped.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Literal

import msgspec

from pulse.model import FIRST_TRADE_MS, SYMBOL_PATTERN, Trade
from pulse.source.contract import (
    InvalidFrame,
    NotATrade,
    PositiveDecimal,
    check_not_ahead,
    decoded_data,
    guarded,
    numeric_id,
    positive_double,
    push_or_reply,
    split_dashed,
    validation_reason,
)

InstId = Annotated[str, msgspec.Meta(pattern=SYMBOL_PATTERN)]
# `ts` is epoch ms as a string of digits.
MsText = Annotated[str, msgspec.Meta(pattern=r"^[0-9]{13}$")]


class OkxTrade(msgspec.Struct, frozen=True):
    instId: InstId  # OKX's names
    tradeId: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    px: PositiveDecimal
    sz: PositiveDecimal
    side: Literal["buy", "sell"]  # the taker's side
    ts: MsText


class _Arg(msgspec.Struct, frozen=True):
    channel: str
    instId: str | None = None


class _Push(msgspec.Struct, frozen=True):
    arg: _Arg
    data: msgspec.Raw


class _Event(msgspec.Struct, frozen=True):
    event: str


_push = msgspec.json.Decoder(_Push)
_trades = msgspec.json.Decoder(list[OkxTrade])
_event = msgspec.json.Decoder(_Event)


@dataclass(frozen=True, slots=True)
class Instrument:
    """What the instruments endpoint says of one instrument (only what the conversion needs)."""

    inst_id: str
    inst_type: str  # SPOT, SWAP, FUTURES, OPTION, MARGIN
    base: str
    quote: str
    contract_value: float | None  # ctVal times ctMult; None on SPOT
    contract_currency: str  # ctValCcy

    def base_quantity(self, size: float, price: float) -> float:
        if self.contract_value is None:
            return size
        if self.contract_currency == self.base:
            return size * self.contract_value
        return size * self.contract_value / price  # inverse: contracts are worth quote currency


class _RestInstrument(msgspec.Struct, frozen=True):
    instId: str
    instType: str
    baseCcy: str = ""
    quoteCcy: str = ""
    ctVal: str = ""
    ctMult: str = ""
    ctValCcy: str = ""
    uly: str = ""


class _RestReply(msgspec.Struct, frozen=True):
    code: str
    data: list[_RestInstrument]


_rest_reply = msgspec.json.Decoder(_RestReply)


def parse_instruments(bodies: Iterable[str | bytes]) -> dict[str, Instrument]:
    """GET /api/v5/public/instruments replies (one per instType) -> instruments by instId."""
    found: dict[str, Instrument] = {}
    for body in bodies:
        try:
            reply = _rest_reply.decode(body)
        except msgspec.DecodeError as error:
            raise InvalidFrame(f"OKX instruments reply: {validation_reason(error)}") from None
        for item in reply.data:
            base, quote = (item.baseCcy, item.quoteCcy) if item.baseCcy else split_dashed(item.uly or item.instId)
            value = None
            if item.ctVal:
                value = float(item.ctVal) * (float(item.ctMult) if item.ctMult else 1.0)
            found[item.instId] = Instrument(item.instId, item.instType, base, quote, value, item.ctValCcy)
    return found


class MissingInstrument(InvalidFrame):
    """A contract trade whose contract value is unknown: its base quantity cannot be computed."""


class OkxReader:
    """OKX frames -> trades. `instruments` (by instId) convert contracts; spot needs none."""

    venue = "okx"

    def __init__(self, instruments: dict[str, Instrument] | None = None) -> None:
        self.instruments = instruments or {}

    def trades(self, raw: str | bytes, received_ms: int) -> list[Trade]:
        return guarded(lambda frame: self._trades(frame, received_ms), raw)

    def _trades(self, raw: str | bytes, received_ms: int) -> list[Trade]:
        if raw in ("pong", b"pong"):
            raise NotATrade("pong")
        push = push_or_reply(_push, _event, raw, "OKX")
        if push.arg.channel != "trades":
            raise NotATrade(push.arg.channel)
        wires = decoded_data(_trades, push.data)
        return [self._convert(wire, received_ms) for wire in wires]

    def _convert(self, wire: OkxTrade, received_ms: int) -> Trade:
        trade_ms = int(wire.ts)
        if trade_ms < FIRST_TRADE_MS:
            raise InvalidFrame("field 'ts': trade time before 2017-01-01, earlier than any OKX trade")
        check_not_ahead("ts", trade_ms, trade_ms, received_ms)
        price, size = positive_double("px", wire.px), positive_double("sz", wire.sz)
        instrument = self.instruments.get(wire.instId)
        if instrument is None:
            if not wire.instId.endswith(("-SWAP",)) and wire.instId.count("-") == 1:
                base, quote = split_dashed(wire.instId)
                instrument = Instrument(wire.instId, "SPOT", base, quote, None, "")
            else:
                raise MissingInstrument(f"{wire.instId} counts its size in contracts and its contract value is"
                                        " unknown: give the instruments (GET /api/v5/public/instruments)")
        quantity = instrument.base_quantity(size, price)
        ident = numeric_id("tradeId", wire.tradeId)
        return Trade(symbol=wire.instId, agg_trade_id=ident, price=price, quantity=quantity,
                     first_trade_id=ident, last_trade_id=ident, trade_time_ms=trade_ms, event_time_ms=trade_ms,
                     buyer_is_maker=wire.side == "sell", ingest_time_ms=received_ms, venue=self.venue,
                     base=instrument.base, quote=instrument.quote,
                     venue_quantity=size if instrument.contract_value is not None else None)


def subscriptions(symbols: list[str]) -> list[str]:
    """`{"op": "subscribe", "args": [{"channel": "trades", "instId": "BTC-USDT"}, ...]}`, one request."""
    return [msgspec.json.encode({"op": "subscribe",
                                 "args": [{"channel": "trades", "instId": s} for s in symbols]}).decode()]


# OKX closes a connection that pushed nothing for 30 s: the client sends the text "ping" and gets
# "pong" back (a reply the reader skips).
KEEPALIVE = (25.0, "ping")
