"""The trade contract every venue's wire converts to: shared checks and symbol normalization.

Each venue's decoder (pulse.source.binance.wire, okx.wire, coinbase.wire, bybit.wire) validates its
own message shape with msgspec; what the domain record asks of every venue lives here once:
doubles in range, a trade time not from the future, ids as integers, an asset and a quote.
"""

from __future__ import annotations

import calendar
import hashlib
import math
import re
from collections.abc import Callable
from typing import Annotated, Any, Protocol, TypeVar

import msgspec

from pulse.model import FIRST_TRADE_MS, MAX_AHEAD_MS, SYMBOL_PATTERN, Trade

T = TypeVar("T")


class TradeReader(Protocol):
    """One venue's frames -> trades (pulse.source.venues picks one per venue)."""

    venue: str

    def trades(self, raw: str | bytes, received_ms: int) -> list[Trade]:
        """The trades in one frame; raises NotATrade (skipped) or InvalidFrame (dead-lettered)."""
        ...


class InvalidFrame(ValueError):
    """A frame that cannot become a trade; `reason` is what goes to the dead-letter topic."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotATrade(Exception):
    """A well-formed frame of another stream (depth, tickers, heartbeats, replies): skipped, not an error."""


# A decimal string > 0: digits with at least one non-zero; no sign, exponent, NaN or infinity.
POSITIVE_DECIMAL = r"^(?=[0-9.]*[1-9])[0-9]+(?:\.[0-9]+)?$"
# The wire types every venue's structs use, so decoding checks them.
PositiveDecimal = Annotated[str, msgspec.Meta(pattern=POSITIVE_DECIMAL)]
Symbol = Annotated[str, msgspec.Meta(pattern=SYMBOL_PATTERN)]
TradeTime = Annotated[int, msgspec.Meta(ge=FIRST_TRADE_MS, le=2**63 - 1)]


def positive_double(field: str, text: str) -> float:
    value = float(text)
    if not 0.0 < value < math.inf:  # digits alone can still overflow (inf) or underflow (0.0) a double
        raise InvalidFrame(f"field {field!r}: {text[:24]}{'...' if len(text) > 24 else ''} is not a positive"
                           " finite double")
    return value


def check_not_ahead(field: str, trade_ms: int, event_ms: int, received_ms: int) -> None:
    """A trade time at most MAX_AHEAD_MS after the frame's event time and its receipt: one trade
    from the future would move the watermark past every later one (docs/producer.md)."""
    ahead = trade_ms - min(event_ms, received_ms)
    if ahead > MAX_AHEAD_MS:
        against = "the frame's event time" if received_ms >= event_ms else "its receipt"
        raise InvalidFrame(f"field {field!r}: {ahead:,} ms after {against}, more than {MAX_AHEAD_MS:,} ms: a trade"
                           " from the future would move the watermark")


def numeric_id(field: str, text: str) -> int:
    """A venue's trade id as the contract's integer: digits as they are; any other id (Bybit's
    derivatives send UUIDs) as a stable 63-bit digest, good for deduplication but not for order."""
    if text.isdigit() and len(text) <= 19 and int(text) < 2**63:
        return int(text)
    if not text or len(text) > 64:
        raise InvalidFrame(f"field {field!r}: a trade id of {len(text)} characters")
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") >> 1


_ISO_UTC = re.compile(r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?Z$")


def iso_ms(field: str, text: str) -> int:
    """`2021-04-17T16:43:30.244075Z` (Coinbase, up to nanoseconds) as epoch ms, truncated."""
    match = _ISO_UTC.match(text)
    if match is None:
        raise InvalidFrame(f"field {field!r}: {text[:40]!r} is not an ISO 8601 UTC time")
    year, month, day, hour, minute, second = (int(part) for part in match.groups()[:6])
    try:
        seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    except (ValueError, OverflowError):
        raise InvalidFrame(f"field {field!r}: {text[:40]!r} is not a time") from None
    fraction = (match.group(7) or "0").ljust(3, "0")[:3]
    return seconds * 1000 + int(fraction)


# Quote currencies, longest first, for venues whose symbols glue asset and quote (BTCUSDT).
_QUOTES = ("FDUSD", "USDT", "USDC", "BUSD", "TUSD", "USDP", "DAI", "USD", "EUR", "GBP", "TRY", "BRL", "JPY",
           "AUD", "BTC", "ETH", "BNB")
# Binance's contract suffixes: quarterly `BTCUSDT_260327`, COIN-M perpetual `BTCUSD_PERP`.
_CONTRACT_SUFFIX = re.compile(r"_(?:PERP|\d{6})$")
_CONTRACT_QUOTES = ("USDT", "USDC", "USD")


def split_glued(symbol: str) -> tuple[str, str]:
    """`BTCUSDT` -> (BTC, USDT), `BTCUSD_PERP` -> (BTC, USD); an unknown quote leaves (symbol, "")."""
    pair = _CONTRACT_SUFFIX.sub("", symbol)
    if pair.endswith("PERP"):  # Bybit's USDC perpetuals: BTCPERP
        return pair.removesuffix("PERP"), "USDC"
    # Binance's contracts settle in USDT, USDC or (COIN-M) USD: BATUSD_PERP is BAT / USD, not BA / TUSD.
    for quote in _QUOTES if pair == symbol else _CONTRACT_QUOTES:
        if pair.endswith(quote) and len(pair) > len(quote):
            return pair[: -len(quote)], quote
    return pair, ""


def split_dashed(symbol: str) -> tuple[str, str]:
    """`BTC-USDT`, `BTC-USD-SWAP`, `BTC-USD-220527` (OKX, Coinbase) -> (BTC, USDT) / (BTC, USD)."""
    parts = symbol.split("-")
    return (parts[0], parts[1]) if len(parts) >= 2 else (symbol, "")


# A trade frame is ~250 bytes (a venue batching trades: a few KiB); anything near this is not one,
# and a dead letter carries its head.
MAX_FRAME_BYTES = 1 << 20


def guarded(decode: Callable[[str | bytes], T], raw: str | bytes) -> T:
    """`decode(raw)`, with what any JSON frame can do wrong turned into `InvalidFrame`: too large,
    nested past the decoder's depth, not UTF-8."""
    if len(raw) > MAX_FRAME_BYTES:
        raise InvalidFrame(f"frame of {len(raw):,} bytes, over the {MAX_FRAME_BYTES:,}-byte limit")
    try:
        return decode(raw)
    except RecursionError:
        raise InvalidFrame("not JSON Pulse reads: nested deeper than the decoder follows") from None
    except UnicodeDecodeError as error:
        raise InvalidFrame(f"not UTF-8 text: {error.reason} at byte {error.start}") from None


def validation_reason(error: msgspec.MsgspecError) -> str:
    """msgspec's "Expected `str`, got `int` - at `$.data[0].px`" as "field 'data[0].px': expected ..."."""
    message = str(error)
    text, _, where = message.rpartition(" - at `")
    if not text:
        return f"payload: {message[0].lower()}{message[1:]}" if message else "payload: invalid"
    field = where.rstrip("`").removeprefix("$").lstrip(".")
    if "matching regex" in text:
        text = "must be a decimal string > 0" if "0-9." in text else "does not match the venue's pattern"
    return f"field {field!r}: {text[0].lower()}{text[1:]}"


P = TypeVar("P")


def decoded_data(decoder: msgspec.json.Decoder[P], data: msgspec.Raw) -> P:
    """A push's `data` (OKX, Bybit, Kraken), decoded by the venue's decoder; what is wrong, as InvalidFrame."""
    try:
        return decoder.decode(data)
    except msgspec.ValidationError as error:
        raise InvalidFrame(f"data: {validation_reason(error)}") from None


def push_or_reply(push: msgspec.json.Decoder[P], reply: msgspec.json.Decoder[Any], raw: str | bytes, venue: str) -> P:
    """A venue's data push, decoded; its replies (subscribe acks, pongs) raise NotATrade, anything
    else InvalidFrame with what was wrong."""
    try:
        return push.decode(raw)
    except msgspec.ValidationError:
        pass
    except msgspec.DecodeError as error:
        raise InvalidFrame(f"not JSON: {error}") from None
    try:
        reply.decode(raw)
    except msgspec.DecodeError as error:
        raise InvalidFrame(f"not a {venue} push: {validation_reason(error)}") from None
    raise NotATrade("reply")
