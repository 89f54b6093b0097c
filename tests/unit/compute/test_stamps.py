"""Stamping collected batches: every column checked against plain arithmetic on the same rows."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa

from pulse.compute.stamps import freshness_ms, stamp_metrics, stamp_rejects, with_first_trade_time

WRITTEN_MS = 1_704_067_201_250


def test_metrics_rows_get_write_latencies_time_and_the_trade_count_as_version_and_lose_the_helpers() -> None:
    windows = pa.table({"symbol": ["A", "B"], "trade_count": [3, 1],
                        "avg_trade_time_ms": [1_704_067_200_500.5, 1_704_067_201_000.0],
                        "min_trade_time_ms": pa.array([1_704_067_200_001, 1_704_067_201_000], pa.int64()),
                        "max_trade_time_ms": pa.array([1_704_067_201_200, 1_704_067_201_000], pa.int64())})

    stamped = stamp_metrics(windows, WRITTEN_MS).to_pylist()

    assert stamped == [
        {"symbol": "A", "trade_count": 3, "avg_write_latency_ms": 749.5, "max_write_latency_ms": 1249.0,
         "written_at": datetime(2024, 1, 1, 0, 0, 1, 250_000, tzinfo=UTC), "version": 3},
        {"symbol": "B", "trade_count": 1, "avg_write_latency_ms": 250.0, "max_write_latency_ms": 250.0,
         "written_at": datetime(2024, 1, 1, 0, 0, 1, 250_000, tzinfo=UTC), "version": 1},
    ]
    assert freshness_ms(windows, WRITTEN_MS) == [50.0, 250.0]


def test_an_empty_batch_stays_empty_with_the_table_columns() -> None:
    windows = pa.table({"symbol": pa.array([], pa.string()), "trade_count": pa.array([], pa.int64()),
                        "avg_trade_time_ms": pa.array([], pa.float64()),
                        "min_trade_time_ms": pa.array([], pa.int64())})

    stamped = stamp_metrics(windows, WRITTEN_MS)

    assert stamped.num_rows == 0
    assert stamped.column_names == ["symbol", "trade_count", "avg_write_latency_ms", "max_write_latency_ms",
                                    "written_at", "version"]


def test_rejects_get_their_rejection_time_first_and_the_version_last() -> None:
    rejects = pa.table({"offset": pa.array([4, 9], pa.int64()), "reason": ["value is not valid JSON", "x"]})

    stamped = stamp_rejects(rejects, WRITTEN_MS, version=2)

    assert stamped.column_names == ["rejected_at", "offset", "reason", "version"]
    assert stamped.column("rejected_at").to_pylist() == [datetime(2024, 1, 1, 0, 0, 1, 250_000, tzinfo=UTC)] * 2
    assert stamped.column("version").to_pylist() == [2, 2]


def test_each_window_keeps_its_earliest_trade_time_as_first_trade_time() -> None:
    windows = pa.table({"symbol": ["A", "B"], "trade_count": [3, 1],
                        "avg_trade_time_ms": [1_704_067_200_500.5, 1_704_067_201_000.0],
                        "min_trade_time_ms": pa.array([1_704_067_200_001, 1_704_067_201_000], pa.int64())})

    rows = stamp_metrics(with_first_trade_time(windows), WRITTEN_MS).to_pylist()

    assert [row["first_trade_time"] for row in rows] == [datetime(2024, 1, 1, 0, 0, 0, 1_000, tzinfo=UTC),
                                                         datetime(2024, 1, 1, 0, 0, 1, tzinfo=UTC)]
