"""Small batches reach chDB as JSON text in the INSERT, large ones through Arrow: both paths must
store the same values, hostile strings, NaN, infinities, nulls and millisecond timestamps included."""

from __future__ import annotations

import math
from typing import Any

import pyarrow as pa

from pulse.settings import PulseSettings
from pulse.storage.clickhouse import ChdbEngine, ChdbTransport, insert_columns_sql, json_each_row
from tests.support.names import unique_name

TABLE = ("CREATE TABLE t (at DateTime64(3, 'UTC'), day DateTime64(3), x Float64, n Nullable(Int64), u UInt64, "
         "s String, lc LowCardinality(String), b Bool) ENGINE = MergeTree ORDER BY tuple()")
HOSTILE = ["plain", "q'uo\"te\\", "nul\x00byte", "line\nbreak", "€ and 😀", "", "x" * 10_000, "'); DROP TABLE t; --"]


def _batch() -> pa.Table:
    n = len(HOSTILE)
    ms = [1_700_000_000_123 + i for i in range(n - 1)] + [1_483_228_800_000]
    return pa.table({
        "at": pa.array(ms, pa.timestamp("ms", tz="UTC")),
        "day": pa.array(ms, pa.timestamp("ms")),
        "x": [1.5, float("nan"), float("inf"), -float("inf"), 1e-300, 1e308, -0.0, 2.0],
        "n": pa.array([None, -5, 2**62, None, 0, 1, 2, 3], pa.int64()),
        "u": pa.array([2**64 - 1, 0, 1, 2, 3, 4, 5, 6], pa.uint64()),
        "s": HOSTILE,
        "lc": pa.array(HOSTILE).dictionary_encode(),
        "b": [True, False] * (n // 2),
    })


def _rows(transport: ChdbTransport) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = transport.query_arrow("SELECT * FROM t ORDER BY u").to_pylist()
    return rows


def test_json_and_arrow_inserts_store_the_same_values(chdb_engine: ChdbEngine, base_settings: PulseSettings) -> None:
    inline, arrow = (ChdbTransport(base_settings.chdb_path, unique_name(kind)) for kind in ("inline", "arrow"))
    for transport in (inline, arrow):
        transport.command(TABLE)
    batch = _batch()
    assert json_each_row(batch) is not None, "every column of this batch takes the inline path"
    inline.insert_arrow("t", batch)
    chdb_engine.insert_arrow(insert_columns_sql(arrow.database, "t", batch.column_names, "{source}"), batch)
    got, want = _rows(inline), _rows(arrow)
    assert len(got) == len(want) == len(HOSTILE)
    for left, right in zip(got, want, strict=True):
        for column, value in right.items():
            if isinstance(value, float) and math.isnan(value):
                assert math.isnan(left[column]), column
            else:
                assert left[column] == value, (column, left[column], value)
    assert sorted(r["s"] for r in got) == sorted(HOSTILE)
    assert inline.query_arrow("SELECT count() AS n FROM t").to_pylist() == [{"n": len(HOSTILE)}]


def test_types_json_cannot_spell_exactly_take_the_arrow_path() -> None:
    assert json_each_row(pa.table({"raw": pa.array([b"\xff\x00"], pa.binary())})) is None
    assert json_each_row(pa.table({"xs": pa.array([[1, 2]])})) is None
