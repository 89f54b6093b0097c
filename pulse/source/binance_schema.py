"""Binance USD-M / spot `aggTrade` wire schema, typed once, and its one conversion to `Trade`.

Field names keep Binance's letters so a frame can be checked against the exchange's docs by eye.
Unknown keys (`M` on spot, `st` on current USD-M frames) are ignored on purpose: Binance adds
fields without notice and a parser that rejects them would turn a schema extension into an outage.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import msgspec
import orjson

Side = Literal["BUY", "SELL"]


class InvalidFrame(ValueError):
    """A frame that cannot become a trade; `reason` is what goes to the dead-letter topic."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotATrade(Exception):
    """A well-formed frame of another stream (depth, bookTicker, kline...): skipped, not an error."""


class BinanceAggTrade(msgspec.Struct, frozen=True):
    e: str  # event type, always "aggTrade"
    E: int  # event time, ms since epoch (exchange send time)
    s: str  # symbol, upper case, e.g. "BTCUSDT"
    a: int  # aggregate trade id, consecutive per symbol
    p: str  # price, decimal string
    q: str  # quantity, decimal string (USD-M: includes RPI orders)
    f: int  # first trade id in the aggregate
    l: int  # last trade id in the aggregate  # noqa: E741 - Binance's letter
    T: int  # trade time, ms since epoch (event time of the pipeline)
    m: bool  # buyer is the maker: true means the taker SOLD
    nq: str | None = None  # USD-M only: quantity without RPI orders


class Trade(msgspec.Struct, frozen=True):
    """The domain record every stage after the source works with."""

    symbol: str
    agg_trade_id: int
    price: float
    quantity: float
    first_trade_id: int
    last_trade_id: int
    trade_time_ms: int
    event_time_ms: int
    buyer_is_maker: bool
    ingest_time_ms: int
    quantity_no_rpi: float | None = None

    @property
    def side(self) -> Side:
        return "SELL" if self.buyer_is_maker else "BUY"


_INT_FIELDS = ("E", "a", "f", "l", "T")
_DECIMAL_FIELDS = ("p", "q")


def _require_int(payload: dict[str, Any], key: str) -> int:
    value = payload.get(key)
    # bool is an int subclass in Python; a JSON true is not an id.
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidFrame(f"field {key!r} must be an integer, got {type(value).__name__}")
    if value < 0:
        raise InvalidFrame(f"field {key!r} must be >= 0, got {value}")
    return value


def _require_positive_decimal(payload: dict[str, Any], key: str) -> str:
    value = payload.get(key)
    if not isinstance(value, str):
        raise InvalidFrame(f"field {key!r} must be a decimal string, got {type(value).__name__}")
    try:
        number = float(value)
    except ValueError:
        raise InvalidFrame(f"field {key!r} is not a number: {value[:40]!r}") from None
    if not math.isfinite(number) or number <= 0:
        raise InvalidFrame(f"field {key!r} must be finite and > 0, got {value[:40]!r}")
    return value


def agg_trade_from_payload(payload: Any, default_symbol: str | None = None) -> BinanceAggTrade:
    """Validate one aggTrade payload (the `data` object of a combined-stream frame).

    `default_symbol` names the symbol of recordings whose payloads carry none.
    """
    # Fast path for the well-formed frames that make up nearly all traffic: the same rules as
    # `_checked_agg_trade` in one expression (it halves the producer's per-frame CPU); anything
    # it does not accept goes through the field-by-field checks, which name the reason.
    if type(payload) is dict:
        get = payload.get
        event_time, agg_id, first_id, last_id, trade_time = get("E"), get("a"), get("f"), get("l"), get("T")
        price, quantity, maker, symbol = get("p"), get("q"), get("m"), get("s", default_symbol)
        if (get("e") == "aggTrade" and get("nq") is None and type(maker) is bool
                and type(event_time) is int and type(agg_id) is int and type(first_id) is int
                and type(last_id) is int and type(trade_time) is int
                and event_time >= 0 and agg_id >= 0 and trade_time >= 0 and 0 <= first_id <= last_id
                and type(symbol) is str and symbol.isalnum() and type(price) is str and type(quantity) is str):
            try:
                price_value, quantity_value = float(price), float(quantity)
            except ValueError:
                pass
            else:
                # NaN fails both comparisons, so it falls through too.
                if 0 < price_value < math.inf and 0 < quantity_value < math.inf:
                    return BinanceAggTrade(e="aggTrade", E=event_time, s=symbol.upper(), a=agg_id, p=price,
                                           q=quantity, f=first_id, l=last_id, T=trade_time, m=maker)
    return _checked_agg_trade(payload, default_symbol)


def _checked_agg_trade(payload: Any, default_symbol: str | None) -> BinanceAggTrade:
    if not isinstance(payload, dict):
        raise InvalidFrame(f"payload must be a JSON object, got {type(payload).__name__}")
    event = payload.get("e")
    if event != "aggTrade":
        raise InvalidFrame(f"unknown event type {event!r}")
    symbol = payload.get("s", default_symbol)
    if not isinstance(symbol, str) or not symbol or not symbol.isalnum():
        raise InvalidFrame(f"field 's' must be a non-empty alphanumeric symbol, got {symbol!r}")
    maker = payload.get("m")
    if not isinstance(maker, bool):
        raise InvalidFrame(f"field 'm' must be a boolean, got {type(maker).__name__}")
    ints = {key: _require_int(payload, key) for key in _INT_FIELDS}
    decimals = {key: _require_positive_decimal(payload, key) for key in _DECIMAL_FIELDS}
    nq = payload.get("nq")
    if nq is not None:
        nq = _require_positive_decimal(payload, "nq")
    if ints["l"] < ints["f"]:
        raise InvalidFrame(f"last trade id {ints['l']} precedes first trade id {ints['f']}")
    return BinanceAggTrade(
        e=event, s=symbol.upper(), m=maker, nq=nq, **ints, **decimals  # type: ignore[arg-type]
    )


def parse_frame(raw: str | bytes, default_symbol: str | None = None) -> BinanceAggTrade:
    """Parse a websocket frame: a bare aggTrade payload or a combined-stream envelope.

    Raises `NotATrade` for frames of other streams and `InvalidFrame` for anything broken.
    """
    try:
        message = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise InvalidFrame(f"not JSON: {error}") from None
    if isinstance(message, dict) and "stream" in message and "data" in message:
        stream = message["stream"]
        if isinstance(stream, str) and not stream.endswith("@aggTrade"):
            raise NotATrade(stream)
        message = message["data"]
    elif isinstance(message, dict) and "result" in message and "id" in message:
        raise NotATrade("subscription reply")
    return agg_trade_from_payload(message, default_symbol)


def to_trade(wire: BinanceAggTrade, ingest_time_ms: int) -> Trade:
    """The one conversion from Binance's wire record to the domain record."""
    return Trade(
        symbol=wire.s,
        agg_trade_id=wire.a,
        price=float(wire.p),
        quantity=float(wire.q),
        first_trade_id=wire.f,
        last_trade_id=wire.l,
        trade_time_ms=wire.T,
        event_time_ms=wire.E,
        buyer_is_maker=wire.m,
        ingest_time_ms=ingest_time_ms,
        quantity_no_rpi=float(wire.nq) if wire.nq is not None else None,
    )


def agg_trade_from_rest(item: Any, symbol: str) -> BinanceAggTrade:
    """One element of REST `GET /fapi/v1/aggTrades` (keys a,p,q,f,l,T,m; no e/E/s) as a wire record.

    REST carries no event time, so `E` is the trade time: the trade was never "sent" live.
    """
    if not isinstance(item, dict):
        raise InvalidFrame(f"REST aggTrade must be a JSON object, got {type(item).__name__}")
    return agg_trade_from_payload({**item, "e": "aggTrade", "E": item.get("T"), "s": symbol})
