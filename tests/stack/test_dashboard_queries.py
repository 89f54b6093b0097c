"""Every Grafana query — panels, dashboard variables, the alert rule — run on chDB against the schema.

Rows come from a real Binance recording: windows computed by the independent reference
(tests/support/reference.py) and written to pulse_metrics as the job writes them (an older version
of some windows first, so FINAL matters), with pulse_health and pulse_rejects rows beside them.
Each query is expanded as Grafana and the ClickHouse plugin would (variables, then macros) for a
short, a medium and a long time range, so the 1 s view and both rollups are read, and its result
must have the columns the panel's visualisation needs.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pytest

from pulse.storage.clickhouse import ChdbTransport
from tests.support.grafana import ROOT, TimeRange, alert_rules, dashboards, expand_macros, interpolate, panels
from tests.support.recordings import SPOT_RAW, recording
from tests.support.reference import RefWindow, reference_windows, trades_from_recording

pytestmark = pytest.mark.integration

WRITE_DELAY = timedelta(milliseconds=250)
# The time ranges a user picks, and the rollup the dashboard is expected to choose for each.
RANGES = {"10m": (timedelta(minutes=10), "pulse_metrics_1s"), "2h": (timedelta(hours=2), "pulse_metrics_5s"),
          "2d": (timedelta(days=2), "pulse_metrics_1m")}


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _metrics_row(w: RefWindow, version: int, written_at: datetime) -> dict[str, Any]:
    buy = (w.total_volume + w.net_delta) / 2
    latency_ms = (written_at - _utc(w.window_start_ms)).total_seconds() * 1000
    return {
        "symbol": w.symbol, "window_start": _utc(w.window_start_ms), "window_end": _utc(w.window_start_ms + 1000),
        "vwap": w.vwap, "net_delta": w.net_delta, "buy_pressure_pct": w.buy_pressure_pct,
        "total_volume": w.total_volume, "trade_count": w.trade_count, "avg_price_1_sec": w.avg_price,
        "signal": w.signal, "open": w.open, "high": w.high, "low": w.low, "close": w.close,
        "buy_volume": buy, "sell_volume": w.total_volume - buy, "quote_volume": w.vwap * w.total_volume,
        "first_agg_trade_id": w.first_agg_id, "last_agg_trade_id": w.last_agg_id,
        "expected_trade_count": w.last_agg_id - w.first_agg_id + 1,
        "avg_ingest_latency_ms": 40.0, "max_ingest_latency_ms": 90.0,
        "avg_write_latency_ms": latency_ms - 500, "max_write_latency_ms": latency_ms,
        "written_at": written_at, "version": version,
    }


def _table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist([{k: (v.replace(tzinfo=None) if isinstance(v, datetime) else v)
                                  for k, v in row.items()} for row in rows])


class Stack:
    def __init__(self, transport: ChdbTransport, windows: dict[tuple[str, int], RefWindow]) -> None:
        self.transport = transport
        self.windows = windows
        self.first = _utc(min(ms for _, ms in windows))
        self.last_end = _utc(max(ms for _, ms in windows) + 1000)

    def time_range(self, span: timedelta) -> TimeRange:
        end = self.last_end + timedelta(seconds=2)
        # Grafana's $__interval: the range over about 1000 points, at least 1 s.
        return TimeRange(end - span, end, max(span.total_seconds() / 1000, 1.0))

    def run(self, sql: str, tr: TimeRange, variables: dict[str, str]) -> pa.Table:
        table: pa.Table = self.transport.query_arrow(expand_macros(interpolate(sql, variables), tr))
        return table

    def types(self, sql: str, tr: TimeRange, variables: dict[str, str]) -> dict[str, str]:
        """ClickHouse's own column types (Arrow turns DateTime into uint32; the plugin sees a time)."""
        described = self.transport.query_arrow(f"DESCRIBE ({expand_macros(interpolate(sql, variables), tr)})")
        return dict(zip(described.column("name").to_pylist(), described.column("type").to_pylist(), strict=True))


@pytest.fixture
def stack(database: ChdbTransport) -> Stack:
    windows = reference_windows(trades_from_recording(recording(SPOT_RAW)))
    ordered = sorted(windows.values(), key=lambda w: (w.window_start_ms, w.symbol))
    # The job writes a window again when late trades change it: an older version of the first ones,
    # with wrong counts, that FINAL (and so every panel) must not show.
    stale = [_metrics_row(w, 1, _utc(w.window_start_ms + 1000) + WRITE_DELAY) | {"trade_count": 1}
             for w in ordered[:20]]
    fresh = [_metrics_row(w, 2, _utc(w.window_start_ms + 1000) + 2 * WRITE_DELAY) for w in ordered]
    database.insert_arrow("pulse_metrics", _table(stale + fresh))
    first_ms, last_ms = ordered[0].window_start_ms, ordered[-1].window_start_ms + 1000
    health = [{"reported_at": _utc(ms), "query_name": name, "batch_id": i, "input_rows": 20,
               "input_rows_per_second": 40.0, "processed_rows_per_second": 400.0,
               "late_rows_dropped": i % 7 == 0, "late_trades": 3 * (i % 7 == 0), "state_rows": 12,
               "watermark": _utc(ms - 2000) if i else None, "batch_duration_ms": 80, "data_loss_offsets": 0}
              for i, ms in enumerate(range(first_ms, last_ms, 500)) for name in ("metrics", "rejects")]
    database.insert_arrow("pulse_health", _table(health))
    rejects = [{"rejected_at": _utc(first_ms + 1000 * i), "topic": "pulse.aggtrades.v1", "partition": i % 3,
                "offset": 100 + i, "kafka_time": _utc(first_ms + 1000 * i - 5), "reason": "invalid JSON",
                "raw_value": "{not json", "version": 1} for i in range(3)]
    database.insert_arrow("pulse_rejects", _table(rejects))
    return Stack(database, windows)


def _variables(dashboard: dict[str, Any], stack: Stack, tr: TimeRange) -> Iterator[dict[str, str]]:
    """Each value of the symbol variable, with the other query variables resolved as Grafana would."""
    values: dict[str, list[str]] = {}
    for variable in dashboard["templating"]["list"]:
        result = stack.run(variable["query"], tr, {})
        assert result.num_columns >= 1 and result.num_rows >= 1, f"${variable['name']} has no values"
        values[variable["name"]] = [str(v) for v in result.column(0).to_pylist()]
    if not values:
        yield {}
        return
    for symbol in values.get("symbol", [""]):
        yield {name: (symbol if name == "symbol" else options[0]) for name, options in values.items()}


def _fields(panel: dict[str, Any], table: pa.Table) -> list[str]:
    pattern = panel["options"]["reduceOptions"]["fields"]
    return [c for c in table.column_names if re.fullmatch(pattern.strip("/"), c)]


def _bare(ch_type: str) -> str:
    return re.sub(r"^(?:Nullable|LowCardinality)\((.*)\)$", r"\1", ch_type)


def _numeric(ch_type: str) -> bool:
    return re.match(r"(U?Int|Float|Decimal)\d*", _bare(ch_type)) is not None


def _time(ch_type: str) -> bool:
    return _bare(ch_type).startswith("DateTime")


def _string(ch_type: str) -> bool:
    return _bare(_bare(ch_type)) == "String"


def _check_columns(panel: dict[str, Any], table: pa.Table, types: dict[str, str]) -> None:
    title, kind, fmt = panel["title"], panel["type"], panel["targets"][0]["format"]
    assert list(types) == table.column_names
    assert table.num_rows > 0, f"{title}: no rows"
    if fmt == 0 or kind == "state-timeline":
        assert table.column_names[0] == "time" and _time(types["time"]), \
            f"{title}: the first column must be the time column, got {types}"
    if fmt == 0:
        others = {name: t for name, t in types.items() if name != "time"}
        assert any(_numeric(t) for t in others.values()), f"{title}: no value column in {types}"
        # Strings become series labels in the plugin's long-to-wide conversion; nothing else may appear.
        assert all(_numeric(t) or _string(t) for t in others.values()), f"{title}: {types}"
    if kind == "state-timeline":
        assert _string(types["signal"])
    if kind in ("stat", "piechart"):
        fields = _fields(panel, table)
        assert fields, f"{title}: {panel['options']['reduceOptions']['fields']} matches no column of {types}"
        for name in fields:
            assert _numeric(types[name]) or name == "signal", f"{title}: {name} is {types[name]}"
    for override in panel["fieldConfig"].get("overrides", []):
        if override["matcher"]["id"] == "byName":
            assert override["matcher"]["options"] in table.column_names, f"{title}: override names a missing column"


@pytest.mark.parametrize("span", sorted(RANGES))
def test_every_panel_query_runs_and_returns_the_columns_it_plots(stack: Stack, span: str) -> None:
    tr = stack.time_range(RANGES[span][0])
    checked = 0
    for name, dashboard in dashboards().items():
        for variables in _variables(dashboard, stack, tr):
            if "rollup" in variables:
                assert variables["rollup"] == RANGES[span][1], f"{name}: wrong resolution for {span}"
            for panel in panels(dashboard):
                for target in panel.get("targets", []):
                    _check_columns(panel, stack.run(target["rawSql"], tr, variables),
                                   stack.types(target["rawSql"], tr, variables))
                    checked += 1
    assert checked >= 20


def test_signal_panels_show_each_window_once_with_the_reference_values(stack: Stack) -> None:
    (signals,) = [d for d in dashboards().values() if d["uid"] == "pulse-signals"]
    by_title = {p["title"]: p["targets"][0]["rawSql"] for p in panels(signals) if p.get("targets")}
    tr = stack.time_range(RANGES["10m"][0])
    for symbol in sorted({s for s, _ in stack.windows}):
        expected = sorted((w for (s, _), w in stack.windows.items() if s == symbol), key=lambda w: w.window_start_ms)
        variables = {"symbol": symbol, "rollup": "pulse_metrics_1s"}
        prices = stack.run(by_title["Price vs VWAP"], tr, variables).to_pylist()
        assert [row["vwap"] for row in prices] == pytest.approx([w.vwap for w in expected])
        assert [row["price"] for row in prices] == pytest.approx([w.close for w in expected])
        volume = stack.run(by_title["Volume and trade count"], tr, variables).to_pylist()
        assert [row["trade_count"] for row in volume] == [w.trade_count for w in expected]
        mix = {row["signal"]: row["windows"] for row in stack.run(by_title["Signal mix"], tr, variables).to_pylist()}
        assert mix == dict(Counter(w.signal for w in expected))
        latest = stack.run(by_title["Latest signal"], tr, variables).to_pylist()
        assert latest[0]["signal"] == expected[-1].signal
        # The 1-minute rollup sums the same windows: the trades are all there, counted once.
        long_range = stack.time_range(RANGES["2d"][0])
        rolled = stack.run(by_title["Volume and trade count"], long_range, variables | {"rollup": "pulse_metrics_1m"})
        assert sum(rolled.column("trade_count").to_pylist()) == sum(w.trade_count for w in expected)


def test_alert_query_measures_seconds_since_the_newest_window(stack: Stack) -> None:
    (rule,) = alert_rules()
    (query,) = [step for step in rule["data"] if step["datasourceUid"] != "__expr__"]
    tr = stack.time_range(timedelta(seconds=query["relativeTimeRange"]["from"]))
    rows = stack.run(query["model"]["rawSql"], tr, {})
    assert rows.column_names[0] == "time" and _time(stack.types(query["model"]["rawSql"], tr, {})["time"])
    assert set(rows.column_names) == {"time", "symbol", "seconds_since_last_window"}
    threshold = rule["data"][-1]["model"]["conditions"][0]["evaluator"]["params"][0]
    # A recording from 2021: every symbol is long silent, so the rule fires for each.
    assert all(value > threshold for value in rows.column("seconds_since_last_window").to_pylist())
    # A window that just closed silences it for that symbol only.
    now = datetime.now(UTC)
    newest = max((w for w in stack.windows.values() if w.symbol == "BTCUSDT"), key=lambda w: w.window_start_ms)
    live = _metrics_row(newest, 3, now) | {"window_start": now - timedelta(seconds=2),
                                           "window_end": now - timedelta(seconds=1)}
    stack.transport.insert_arrow("pulse_metrics", _table([live]))
    rows_after = stack.run(query["model"]["rawSql"], tr, {}).to_pylist()
    after = {row["symbol"]: row["seconds_since_last_window"] for row in rows_after}
    assert after["BTCUSDT"] < threshold
    assert all(seconds > threshold for symbol, seconds in after.items() if symbol != "BTCUSDT")


def test_play_queries_in_docs_run_on_the_schema(stack: Stack) -> None:
    text = (ROOT / "docs" / "queries.md").read_text()
    queries = re.findall(r"```sql\n(.*?)```", text, flags=re.DOTALL)
    assert len(queries) >= 5
    # `now()` moved to the end of the recorded session, so the filters select the inserted windows.
    session_end = f"toDateTime64('{stack.last_end:%Y-%m-%d %H:%M:%S}', 3, 'UTC')"
    for query in queries:
        rows = stack.transport.query_arrow(query.replace("now()", session_end))
        assert rows.num_rows > 0, query
