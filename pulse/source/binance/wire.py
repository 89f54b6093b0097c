"""Binance `aggTrade` on the wire: one frozen msgspec struct per message, decoders built once.

A websocket frame of the combined stream (live and in recordings):

    {"stream": "btcusdt@aggTrade",
     "data": {"e": "aggTrade", "E": 1617647797640, "s": "BTCUSDT", "a": 9445517, "p": "0.69067",
              "q": "369", "f": 12821738, "l": 12821738, "T": 1617647797485, "m": true}}

One element of REST `GET /fapi/v1/aggTrades` (no e, E, s):

    {"a": 26129, "p": "0.01633102", "q": "4.70443515", "f": 27781, "l": 27781, "T": 1498793709153, "m": true}

The checks live in the struct types (msgspec validates while it decodes), so decoding is validation:
a frame either becomes a `BinanceAggTrade` or is refused with the field and the reason. Field names
keep Binance's letters. Unknown keys (`M` on spot, `st` on current USD-M frames) are ignored on purpose:
Binance adds fields without notice and rejecting them would turn a schema extension into an outage.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Literal

import msgspec

from pulse.model import FIRST_TRADE_MS, SYMBOL_PATTERN, Trade
from pulse.source.contract import (
    MAX_FRAME_BYTES,
    InvalidFrame,
    NotATrade,
    PositiveDecimal,
    Symbol,
    check_not_ahead,
    guarded,
    positive_double,
    split_glued,
)

__all__ = ["MAX_FRAME_BYTES", "BinanceReader", "InvalidFrame", "NotATrade", "decode_frame", "decode_rest_page",
           "to_trade"]

_INT64_MAX = 2**63 - 1
Id = Annotated[int, msgspec.Meta(ge=0, le=_INT64_MAX)]
EpochMs = Annotated[int, msgspec.Meta(ge=0, le=_INT64_MAX)]
TradeTime = Annotated[int, msgspec.Meta(ge=FIRST_TRADE_MS, le=_INT64_MAX)]

_is_symbol = re.compile(SYMBOL_PATTERN).match


def is_symbol(name: str) -> bool:
    """Whether `name` is spelled as Binance spells symbols (upper case)."""
    return _is_symbol(name) is not None


class BinanceAggTrade(msgspec.Struct, frozen=True):
    e: Literal["aggTrade"]  # event type
    E: EpochMs  # event time (exchange send time)
    s: Symbol  # symbol, e.g. "BTCUSDT"
    a: Id  # aggregate trade id, consecutive per symbol
    p: PositiveDecimal  # price
    q: PositiveDecimal  # quantity (USD-M: includes RPI orders)
    f: Id  # first trade id in the aggregate
    l: Id  # last trade id in the aggregate  # noqa: E741 - Binance's letter
    T: TradeTime  # trade time: the pipeline's event time
    m: bool  # buyer is the maker: true means the taker SOLD
    nq: PositiveDecimal | None = None  # USD-M only: quantity without RPI orders

    def __post_init__(self) -> None:
        if self.l < self.f:
            raise ValueError(f"last trade id {self.l} precedes first trade id {self.f}")


class _Envelope(msgspec.Struct, frozen=True):
    stream: str
    data: msgspec.Raw


class _TradeEnvelope(msgspec.Struct, frozen=True):
    """The frame nearly all traffic is: decoded and checked in one pass."""

    stream: str
    data: BinanceAggTrade


class _Reply(msgspec.Struct, frozen=True):
    """`{"result": null, "id": 1}`: the answer to a SUBSCRIBE request."""

    id: int | str


class RestAggTrade(msgspec.Struct, frozen=True):
    a: Id
    p: PositiveDecimal
    q: PositiveDecimal
    f: Id
    l: Id  # noqa: E741 - Binance's letter
    T: TradeTime
    m: bool


_trade_envelope = msgspec.json.Decoder(_TradeEnvelope)
_envelope = msgspec.json.Decoder(_Envelope)
_agg_trade = msgspec.json.Decoder(BinanceAggTrade)
_reply = msgspec.json.Decoder(_Reply)
_rest_page = msgspec.json.Decoder(list[RestAggTrade])
_any = msgspec.json.Decoder()


def _reason(error: msgspec.MsgspecError) -> str:
    """msgspec's "Expected `int`, got `str` - at `$.a`" as "field 'a': expected `int`, got `str`"."""
    message = str(error)
    text, _, where = message.rpartition(" - at `")
    if not text:
        return f"payload: {message[0].lower()}{message[1:]}"
    field = where.rstrip("`").removeprefix("$").lstrip(".")
    if "matching regex" in text:
        text = ("must be a Binance symbol (A-Z 0-9 _ . -, 1 to 20 long)" if field == "s"
                else "must be a decimal string > 0")
    elif field.endswith("T") and f">= {FIRST_TRADE_MS}" in text:
        text = "trade time before 2017-01-01, earlier than any Binance trade"
    elif f"<= {_INT64_MAX}" in text:
        text = "beyond a 64-bit integer"
    return f"field {field!r}: {text[0].lower()}{text[1:]}"


def _decode_payload(raw: bytes | str | msgspec.Raw) -> BinanceAggTrade:
    try:
        return _agg_trade.decode(raw)
    except msgspec.ValidationError as error:
        raise InvalidFrame(_reason(error)) from None


def decode_frame(raw: str | bytes, default_symbol: str | None = None) -> BinanceAggTrade:
    """One websocket frame: a combined-stream envelope, or a bare aggTrade payload.

    Raises `NotATrade` for frames of other streams and `InvalidFrame` for anything broken.
    `default_symbol` names the symbol of recordings whose payloads carry none.
    """
    return guarded(lambda frame: _decode_frame(frame, default_symbol), raw)


def _decode_frame(raw: str | bytes, default_symbol: str | None) -> BinanceAggTrade:
    if default_symbol is None:
        try:
            return _trade_envelope.decode(raw).data
        except msgspec.DecodeError:
            pass  # anything else takes the path below, which names what it is
    try:
        envelope = _envelope.decode(raw)
    except msgspec.ValidationError:
        envelope = None  # not an envelope: a bare payload, a reply or something broken
    except msgspec.DecodeError as error:
        raise InvalidFrame(f"not JSON: {error}") from None
    if envelope is not None:
        if not envelope.stream.endswith("@aggTrade"):
            raise NotATrade(envelope.stream)
        return _with_symbol(envelope.data, default_symbol)
    try:
        _reply.decode(raw)
    except msgspec.ValidationError:
        return _with_symbol(raw, default_symbol)
    raise NotATrade("subscription reply")


def _with_symbol(raw: bytes | str | msgspec.Raw, default_symbol: str | None) -> BinanceAggTrade:
    if default_symbol is None:
        return _decode_payload(raw)
    # Rare path (recordings without `s`): look before decoding, so the struct still checks everything.
    payload = _any.decode(raw)
    if isinstance(payload, dict) and "s" not in payload:
        payload["s"] = default_symbol.upper()
        return _decode_payload(msgspec.json.encode(payload))
    return _decode_payload(raw)


def decode_rest_page(body: bytes, symbol: str) -> list[BinanceAggTrade]:
    """A REST aggTrades reply as wire records in id order; REST carries no event time, so E = T."""
    if not _is_symbol(symbol):
        raise InvalidFrame(f"symbol {symbol!r} does not match Binance's pattern {SYMBOL_PATTERN}")
    try:
        page = _rest_page.decode(body)
    except msgspec.DecodeError as error:  # ValidationError included
        raise InvalidFrame(f"REST aggTrades reply: {_reason(error)}") from None
    return sorted((BinanceAggTrade(e="aggTrade", E=item.T, s=symbol, a=item.a, p=item.p, q=item.q, f=item.f,
                                   l=item.l, T=item.T, m=item.m) for item in page), key=lambda trade: trade.a)


class ExchangeSymbol(msgspec.Struct, frozen=True):
    """One entry of REST `exchangeInfo.symbols`; the other fields (filters, precisions...) are not read."""

    symbol: str
    status: str | None = None  # spot and USD-M: TRADING, BREAK, SETTLING, ...
    contractStatus: str | None = None  # COIN-M calls its status so
    contractSize: float | None = None  # COIN-M: USD per contract (100 for BTCUSD_*, 10 for most others)


class _ExchangeInfo(msgspec.Struct, frozen=True):
    symbols: list[ExchangeSymbol]


_exchange_info = msgspec.json.Decoder(_ExchangeInfo)


def exchange_symbols(body: bytes) -> list[ExchangeSymbol]:
    """A REST exchangeInfo reply's symbols in the exchange's order; names Binance's pattern refuses are
    left out."""
    try:
        info = _exchange_info.decode(body)
    except msgspec.DecodeError as error:  # ValidationError included
        raise InvalidFrame(f"exchangeInfo reply: {error}") from None
    return [entry for entry in info.symbols if is_symbol(entry.symbol)]


def contract_sizes(symbols: list[ExchangeSymbol]) -> dict[str, float]:
    """COIN-M's exchangeInfo symbols as symbol -> USD per contract (symbols without a size are left out)."""
    return {entry.symbol: entry.contractSize for entry in symbols
            if entry.contractSize is not None and entry.contractSize > 0}


class BinanceReader:
    """Binance's aggTrade frames (every Binance market, and Binance.US, which speaks the same).

    COIN-M counts contracts worth `contractSize` USD each (exchangeInfo, e.g. 100 for BTCUSD_PERP, 10
    for ETHUSD_PERP): `contract_sizes` turns them into base units, q x contractSize / p.
    https://developers.binance.com/docs/derivatives/coin-margined-futures/market-data/rest-api/Exchange-Information
    """

    def __init__(self, venue: str = "binance-usdm", default_symbol: str | None = None,
                 contract_sizes: Mapping[str, float] | None = None) -> None:
        self.venue = venue
        self._default_symbol = default_symbol
        self._contract_sizes = contract_sizes

    def trades(self, raw: str | bytes, received_ms: int) -> list[Trade]:
        return [self.trade(decode_frame(raw, self._default_symbol), received_ms)]

    def trade(self, wire: BinanceAggTrade, received_ms: int) -> Trade:
        """One wire record (websocket or REST) as the domain's trade."""
        if self._contract_sizes is None:
            return to_trade(wire, received_ms, self.venue)
        size = self._contract_sizes.get(wire.s)
        if size is None:
            raise InvalidFrame(f"no contract size for {wire.s}: exchangeInfo does not list it")
        return to_trade(wire, received_ms, self.venue, size)


def to_trade(wire: BinanceAggTrade, ingest_time_ms: int, venue: str = "binance-usdm",
             contract_usd: float | None = None) -> Trade:
    """The one conversion from Binance's wire record to the domain record (the last checks that need
    numbers: doubles in range, a trade time not ahead of the event time or the receipt). Binance.US
    speaks the same frames: `venue` names which Binance it was. `contract_usd`: COIN-M's contract
    size, whose `q` counts contracts (kept as the venue's quantity)."""
    check_not_ahead("T", wire.T, wire.E, ingest_time_ms)
    base, quote = split_glued(wire.s)
    price = positive_double("p", wire.p)
    quantity = positive_double("q", wire.q)
    return Trade(
        symbol=wire.s,
        agg_trade_id=wire.a,
        price=price,
        quantity=quantity if contract_usd is None else quantity * contract_usd / price,
        first_trade_id=wire.f,
        last_trade_id=wire.l,
        trade_time_ms=wire.T,
        event_time_ms=wire.E,
        buyer_is_maker=wire.m,
        ingest_time_ms=ingest_time_ms,
        quantity_no_rpi=positive_double("nq", wire.nq) if wire.nq is not None else None,
        venue=venue,
        base=base,
        quote=quote,
        venue_quantity=None if contract_usd is None else quantity,
    )
