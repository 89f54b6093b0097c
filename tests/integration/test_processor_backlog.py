"""A backlog waiting in the topic when the job starts (a restart after downtime, a topic filled
first): every trade of it is stored, in both modes.

Real-Time Mode reads each partition at its own pace under one watermark per query. Over a backlog
a dense partition (here 100,000 trades in 60 s) is still being read when a sparse one (60 trades in
the same 60 s) is done, so the watermark passes trades not read yet, which Spark would drop as late
(measured: 12,354 of 150,000 kept). The job therefore reads a backlog in micro-batches first, under
one watermark per batch, then goes on in Real-Time Mode on the same checkpoints.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from pulse.runtime import Draining, Event, Plan, Runtime, Until
from tests.support.pipeline import metrics_rows
from tests.support.reference import RefTrade, assert_windows_match, reference_windows
from tests.support.topic_writer import trade_message, write_messages

pytestmark = pytest.mark.integration

B = 1_704_067_200_000  # 2024-01-01T00:00:00Z
SPAN_S = 60
DENSE = 100_000


def _trades(symbol: str, count: int, price: str, qty: str) -> list[RefTrade]:
    return [RefTrade(symbol, i + 1, Decimal(price), Decimal(qty), B + i * SPAN_S * 1000 // count, i % 3 == 0)
            for i in range(count)]


@pytest.mark.parametrize("mode", ["realtime", "microbatch"])
def test_a_backlog_of_a_dense_and_a_sparse_partition_is_stored_whole(mode, kafka, spark, database, settings):
    settings = settings.override(spark={"watermark_s": 2.0, "mode": mode, "realtime_batch_s": 1.0})
    sparse, dense = _trades("SPARSEUSDT", SPAN_S, "10.5", "1.25"), _trades("DENSEUSDT", DENSE, "100.25", "0.01")
    for partition, trades in enumerate((sparse, dense)):
        write_messages(kafka.bootstrap, settings.kafka.trades_topic,
                       [trade_message(t.symbol, t.agg_id, float(t.price), float(t.qty), t.time_ms, t.buyer_maker)
                        for t in trades], partition=partition)

    events: list[Event] = []
    with Runtime(Plan(settings, compute=True), events.append).start() as run:
        assert run.wait(Until.CAUGHT_UP, timeout_s=300) == Until.CAUGHT_UP

    said = [event.text for event in events if isinstance(event, Draining)]
    if mode == "realtime":
        assert said == [f"{SPAN_S + DENSE:,} trades wait in {settings.kafka.trades_topic}: reading them in"
                        " micro-batches first (one watermark for every partition, so none falls behind it),"
                        " then Real-Time Mode"]
    late = database.query_arrow("SELECT sum(late_trades) AS late FROM pulse_health").to_pylist()
    assert late == [{"late": 0}]
    assert_windows_match(metrics_rows(database), reference_windows(sparse + dense))
