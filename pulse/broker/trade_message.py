"""The message Pulse publishes to Kafka for each trade: versioned JSON, schema in docs/.

`docs/trade-message.v1.schema.json` is the contract between the producer and the processor;
the Spark job declares the same fields in `pulse.compute.columns.TRADE_MESSAGE_SCHEMA`.
Times are UTC epoch milliseconds; IST or any other zone is a display concern.
"""

from __future__ import annotations

from typing import Any

import orjson

from pulse.source.binance_schema import Trade

SCHEMA_VERSION = 1


def trade_to_message(trade: Trade) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "symbol": trade.symbol,
        "price": trade.price,
        "quantity": trade.quantity,
        "timestamp": trade.trade_time_ms,
        "side": trade.side,
        "agg_trade_id": trade.agg_trade_id,
        "first_trade_id": trade.first_trade_id,
        "last_trade_id": trade.last_trade_id,
        "event_time": trade.event_time_ms,
        "ingest_time": trade.ingest_time_ms,
        "buyer_is_maker": trade.buyer_is_maker,
        "quantity_no_rpi": trade.quantity_no_rpi,
    }


def encode_trade(trade: Trade) -> bytes:
    return orjson.dumps(trade_to_message(trade))


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
