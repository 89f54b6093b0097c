"""Real recordings through the real broker, Spark and chDB, checked window by window against an
independent computation (tests/support/reference.py) over the same trades."""

from __future__ import annotations

import pytest

from tests.support.pipeline import metrics_rows, process_topic, publish_recording
from tests.support.recordings import ARCHIVE_CSV, SPOT_RAW, USDM_RAW, recording
from tests.support.reference import assert_windows_match, reference_windows, trades_from_recording

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(("name", "symbol", "mode", "max_per_trigger"), [
    (USDM_RAW, None, "realtime", None),
    (SPOT_RAW, None, "realtime", None),
    (ARCHIVE_CSV, "BTCUSDT", "realtime", None),
    (USDM_RAW, None, "microbatch", None),
    # Many small micro-batches: windows are built up and rewritten across batches in update mode.
    (SPOT_RAW, None, "microbatch", 150),
])
def test_every_window_matches_the_reference(name, symbol, mode, max_per_trigger, kafka, spark, database, settings):
    settings = settings.override(spark={"mode": mode, "max_offsets_per_trigger": max_per_trigger})
    path = recording(name)
    published = publish_recording(settings, path, symbol)
    reference = reference_windows(trades_from_recording(path, symbol))
    assert published == sum(w.trade_count for w in reference.values())

    process_topic(settings)
    rows = metrics_rows(database)
    if max_per_trigger:
        batches = database.query_arrow("SELECT count() AS n FROM pulse_health"
                                       " WHERE query_name = 'pulse_metrics' AND input_rows > 0").to_pylist()[0]["n"]
        assert batches >= published // max_per_trigger // 2, "the input was not spread over many micro-batches"

    assert_windows_match(rows, reference)
    for row in rows:
        where = f"{row['symbol']} @ {row['window_start']}"
        assert row["window_end_ms"] - row["window_start_ms"] == 1000, where
        # The recordings have no gaps, so every window is complete.
        assert row["expected_trade_count"] == row["trade_count"], where
