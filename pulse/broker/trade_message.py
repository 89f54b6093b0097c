"""The message Pulse publishes to Kafka for each trade: versioned JSON, schema in docs/.

`docs/trade-message.v1.schema.json` is the contract between the producer and the processor;
the Spark job declares the same fields in `pulse.compute.columns.TRADE_MESSAGE_SCHEMA`.
Times are UTC epoch milliseconds; IST or any other zone is a display concern.
"""

from __future__ import annotations

from typing import Literal

import msgspec
import orjson

from pulse.source.binance_schema import Side, Trade

SCHEMA_VERSION: Literal[1] = 1


class TradeMessageV1(msgspec.Struct, frozen=True):
    """The trade message, field for field as in docs/trade-message.v1.schema.json."""

    schema_version: Literal[1]
    symbol: str
    price: float
    quantity: float
    timestamp: int  # trade time T, ms
    side: Side  # taker side
    agg_trade_id: int
    first_trade_id: int
    last_trade_id: int
    event_time: int  # E, ms
    ingest_time: int  # when the producer received the frame, ms
    buyer_is_maker: bool
    quantity_no_rpi: float | None


def trade_to_message(trade: Trade) -> TradeMessageV1:
    return TradeMessageV1(
        schema_version=SCHEMA_VERSION,
        symbol=trade.symbol,
        price=trade.price,
        quantity=trade.quantity,
        timestamp=trade.trade_time_ms,
        side=trade.side,
        agg_trade_id=trade.agg_trade_id,
        first_trade_id=trade.first_trade_id,
        last_trade_id=trade.last_trade_id,
        event_time=trade.event_time_ms,
        ingest_time=trade.ingest_time_ms,
        buyer_is_maker=trade.buyer_is_maker,
        quantity_no_rpi=trade.quantity_no_rpi,
    )


_encode_message = msgspec.json.Encoder().encode


def encode_trade(trade: Trade) -> bytes:
    return _encode_message(trade_to_message(trade))


def encode_dead_letter(raw: str | bytes, reason: str, source: str, received_ms: int) -> bytes:
    """Dead-letter record: the raw payload exactly as received, and why it was refused."""
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    return orjson.dumps(
        {"schema_version": SCHEMA_VERSION, "reason": reason, "source": source,
         "received_at": received_ms, "raw": text}
    )


def encode_gap(symbol: str, first_missing_id: int, last_missing_id: int, reason: str, detected_ms: int) -> bytes:
    """Gap event (docs/gap-event.v1.schema.json): aggregate ids of `symbol` that were never published."""
    return orjson.dumps(
        {"schema_version": SCHEMA_VERSION, "symbol": symbol, "first_missing_id": first_missing_id,
         "last_missing_id": last_missing_id, "missing_count": last_missing_id - first_missing_id + 1,
         "reason": reason, "detected_at": detected_ms}
    )
