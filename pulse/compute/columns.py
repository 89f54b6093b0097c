"""Spark column builders: parsing, validation, window aggregates and the signal.

Pure DataFrame -> DataFrame functions with no sources or sinks, so they run the same on a batch
DataFrame (tests) and on a stream (the job). Per venue, symbol and 1-second window:

- vwap = Σ(p·q) / Σq;  total_volume = Σq;  trade_count = number of aggTrades;  avg_price = mean(p)
- `m = true` means the buyer is the maker, so the taker SOLD;
  net_delta = Σq(taker buy) − Σq(taker sell);  buy_pressure_pct = 100 · Σq(taker buy) / Σq
- signal: average price above VWAP with net buying is STRONG BUY, below with net selling STRONG
  SELL, below with buying ACCUMULATING, above with selling DISTRIBUTING, else NEUTRAL; differences
  inside the dead bands (docs/signals.md) or float noise count as none.
"""

from __future__ import annotations

import msgspec
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pulse.model import (
    FIRST_TRADE_MS,
    MAX_AHEAD_MS,
    MAX_MESSAGE_CHARS,
    PAIR_RULE,
    SYMBOL_RULE,
    TRADE_SYMBOL_PATTERN,
    RejectV1,
    Signal,
    TradeMessageV1,
    WindowUpdateV1,
)
from pulse.settings import SignalSettings

# Differences smaller than this share of the magnitudes are float noise, never a signal.
RELATIVE_TOLERANCE = 1e-9


def _spark_type(info: msgspec.inspect.Type) -> T.DataType:
    """The Spark type that reads a JSON value of this msgspec type (nullable: Spark checks nothing)."""
    if isinstance(info, msgspec.inspect.UnionType):
        (inner,) = [t for t in info.types if not isinstance(t, msgspec.inspect.NoneType)]
        return _spark_type(inner)
    if isinstance(info, msgspec.inspect.LiteralType):
        return T.StringType() if isinstance(info.values[0], str) else T.IntegerType()
    simple: dict[type, T.DataType] = {
        msgspec.inspect.IntType: T.LongType(), msgspec.inspect.FloatType: T.DoubleType(),
        msgspec.inspect.StrType: T.StringType(), msgspec.inspect.BoolType: T.BooleanType()}
    return simple[type(info)]


def message_schema(struct: type[msgspec.Struct]) -> T.StructType:
    info = msgspec.inspect.type_info(struct)
    assert isinstance(info, msgspec.inspect.StructType)
    return T.StructType([T.StructField(field.encode_name, _spark_type(field.type)) for field in info.fields])


# The trades topic's message as Spark reads it: derived from the one definition, pulse.model.
TRADE_MESSAGE_SCHEMA = message_schema(TradeMessageV1)

_REQUIRED = ("symbol", "price", "quantity", "timestamp", "side", "agg_trade_id", "ingest_time")


def parse_messages(kafka_rows: DataFrame) -> DataFrame:
    """Kafka rows -> `msg` struct plus `reject_reason` (null when the message is a valid trade)."""
    value = F.col("value").cast("string")
    # from_json runs without generated code in Spark 4.0, and the optimizer would copy it into
    # each of the ~20 checks below (it pushes filters through a plain projection). Behind a
    # Generate it runs once per message; the Generate is interpreted too, so it holds from_json
    # alone and the UTF-8 check, the raw value and the checks stay in generated code (~10% less
    # time per message, docs/benchmarks.md).
    parsed = kafka_rows.select(
        "topic", "partition", "offset", F.col("timestamp").alias("kafka_time"), "value",
        F.inline(F.array(F.struct(F.from_json(value, TRADE_MESSAGE_SCHEMA, {"mode": "PERMISSIVE"}).alias("msg")))),
    )
    utf8 = F.is_valid_utf8(value)
    # Raw values are kept as text; bytes that are not UTF-8 are kept losslessly as base64.
    raw_value = F.when(utf8, value).otherwise(F.concat(F.lit("base64:"), F.base64("value")))
    parsed = parsed.select("topic", "partition", "offset", "kafka_time", raw_value.alias("raw_value"),
                           utf8.alias("utf8"), "msg")
    return parsed.withColumn("reject_reason", reject_reason(F.col("msg"), F.col("raw_value"), F.col("utf8"),
                                                            F.col("kafka_time")))


def reject_reason(msg: Column, raw_value: Column, utf8: Column, kafka_time: Column) -> Column:
    """The first thing wrong with a message, or null."""
    reason = F.when(raw_value.isNull(), F.lit("empty message value"))
    reason = reason.when(F.length(raw_value) > MAX_MESSAGE_CHARS,
                         F.lit(f"value over {MAX_MESSAGE_CHARS:,} characters: not a trade message"))
    reason = reason.when(~utf8, F.lit("value is not UTF-8 text (raw_value holds it as base64)"))
    # from_json is lenient (a malformed value can come back as a struct of nulls), so ask the
    # strict parser whether the value is JSON at all before blaming a field.
    reason = reason.when(F.try_parse_json(raw_value).isNull(), F.lit("value is not valid JSON"))
    # Valid JSON that starts with "{" is an object; from_json reads arrays and scalars as nulls.
    reason = reason.when(msg.isNull() | ~F.ltrim(raw_value).startswith("{"), F.lit("value is not a JSON object"))
    reason = reason.when(msg["schema_version"].isNull() | (msg["schema_version"] != 1),
                         F.lit("unsupported or missing schema_version (expected 1)"))
    for field in _REQUIRED:
        reason = reason.when(msg[field].isNull(), F.lit(f"missing or mistyped field '{field}'"))
    for field in ("price", "quantity"):
        number = msg[field]
        reason = reason.when(F.isnan(number) | (number <= 0) | (F.abs(number) == float("inf")),
                             F.lit(f"field '{field}' must be finite and > 0"))
    reason = reason.when(~msg["side"].isin("BUY", "SELL"), F.lit("field 'side' must be BUY or SELL"))
    # The contract's minimum (docs/trade-message.v1.schema.json); the tables keep ids unsigned.
    for field in ("agg_trade_id", "timestamp", "ingest_time"):
        reason = reason.when(msg[field] < 0, F.lit(f"field '{field}' must be >= 0"))
    # What the producer refuses too (pulse.source.binance.wire), for messages written to the topic
    # by anything else: a symbol a query can carry, a trade time Binance could have made, and none
    # from the future, which would move the watermark past every later trade.
    # A name with a slash is held to the pair rule alone, any other to the symbol rule.
    reason = reason.when(~msg["symbol"].rlike(TRADE_SYMBOL_PATTERN),
                         F.when(msg["symbol"].contains("/"), F.lit(f"field 'symbol' must be {PAIR_RULE}"))
                         .otherwise(F.lit(f"field 'symbol' must be {SYMBOL_RULE}")))
    reason = reason.when(msg["timestamp"] < FIRST_TRADE_MS,
                         F.lit("field 'timestamp' is before 2017-01-01, earlier than any Binance trade"))
    reason = reason.when(msg["timestamp"] > F.unix_millis(kafka_time) + MAX_AHEAD_MS,
                         F.lit(f"field 'timestamp' is more than {MAX_AHEAD_MS:,} ms after the record's Kafka time:"
                               " a trade from the future would move the watermark"))
    return reason


def valid_trades(parsed: DataFrame) -> DataFrame:
    """The trade columns the aggregation needs, event time as a timestamp."""
    msg = F.col("msg")
    return parsed.where(F.col("reject_reason").isNull()).select(
        # Messages from producers before venues carry none: '' (unnamed), never a guess.
        F.coalesce(msg["venue"], F.lit("")).alias("venue"),
        msg["symbol"].alias("symbol"),
        F.coalesce(msg["base_asset"], F.lit("")).alias("base_asset"),
        F.coalesce(msg["quote_asset"], F.lit("")).alias("quote_asset"),
        msg["price"].alias("price"),
        msg["quantity"].alias("quantity"),
        msg["side"].alias("side"),
        msg["agg_trade_id"].alias("agg_trade_id"),
        msg["timestamp"].alias("trade_time_ms"),
        msg["ingest_time"].alias("ingest_time_ms"),
        F.timestamp_millis(msg["timestamp"]).alias("trade_time"),
    )


def window_end_ms(trade_time_ms: Column, window_seconds: int = 1) -> Column:
    """The end (exclusive) of the tumbling window a trade falls in, as epoch ms."""
    size_ms = window_seconds * 1000
    return (F.floor(trade_time_ms / size_ms) + 1) * size_ms


def late_trades(trades: DataFrame, late_watermark_ms: int, window_seconds: int = 1) -> DataFrame:
    """The trades Spark's windowed aggregation drops: their window ended at or before the watermark.

    Spark's own metric (numRowsDroppedByWatermark) counts partially aggregated rows, not trades,
    so the job counts late trades with this rule.
    """
    return trades.where(window_end_ms(F.col("trade_time_ms"), window_seconds) <= F.lit(late_watermark_ms))


def rejected_messages(parsed: DataFrame) -> DataFrame:
    return parsed.where(F.col("reject_reason").isNotNull()).select(
        "topic", "partition", "offset", "kafka_time",
        F.col("reject_reason").alias("reason"),
        F.substring(F.coalesce("raw_value", F.lit("")), 1, MAX_MESSAGE_CHARS).alias("raw_value"),
    )


def _sign(difference: Column, magnitude: Column, deadband_rel: float) -> Column:
    tolerance = F.lit(max(RELATIVE_TOLERANCE, deadband_rel)) * magnitude
    return F.when(difference > tolerance, 1).when(difference < -tolerance, -1).otherwise(0)


def signal_column(avg_price: Column, vwap: Column, buy_volume: Column, sell_volume: Column,
                  settings: SignalSettings) -> Column:
    price = _sign(avg_price - vwap, F.greatest(F.abs(avg_price), F.abs(vwap)), settings.price_deadband_rel)
    delta = _sign(buy_volume - sell_volume, buy_volume + sell_volume, settings.delta_deadband_rel)
    return (
        F.when((price > 0) & (delta > 0), F.lit(Signal.STRONG_BUY.value))
        .when((price < 0) & (delta < 0), F.lit(Signal.STRONG_SELL.value))
        .when((price < 0) & (delta > 0), F.lit(Signal.ACCUMULATING.value))
        .when((price > 0) & (delta < 0), F.lit(Signal.DISTRIBUTING.value))
        .otherwise(F.lit(Signal.NEUTRAL.value))
    )


def window_aggregates(trades: DataFrame, window_seconds: int = 1) -> DataFrame:
    """Per venue, symbol and tumbling window on trade time: sums the metrics are derived from."""
    is_buy = F.col("side") == "BUY"
    quantity = F.col("quantity")
    # Open and close are the first and last trade in time; the id breaks ties within a millisecond.
    # Ids alone would do on venues whose ids count up, not on Bybit's linear UUIDs (docs/venues.md).
    in_time = F.struct("trade_time_ms", "agg_trade_id")
    return trades.groupBy(
        # Asset and quote are the symbol's, so grouping by them splits nothing: it carries them along.
        F.col("venue"), F.col("symbol"), F.col("base_asset"), F.col("quote_asset"),
        F.window(F.col("trade_time"), f"{window_seconds} second").alias("window"),
    ).agg(
        F.sum(F.col("price") * quantity).alias("quote_volume"),
        F.sum(quantity).alias("total_volume"),
        F.sum(F.when(is_buy, quantity).otherwise(0.0)).alias("buy_volume"),
        F.sum(F.when(is_buy, 0.0).otherwise(quantity)).alias("sell_volume"),
        F.count(F.lit(1)).alias("trade_count"),
        F.avg("price").alias("avg_price_1_sec"),
        F.min_by("price", in_time).alias("open"),
        F.max("price").alias("high"),
        F.min("price").alias("low"),
        F.max_by("price", in_time).alias("close"),
        F.min("agg_trade_id").alias("first_agg_trade_id"),
        F.max("agg_trade_id").alias("last_agg_trade_id"),
        F.avg(F.col("ingest_time_ms") - F.col("trade_time_ms")).alias("avg_ingest_latency_ms"),
        F.max(F.col("ingest_time_ms") - F.col("trade_time_ms")).alias("max_ingest_latency_ms"),
        F.avg("trade_time_ms").alias("avg_trade_time_ms"),
        F.min("trade_time_ms").alias("min_trade_time_ms"),
        F.max("trade_time_ms").alias("max_trade_time_ms"),
    )


def window_metrics_columns(aggregates: DataFrame, settings: SignalSettings) -> DataFrame:
    """Aggregates -> the `pulse_metrics` row (without the write-time columns)."""
    buy, sell, total = F.col("buy_volume"), F.col("sell_volume"), F.col("total_volume")
    vwap = F.col("quote_volume") / total
    return aggregates.select(
        "venue",
        "symbol",
        "base_asset",
        "quote_asset",
        F.col("window.start").alias("window_start"),
        F.col("window.end").alias("window_end"),
        vwap.alias("vwap"),
        (buy - sell).alias("net_delta"),
        (F.lit(100.0) * buy / total).alias("buy_pressure_pct"),
        total.alias("total_volume"),
        "trade_count",
        "avg_price_1_sec",
        signal_column(F.col("avg_price_1_sec"), vwap, buy, sell, settings).alias("signal"),
        "open", "high", "low", "close", "buy_volume", "sell_volume", "quote_volume",
        "first_agg_trade_id", "last_agg_trade_id",
        (F.col("last_agg_trade_id") - F.col("first_agg_trade_id") + 1).alias("expected_trade_count"),
        "avg_ingest_latency_ms", "max_ingest_latency_ms", "avg_trade_time_ms", "min_trade_time_ms",
        "max_trade_time_ms",
    )



def _record_fields(struct: type[msgspec.Struct]) -> list[str]:
    info = msgspec.inspect.type_info(struct)
    assert isinstance(info, msgspec.inspect.StructType)
    return [field.encode_name for field in info.fields]


def _json_record(key: Column, rows: DataFrame, struct: type[msgspec.Struct]) -> DataFrame:
    # Nulls are written, not left out: the store writer's decoder wants every field.
    value = F.to_json(F.struct(*_record_fields(struct)), {"ignoreNullFields": "false"})
    return rows.select(key.alias("key"), value.alias("value"))


def window_update_records(windows: DataFrame) -> DataFrame:
    """`window_metrics_columns` rows -> the metrics topic's records (`WindowUpdateV1`, key venue|symbol|start)."""
    rows = (windows.withColumn("window_start_ms", F.unix_millis("window_start"))
            .withColumn("window_end_ms", F.unix_millis("window_end")))
    key = F.concat_ws("|", "venue", "symbol", F.col("window_start_ms").cast("string"))
    return _json_record(key, rows, WindowUpdateV1)


def reject_records(rejects: DataFrame) -> DataFrame:
    """`rejected_messages` rows -> the rejects topic's records (`RejectV1`, key topic|partition|offset)."""
    rows = rejects.withColumn("kafka_time_ms", F.unix_millis("kafka_time"))
    return _json_record(F.concat_ws("|", "topic", "partition", "offset"), rows, RejectV1)
