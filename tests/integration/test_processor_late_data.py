"""Late trades against the watermark, with event times chosen by the test.

Watermark 2 s, 1-second windows, in both modes. Phase 1 sets the max event time to B+20.4 s, so the watermark
becomes B+18.4 s. Phase 2 then brings trades whose windows are still open (updated, a new row
version) and trades whose windows closed (dropped by Spark, counted one by one in pulse_health).
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from pulse.compute.job import PulseQueries
from pulse.runtime import Plan, Runtime, Until
from tests.support.pipeline import metrics_rows
from tests.support.reference import RefTrade, is_late, reference_windows
from tests.support.topic_writer import trade_message, write_messages

pytestmark = pytest.mark.integration

B = 1_704_067_200_000  # 2024-01-01T00:00:00Z
PHASE_1 = [(10.1, 100.0, 1.0, False), (10.5, 101.0, 2.0, True), (12.2, 102.0, 1.5, False),
           (15.3, 99.0, 0.5, True), (20.4, 100.5, 1.0, False)]
# 18.1 is older than the watermark (18.4) but its window [18, 19) is still open: accepted.
ON_TIME = [(19.2, 100.2, 0.7, True), (20.7, 100.9, 0.3, False), (18.1, 100.1, 0.4, False)]
# Windows [12, 13) and [15, 16) ended at or before 18.4: four trades Spark drops.
TOO_LATE = [(12.3, 98.0, 1.0, False), (15.1, 97.0, 1.0, True), (15.2, 97.5, 2.0, False), (15.9, 96.0, 0.1, True)]


def _messages(rows, first_id):
    return [trade_message("LATEUSDT", first_id + i, p, q, B + round(t * 1000), m)
            for i, (t, p, q, m) in enumerate(rows)]


def _ref(rows, first_id):
    return [RefTrade("LATEUSDT", first_id + i, Decimal(str(p)), Decimal(str(q)), B + round(t * 1000), m)
            for i, (t, p, q, m) in enumerate(rows)]


def _wait_for_watermark(queries: PulseQueries, want_ms: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        queries.raise_if_failed()
        progress: dict[str, Any] = queries.metrics.lastProgress or {}
        mark = (progress.get("eventTime") or {}).get("watermark")
        if mark and datetime.fromisoformat(mark.replace("Z", "+00:00")) >= datetime.fromtimestamp(want_ms / 1000, UTC):
            return
        time.sleep(0.1)
    raise TimeoutError(f"watermark never reached {want_ms}")




@pytest.mark.parametrize("mode", ["realtime", "microbatch"])
def test_late_trades_inside_and_beyond_the_watermark(mode, kafka, spark, database, settings):
    """Both engines drop by the watermark in effect for the batch a trade arrives in: in Real-Time
    Mode that watermark moves only when a batch ends (every spark.realtime_batch_s), which is when
    the test sees it in the progress report before sending phase 2."""
    settings = settings.override(spark={"watermark_s": 2.0, "mode": mode})
    topic = settings.kafka.trades_topic
    watermark_ms = B + 18_400
    assert [is_late(B + round(t * 1000), watermark_ms) for t, *_ in ON_TIME] == [False] * 3
    assert [is_late(B + round(t * 1000), watermark_ms) for t, *_ in TOO_LATE] == [True] * 4

    with Runtime(Plan(settings, compute=True)).start() as run:
        queries = run.queries
        assert queries is not None
        write_messages(kafka.bootstrap, topic, _messages(PHASE_1, 1))
        assert run.wait(Until.CAUGHT_UP, timeout_s=90) == Until.CAUGHT_UP
        _wait_for_watermark(queries, watermark_ms)
        write_messages(kafka.bootstrap, topic, _messages(ON_TIME + TOO_LATE, 100))
        assert run.wait(Until.CAUGHT_UP, timeout_s=90) == Until.CAUGHT_UP
        last: dict[str, Any] = queries.metrics.lastProgress or {}
        committed = last["batchId"]

    # The run stopped right after the batch that dropped them: its report (and the late count, a
    # Spark read of its own) is still written, as every committed batch's is.
    health = database.query_arrow(
        "SELECT sum(late_trades) AS late_trades, sum(late_rows_dropped) AS late_rows, groupUniqArray(batch_id)"
        " AS batches FROM pulse_health WHERE query_name = 'pulse_metrics'").to_pylist()[0]
    assert set(range(committed + 1)) <= set(health.pop("batches")), "a committed batch has no pulse_health row"
    # Exactly the four trades, although Spark counts partially aggregated rows (one per closed
    # window and partition here, so two).
    assert health["late_trades"] == 4, health
    assert 1 <= health["late_rows"] <= 4, health

    accepted = _ref(PHASE_1, 1) + _ref(ON_TIME + TOO_LATE, 100)[: len(ON_TIME)]
    reference = reference_windows(accepted)
    rows = metrics_rows(database)
    assert {(r["symbol"], r["window_start_ms"]) for r in rows} == set(reference)
    for row in rows:
        want = reference[(row["symbol"], row["window_start_ms"])]
        assert row["trade_count"] == want.trade_count
        assert math.isclose(row["vwap"], want.vwap, rel_tol=1e-12)
        assert row["signal"] == want.signal

    # The on-time trade in window [20, 21) arrived later: the window was written again with a
    # higher version (its trade count), and the newest version is the one the view returns.
    versions = database.query_arrow(
        "SELECT version, trade_count FROM pulse_metrics WHERE window_start = fromUnixTimestamp64Milli("
        f"toInt64({B + 20_000}), 'UTC') ORDER BY version").to_pylist()
    assert [v["trade_count"] for v in versions] == [1, 2], versions
    latest = database.query_arrow(
        "SELECT trade_count FROM pulse_metrics_latest WHERE window_start = fromUnixTimestamp64Milli("
        f"toInt64({B + 20_000}), 'UTC')").to_pylist()
    assert latest == [{"trade_count": 2}]
