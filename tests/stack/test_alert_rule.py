"""The "no new Pulse window" alert rule, evaluated on chDB the way Grafana evaluates it.

The rule's SQL runs against the real schema (tests/stack/test_dashboard_queries.py runs it on a
recording too); its reduce and threshold steps are applied here to the rows it returns, and an empty
result takes the rule's noDataState. So each test states which symbols would fire, from the file
Grafana provisions.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pytest

from pulse.storage.clickhouse import ChdbTransport
from tests.support.grafana import TimeRange, alert_rules, expand_macros

pytestmark = pytest.mark.integration


def _rule() -> dict[str, Any]:
    (rule,) = alert_rules()
    return rule


def _steps(rule: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {step["refId"]: step for step in rule["data"]}


def _evaluate(transport: ChdbTransport) -> tuple[dict[str, float], set[str] | str]:
    """(seconds since the last window per symbol, the firing symbols) or the no-data state."""
    rule = _rule()
    steps = _steps(rule)
    (query,) = [s for s in steps.values() if s["datasourceUid"] != "__expr__"]
    now = datetime.now(UTC)
    tr = TimeRange(now - timedelta(seconds=query["relativeTimeRange"]["from"]), now, 1.0)
    rows = transport.query_arrow(expand_macros(query["model"]["rawSql"], tr)).to_pylist()
    # B reduces each series (one per symbol) to its last value, C compares it with the threshold.
    reduce_step = next(s["model"] for s in steps.values() if s["model"].get("type") == "reduce")
    threshold = steps[rule["condition"]]["model"]
    assert reduce_step["reducer"] == "last" and threshold["expression"] == reduce_step["refId"]
    evaluator = threshold["conditions"][0]["evaluator"]
    assert evaluator["type"] == "gt"
    seconds = {row["symbol"]: row["seconds_since_last_window"] for row in rows}
    if not rows:
        return seconds, rule["noDataState"]
    return seconds, {symbol for symbol, value in seconds.items() if value > evaluator["params"][0]}


def _insert_windows(transport: ChdbTransport, last_window_end: dict[str, datetime], count: int = 5) -> None:
    """`count` consecutive 1-second windows per symbol, the last one ending at the given time."""
    rows = []
    for symbol, end in last_window_end.items():
        for back in range(count):
            window_end = end - timedelta(seconds=back)
            rows.append({"symbol": symbol, "window_start": window_end - timedelta(seconds=1),
                         "window_end": window_end, "trade_count": 3, "signal": "NEUTRAL",
                         "written_at": window_end + timedelta(milliseconds=300), "version": 1})
    table = pa.Table.from_pylist([{k: (v.replace(tzinfo=None) if isinstance(v, datetime) else v)
                                   for k, v in row.items()} for row in rows])
    transport.insert_arrow("pulse_metrics", table)


def test_a_fresh_stack_without_any_window_does_not_fire(database: ChdbTransport) -> None:
    # The first `docker compose up`: Grafana evaluates before the producer and Spark wrote anything.
    seconds, state = _evaluate(database)
    assert seconds == {}
    assert state == "OK"


def test_only_symbols_active_in_the_last_minutes_are_watched(database: ChdbTransport) -> None:
    now = datetime.now(UTC)
    _insert_windows(database, {
        "BTCUSDT": now - timedelta(seconds=1),      # live
        "ETHUSDT": now - timedelta(minutes=3),      # was live 3 minutes ago: stalled
        "XRPUSDT": now - timedelta(hours=2),        # dropped from PRODUCER_SYMBOLS long ago
        "NEOUSDT": datetime(2021, 4, 5, 18, 38, 36, tzinfo=UTC),  # a replayed 2021 recording
    })
    seconds, firing = _evaluate(database)
    assert set(seconds) == {"BTCUSDT", "ETHUSDT"}
    assert seconds["BTCUSDT"] < 60 < seconds["ETHUSDT"]
    assert firing == {"ETHUSDT"}


def test_a_pipeline_stopped_long_ago_keeps_firing_for_what_it_was_writing(database: ChdbTransport) -> None:
    # Everything stopped 45 minutes ago: the symbols it was writing stay in scope (the scope follows
    # the newest window, not the clock), a symbol that had left before does not come back.
    stopped = datetime.now(UTC) - timedelta(minutes=45)
    _insert_windows(database, {"BTCUSDT": stopped, "ETHUSDT": stopped - timedelta(seconds=2),
                               "XRPUSDT": stopped - timedelta(hours=3)})
    seconds, firing = _evaluate(database)
    assert firing == {"BTCUSDT", "ETHUSDT"}
    assert all(value > 45 * 60 for value in seconds.values())
