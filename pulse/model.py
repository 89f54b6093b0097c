"""The domain records and the wire contract of Pulse, each defined once.

- `Trade`: one aggregate trade, as every stage after the source sees it.
- `Gap`: aggregate ids of a symbol that the live source never saw (yet).
- `WindowUpdateV1`, `RejectV1`: what the Spark job publishes in Real-Time Mode for the store
  writer (Spark writes them with `to_json`; `pulse.compute.columns` derives the columns from here).
- `TradeMessageV1`, `DeadLetterV1`, `GapEventV1`: what the producer publishes to Kafka. These
  msgspec structs ARE the contract: docs/*.v1.schema.json and the Spark read schema
  (`pulse.compute.columns.TRADE_MESSAGE_SCHEMA`, derived from `TradeMessageV1`) are checked
  against them field by field in the tests.
Times are UTC epoch milliseconds; any other zone is a display concern.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

import msgspec

Side = Literal["BUY", "SELL"]
SCHEMA_VERSION: Literal[1] = 1


# The trade contract's bounds, checked by the producer (pulse.source.binance.wire) and again by the
# job for anything else that writes to the trades topic (pulse.compute.columns); docs/producer.md.
# Binance's own symbol rule: quarterly USD-M contracts are `BTCUSDT_260327`, COIN-M ones `BTCUSD_PERP`.
SYMBOL_PATTERN = r"^[A-Z0-9_.\-]{1,20}$"
# A trade's symbol, whatever its venue: those names, or a pair with one slash (Kraken's `BTC/USD`).
TRADE_SYMBOL_PATTERN = r"^(?=.{1,20}$)[A-Z0-9_.\-]+(/[A-Z0-9_.\-]+)?$"
SYMBOL_RULE = "a symbol (A-Z 0-9 _ . -, 1 to 20 long)"
PAIR_RULE = "a pair BASE/QUOTE (A-Z 0-9 _ . - on each side of one slash, 1 to 20 long)"
# Binance opened in July 2017: a trade stamped earlier is a broken clock or field, not history.
FIRST_TRADE_MS = 1_483_228_800_000  # 2017-01-01T00:00:00Z
# A trade may be stamped at most this far after its frame's event time, its receipt or its Kafka time
# (clocks drift, a little): one trade from the future would move the watermark past every later one.
MAX_AHEAD_MS = 60_000
# A trade message is ~300 characters; a Kafka value far larger is something else.
MAX_MESSAGE_CHARS = 65_536


class Signal(StrEnum):
    STRONG_BUY = "STRONG BUY"
    STRONG_SELL = "STRONG SELL"
    ACCUMULATING = "ACCUMULATING"
    DISTRIBUTING = "DISTRIBUTING"
    NEUTRAL = "NEUTRAL"


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
    # Where it traded (pulse.source.venues) and what: `symbol` is the venue's own name, base/quote the
    # normalized asset and quote (`BTC-USD-SWAP` -> BTC / USD). `quantity` is in base-asset units;
    # `venue_quantity` is the venue's own number when it counts otherwise (contracts).
    venue: str = "binance-usdm"
    base: str = ""
    quote: str = ""
    venue_quantity: float | None = None

    @property
    def side(self) -> Side:
        # Binance's `m`: the buyer is the maker, so the taker (who moved the price) SOLD.
        return "SELL" if self.buyer_is_maker else "BUY"


class Gap(msgspec.Struct, frozen=True):
    symbol: str
    first_missing_id: int
    last_missing_id: int

    @property
    def size(self) -> int:
        return self.last_missing_id - self.first_missing_id + 1


class DeadLetter(msgspec.Struct, frozen=True):
    """A frame that could not become a trade: kept whole, with the reason, never dropped."""

    raw: str | bytes
    reason: str
    source: str
    received_ms: int


class GapEvent(msgspec.Struct, frozen=True):
    """Ids the live source gave up on (REST could not return them), published for consumers."""

    gap: Gap
    reason: str
    detected_ms: int


class TradeMessageV1(msgspec.Struct, frozen=True):
    """The trade message on the trades topic (key = symbol)."""

    schema_version: Literal[1]
    symbol: str
    price: float
    quantity: float
    timestamp: int  # trade time T, ms: the pipeline's event time
    side: Side  # taker side
    agg_trade_id: int
    first_trade_id: int
    last_trade_id: int
    event_time: int  # E, ms
    ingest_time: int  # when the producer received the frame, ms
    buyer_is_maker: bool
    quantity_no_rpi: float | None
    # Added with venues (optional, so messages without them still read): the venue, the normalized
    # asset and quote, and the venue's own quantity where it counts in contracts.
    venue: str | None = None
    base_asset: str | None = None
    quote_asset: str | None = None
    venue_quantity: float | None = None


class DeadLetterV1(msgspec.Struct, frozen=True):
    """The record on the dead-letter topic: the raw payload exactly as received, and why."""

    schema_version: Literal[1]
    reason: str
    source: str
    received_at: int
    raw: str


class GapEventV1(msgspec.Struct, frozen=True):
    """The record on the gaps topic: aggregate ids of `symbol` that were never published."""

    schema_version: Literal[1]
    symbol: str
    first_missing_id: int
    last_missing_id: int
    missing_count: int
    reason: str
    detected_at: int


class WindowUpdateV1(msgspec.Struct, frozen=True):
    """A window's newest state, on the metrics topic (key = `venue|symbol|window_start_ms`).

    Real-Time Mode emits one per valid trade: the whole window as it stands after that trade.
    `{"venue":"binance-usdm","symbol":"BTCUSDT","window_start_ms":1735689600000,"window_end_ms":1735689601000,"vwap":93512.4,
    ...,"trade_count":12,...,"max_trade_time_ms":1735689600987}`
    """

    venue: str
    symbol: str
    base_asset: str
    quote_asset: str
    window_start_ms: int
    window_end_ms: int
    vwap: float
    net_delta: float
    buy_pressure_pct: float
    total_volume: float
    trade_count: int
    avg_price_1_sec: float
    signal: str
    open: float
    high: float
    low: float
    close: float
    buy_volume: float
    sell_volume: float
    quote_volume: float
    first_agg_trade_id: int
    last_agg_trade_id: int
    expected_trade_count: int
    avg_ingest_latency_ms: float
    max_ingest_latency_ms: float
    avg_trade_time_ms: float
    min_trade_time_ms: int
    max_trade_time_ms: int


class RejectV1(msgspec.Struct, frozen=True):
    """A message the job refused, on the rejects topic (key = `topic|partition|offset`)."""

    topic: str
    partition: int
    offset: int
    kafka_time_ms: int
    reason: str
    raw_value: str


_encode = msgspec.json.Encoder().encode


def encode_trade(trade: Trade) -> bytes:
    return _encode(TradeMessageV1(
        schema_version=SCHEMA_VERSION, symbol=trade.symbol, price=trade.price, quantity=trade.quantity,
        timestamp=trade.trade_time_ms, side=trade.side, agg_trade_id=trade.agg_trade_id,
        first_trade_id=trade.first_trade_id, last_trade_id=trade.last_trade_id, event_time=trade.event_time_ms,
        ingest_time=trade.ingest_time_ms, buyer_is_maker=trade.buyer_is_maker,
        quantity_no_rpi=trade.quantity_no_rpi, venue=trade.venue, base_asset=trade.base or None,
        quote_asset=trade.quote or None, venue_quantity=trade.venue_quantity,
    ))


def encode_dead_letter(letter: DeadLetter) -> bytes:
    raw = letter.raw.decode("utf-8", errors="replace") if isinstance(letter.raw, bytes) else letter.raw
    return _encode(DeadLetterV1(schema_version=SCHEMA_VERSION, reason=letter.reason, source=letter.source,
                                received_at=letter.received_ms, raw=raw))


def encode_gap_event(event: GapEvent) -> bytes:
    gap = event.gap
    return _encode(GapEventV1(schema_version=SCHEMA_VERSION, symbol=gap.symbol,
                              first_missing_id=gap.first_missing_id, last_missing_id=gap.last_missing_id,
                              missing_count=gap.size, reason=event.reason, detected_at=event.detected_ms))
