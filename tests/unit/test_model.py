"""The wire contract is defined once, in pulse.model: the docs' JSON schemas and the Spark read schema
must agree with the msgspec structs field by field, and what the producer encodes must validate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest
from pyspark.sql import types as T

from pulse.compute.columns import TRADE_MESSAGE_SCHEMA
from pulse.model import (
    DeadLetter,
    DeadLetterV1,
    Gap,
    GapEvent,
    GapEventV1,
    Trade,
    TradeMessageV1,
    encode_dead_letter,
    encode_gap_event,
    encode_trade,
)

DOCS = Path(__file__).resolve().parents[2] / "docs"
CONTRACTS = [(TradeMessageV1, "trade-message.v1.schema.json"), (DeadLetterV1, "dead-letter.v1.schema.json"),
             (GapEventV1, "gap-event.v1.schema.json")]


def _json_kind(info: msgspec.inspect.Type) -> Any:
    """What the docs must say of a field of this msgspec type."""
    if isinstance(info, msgspec.inspect.LiteralType):
        return ("const", info.values[0]) if len(info.values) == 1 else ("enum", sorted(map(str, info.values)))
    if isinstance(info, msgspec.inspect.UnionType):
        return ("type", sorted(_json_kind(t)[1] for t in info.types))
    names = {msgspec.inspect.IntType: "integer", msgspec.inspect.FloatType: "number",
             msgspec.inspect.StrType: "string", msgspec.inspect.BoolType: "boolean", msgspec.inspect.NoneType: "null"}
    return ("type", names[type(info)])


def _doc_kind(prop: dict[str, Any]) -> Any:
    if "const" in prop:
        return ("const", prop["const"])
    if "enum" in prop:
        return ("enum", sorted(prop["enum"]))
    kind = prop["type"]
    return ("type", sorted(kind) if isinstance(kind, list) else kind)


@pytest.mark.parametrize(("struct", "doc"), CONTRACTS)
def test_docs_schema_agrees_with_the_struct_field_by_field(struct, doc):
    schema = json.loads((DOCS / doc).read_text())
    info = msgspec.inspect.type_info(struct)
    assert isinstance(info, msgspec.inspect.StructType)
    fields = {field.encode_name: field for field in info.fields}
    assert list(schema["properties"]) == list(fields), "field names or order differ"
    for name, field in fields.items():
        assert _doc_kind(schema["properties"][name]) == _json_kind(field.type), name
    nullable = {name for name, field in fields.items() if isinstance(field.type, msgspec.inspect.UnionType)}
    assert set(schema["required"]) == set(fields) - nullable
    assert schema["additionalProperties"] is False


def test_spark_read_schema_is_the_struct():
    spark_types = {msgspec.inspect.IntType: T.LongType(), msgspec.inspect.FloatType: T.DoubleType(),
                   msgspec.inspect.StrType: T.StringType(), msgspec.inspect.BoolType: T.BooleanType()}
    info = msgspec.inspect.type_info(TradeMessageV1)
    assert isinstance(info, msgspec.inspect.StructType)
    assert [f.name for f in TRADE_MESSAGE_SCHEMA.fields] == [f.encode_name for f in info.fields]
    for spark_field, field in zip(TRADE_MESSAGE_SCHEMA.fields, info.fields, strict=True):
        kind = field.type
        if isinstance(kind, msgspec.inspect.UnionType):
            (kind,) = [t for t in kind.types if not isinstance(t, msgspec.inspect.NoneType)]
        want: T.DataType
        if isinstance(kind, msgspec.inspect.LiteralType):
            want = T.StringType() if isinstance(kind.values[0], str) else T.IntegerType()
        else:
            want = spark_types[type(kind)]
        assert spark_field.dataType == want, field.name


TRADE = Trade("BTCUSDT_260327", 7, 87648.21, 0.5, 10, 12, 1767225600039, 1767225600040, True, 1767225600100)


@pytest.mark.parametrize(("encoded", "doc"), [
    (encode_trade(TRADE), "trade-message.v1.schema.json"),
    (encode_trade(msgspec.structs.replace(TRADE, quantity_no_rpi=0.25, buyer_is_maker=False)),
     "trade-message.v1.schema.json"),
    (encode_dead_letter(DeadLetter(b"\xff{broken", "not JSON", "replay:x.raw", 1)), "dead-letter.v1.schema.json"),
    (encode_gap_event(GapEvent(Gap("BTCUSDT", 5, 9), "ids not returned by REST", 2)), "gap-event.v1.schema.json"),
])
def test_what_the_producer_encodes_validates_against_the_docs(encoded, doc):
    jsonschema.validate(json.loads(encoded), json.loads((DOCS / doc).read_text()))


def test_trade_message_carries_the_taker_side():
    assert json.loads(encode_trade(TRADE))["side"] == "SELL"  # m = true: the buyer made, the taker sold
    assert json.loads(encode_trade(msgspec.structs.replace(TRADE, buyer_is_maker=False)))["side"] == "BUY"
