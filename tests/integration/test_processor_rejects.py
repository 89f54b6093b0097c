"""Corrupted messages written straight to the trades topic land in pulse_rejects, raw and explained;
the valid messages around them are still aggregated."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from pulse.compute.columns import parse_messages
from tests.support.pipeline import metrics_rows, process_topic
from tests.support.topic_writer import encode, trade_message, write_messages

pytestmark = pytest.mark.integration

T0 = 1_704_067_200_000


def _trade(agg_id: int, **changes: object) -> dict[str, Any]:
    message = trade_message("REJUSDT", agg_id, 100.0 + agg_id, 1.0, T0 + agg_id, agg_id % 2 == 0)
    message.update(changes)
    return message


def _without(field: str) -> dict[str, Any]:
    message = _trade(9)
    del message[field]
    return message


Message = dict[str, Any] | bytes | str | None
SYMBOL_RULE = "field 'symbol' must be a symbol (A-Z 0-9 _ . -, 1 to 20 long)"
BAD: list[tuple[Message, str]] = [
    (b'{"schema_version": 1, "symbol": "REJUSDT", "price": 1', "value is not valid JSON"),
    (b"\x00\xffnot text", "value is not UTF-8 text (raw_value holds it as base64)"),
    (b"plain words", "value is not valid JSON"),
    (b'[1, 2, 3]', "value is not a JSON object"),
    (_without("price"), "missing or mistyped field 'price'"),
    (_without("timestamp"), "missing or mistyped field 'timestamp'"),
    (_trade(10, price="cheap"), "missing or mistyped field 'price'"),
    (_trade(11, price=-5.0), "field 'price' must be finite and > 0"),
    (_trade(12, quantity=0.0), "field 'quantity' must be finite and > 0"),
    # A bare NaN is not JSON at all; as a string, or as an overflowing number, it reaches the check.
    (json.dumps(_trade(13)).replace('"price": 113.0', '"price": NaN'), "value is not valid JSON"),
    (_trade(16, price="NaN"), "field 'price' must be finite and > 0"),
    (json.dumps(_trade(17)).replace('"quantity": 1.0', '"quantity": 1e999'), "field 'quantity' must be finite and > 0"),
    (_trade(14, side="HOLD"), "field 'side' must be BUY or SELL"),
    (_trade(15, schema_version=2), "unsupported or missing schema_version (expected 1)"),
    (_without("schema_version"), "unsupported or missing schema_version (expected 1)"),
    (_trade(-18), "field 'agg_trade_id' must be >= 0"),
    (_trade(19, timestamp=-1), "field 'timestamp' must be >= 0"),
    # Written by anything but the producer: what it would have refused, the job refuses too.
    (None, "empty message value"),  # a tombstone
    (_trade(20, symbol="REJ'USDT"), SYMBOL_RULE),
    (_trade(21, symbol='REJ\\"; DROP TABLE pulse_metrics; --'), SYMBOL_RULE),
    (_trade(22, symbol="R" * 5_000), SYMBOL_RULE),
    (_trade(23, timestamp=1_000), "field 'timestamp' is before 2017-01-01, earlier than any Binance trade"),
    # A year ahead: accepted, it would move the watermark and GOOD[2], after it, would be dropped as late.
    (_trade(24, timestamp=int(time.time() * 1000) + 365 * 86_400_000),
     "field 'timestamp' is more than 60,000 ms after the record's Kafka time: a trade from the future would move"
     " the watermark"),
    (json.dumps({**_trade(25), "padding": "x" * 100_000}), "value over 65,536 characters: not a trade message"),
]
GOOD = [_trade(1), _trade(2), _trade(3)]
PAIR_RULE = "field 'symbol' must be a pair BASE/QUOTE (A-Z 0-9 _ . - on each side of one slash, 1 to 20 long)"


def test_corrupted_messages_go_to_pulse_rejects_with_their_coordinates(kafka, spark, database, settings):
    assert "NaN," in (encode(BAD[9][0]) or b"").decode()
    assert "1e999" in (encode(BAD[11][0]) or b"").decode()
    topic = settings.kafka.trades_topic
    # Interleave so that bad and good messages share micro-batches and partitions.
    sent = write_messages(kafka.bootstrap, topic, [GOOD[0], *[m for m, _ in BAD[:6]], GOOD[1],
                                                   *[m for m, _ in BAD[6:]], GOOD[2]], partition=1)
    process_topic(settings, timeout_s=90)

    rejects = database.query_arrow(
        "SELECT topic, partition, offset, reason, raw_value FROM pulse_rejects FINAL ORDER BY offset").to_pylist()
    good_values = {encode(m) for m in GOOD}
    expected = [(w, reason) for w, (_, reason) in
                zip([s for s in sent if s.value not in good_values], BAD, strict=True)]
    assert len(rejects) == len(BAD)
    for row, (written, reason) in zip(rejects, expected, strict=True):
        assert (row["topic"], row["partition"], row["offset"]) == (topic, written.partition, written.offset)
        assert row["reason"] == reason, row
        # Kept verbatim as text (an oversized one by its head); bytes that are not UTF-8 losslessly as base64.
        if written.value is None:
            assert row["raw_value"] == ""
            continue
        try:
            assert row["raw_value"] == written.value.decode()[:65_536]
        except UnicodeDecodeError:
            assert base64.b64decode(row["raw_value"].removeprefix("base64:")) == written.value

    rows = metrics_rows(database)
    assert sum(r["trade_count"] for r in rows) == len(GOOD)
    assert [(r["first_agg_trade_id"], r["last_agg_trade_id"]) for r in rows] == [(1, 3)]


@pytest.mark.parametrize(("symbol", "reason"), [
    ("BTC/USD", None), ("AAPL.X/USD", None), ("BTC-USD-SWAP", None), ("BTCUSD_PERP", None),
    ("ABCDEFGHIJ/KLMNOPQRS", None), ("ABCDEFGHIJ/KLMNOPQRST", PAIR_RULE),
    ("BTC/USD/EUR", PAIR_RULE), ("/USD", PAIR_RULE), ("BTC/usd", PAIR_RULE), ("REJ'USDT", SYMBOL_RULE),
])
def test_a_name_with_a_slash_is_held_to_the_pair_rule_any_other_to_the_symbol_rule(spark, symbol, reason):
    value = json.dumps(_trade(1, symbol=symbol, timestamp=int(time.time() * 1000))).encode()
    rows = spark.createDataFrame([("t", 0, 0, datetime.now(UTC), value)],
                                 "topic string, partition int, offset long, timestamp timestamp, value binary")
    assert parse_messages(rows).select("reject_reason").collect()[0][0] == reason
