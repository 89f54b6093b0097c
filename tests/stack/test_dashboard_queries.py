"""Every Grafana query — panels, annotations, dashboard variables, the alert rule — run on chDB.

Rows come from a real Binance recording: windows computed by the independent reference
(tests/support/reference.py) and written to pulse_metrics as the job writes them (an older version
of some windows first, so FINAL matters), with pulse_health and pulse_rejects rows beside them.
Each query is expanded as Grafana and the ClickHouse plugin would (variables, then macros) for a
short, a medium and a long time range, so the 1 s view and both rollups are read, and its result
must have the columns the panel's visualisation needs.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest

from pulse.storage.clickhouse import ChdbTransport
from tests.support.grafana import (
    ROOT,
    TimeRange,
    alert_rules,
    annotation_queries,
    dashboards,
    expand_macros,
    interpolate,
    panels,
)
from tests.support.metrics_rows import arrow_table, metrics_row, utc
from tests.support.recordings import SPOT_RAW, recording
from tests.support.reference import RefWindow, reference_windows, trades_from_recording
from tests.support.signal_quality import reference_outcomes, reference_signal_quality

pytestmark = pytest.mark.integration

WRITE_DELAY = timedelta(milliseconds=250)
# The time ranges a user picks, and the rollup the dashboard is expected to choose for each.
RANGES = {"10m": (timedelta(minutes=10), "pulse_metrics_1s"), "2h": (timedelta(hours=2), "pulse_metrics_5s"),
          "2d": (timedelta(days=2), "pulse_metrics_1m")}


class Stack:
    def __init__(self, transport: ChdbTransport, windows: dict[tuple[str, int], RefWindow]) -> None:
        self.transport = transport
        self.windows = windows
        self.first = utc(min(ms for _, ms in windows))
        self.last_end = utc(max(ms for _, ms in windows) + 1000)

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
    stale = [metrics_row(w, 1, utc(w.window_start_ms + 1000) + WRITE_DELAY) | {"trade_count": 1}
             for w in ordered[:20]]
    fresh = [metrics_row(w, 2, utc(w.window_start_ms + 1000) + 2 * WRITE_DELAY) for w in ordered]
    database.insert_arrow("pulse_metrics", arrow_table(stale + fresh))
    first_ms, last_ms = ordered[0].window_start_ms, ordered[-1].window_start_ms + 1000
    health = [{"reported_at": utc(ms), "query_name": name, "batch_id": i, "input_rows": 20,
               "input_rows_per_second": 40.0, "processed_rows_per_second": 400.0,
               "late_rows_dropped": i % 7 == 0, "late_trades": 3 * (i % 7 == 0), "state_rows": 12,
               "watermark": utc(ms - 2000) if i else None, "batch_duration_ms": 80, "data_loss_offsets": 0}
              for i, ms in enumerate(range(first_ms, last_ms, 500)) for name in ("metrics", "rejects")]
    database.insert_arrow("pulse_health", arrow_table(health))
    rejects = [{"rejected_at": utc(first_ms + 1000 * i), "topic": "pulse.aggtrades.v1", "partition": i % 3,
                "offset": 100 + i, "kafka_time": utc(first_ms + 1000 * i - 5), "reason": "invalid JSON",
                "raw_value": "{not json", "version": 1} for i in range(3)]
    database.insert_arrow("pulse_rejects", arrow_table(rejects))
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
    if kind == "candlestick":
        mapped = panel["options"]["fields"]
        assert {"open", "high", "low", "close", "volume"} <= set(mapped), f"{title}: {mapped}"
        for name in mapped.values():
            assert name in types and _numeric(types[name]), f"{title}: {name} is not a numeric column of {types}"
    if kind in ("stat", "piechart"):
        fields = _fields(panel, table)
        assert fields, f"{title}: {panel['options']['reduceOptions']['fields']} matches no column of {types}"
        for name in fields:
            assert _numeric(types[name]) or name == "signal", f"{title}: {name} is {types[name]}"
    for override in panel["fieldConfig"].get("overrides", []):
        if override["matcher"]["id"] == "byName":
            assert override["matcher"]["options"] in table.column_names, f"{title}: override names a missing column"


def _check_annotation(annotation: dict[str, Any], table: pa.Table, types: dict[str, str]) -> None:
    """Grafana's standard annotation mapping: `time`, `text`, and `tags` as one comma-separated string."""
    name = annotation["name"]
    assert list(types) == table.column_names
    assert table.num_rows > 0, f"{name}: no rows"
    assert set(types) == {"time", "text", "tags"}, f"{name}: {types}"
    assert _time(types["time"]) and _string(types["text"]) and _string(types["tags"]), f"{name}: {types}"


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
            for annotation in annotation_queries(dashboard):
                sql = annotation["target"]["rawSql"]
                _check_annotation(annotation, stack.run(sql, tr, variables), stack.types(sql, tr, variables))
                checked += 1
    assert checked >= 25


HOSTILE_SYMBOLS = ["x' OR 1=1 --", "x\\' OR 1=1 --", "\\", "'; DROP TABLE pulse_metrics; --", "BTC\u0000", "é'\""]


@pytest.mark.parametrize("symbol", HOSTILE_SYMBOLS)
def test_a_symbol_variable_can_never_close_the_sql_string_it_lands_in(stack: Stack, symbol: str) -> None:
    """A user can put anything in `var-symbol=` of a dashboard URL: every query that reads it runs, and
    matches nothing, whatever quotes or backslashes the value holds."""
    tr = stack.time_range(RANGES["10m"][0])
    uses = 0
    for dashboard in dashboards().values():
        queries = [t["rawSql"] for p in panels(dashboard) for t in p.get("targets", [])]
        queries += [a["target"]["rawSql"] for a in annotation_queries(dashboard)]
        for sql in (q for q in queries if "${symbol" in q):
            uses += 1
            rows = stack.run(sql, tr, {"symbol": symbol, "rollup": "pulse_metrics_1s"}).to_pylist()
            assert all(row.get("symbol") in (None, symbol) for row in rows), sql
            assert not any(row.get("trade_count") or row.get("windows") for row in rows), sql
    assert uses >= 10


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


def _signals_dashboard() -> dict[str, Any]:
    (signals,) = [d for d in dashboards().values() if d["uid"] == "pulse-signals"]
    return signals


def _symbol_windows(stack: Stack, symbol: str) -> list[RefWindow]:
    return sorted((w for (s, _), w in stack.windows.items() if s == symbol), key=lambda w: w.window_start_ms)


def _ms(moment: datetime | int) -> int:
    """A time column as epoch ms: Arrow gives a DateTime64 as a datetime, a DateTime as epoch seconds."""
    if isinstance(moment, int):
        return moment * 1000
    return round(moment.replace(tzinfo=moment.tzinfo or UTC).timestamp() * 1000)


def _in_range(start_ms: int, tr: TimeRange) -> bool:
    # $__timeFilter and $__fromTime/$__toTime compare with whole seconds (toDateTime), inclusive.
    return tr.start.timestamp() // 1 * 1000 <= start_ms <= tr.end.timestamp() // 1 * 1000


def _later_start(stack: Stack, seconds: int) -> TimeRange:
    """The 10-minute range cut to start `seconds` after the first window: data before it exists."""
    tr = stack.time_range(RANGES["10m"][0])
    return TimeRange(stack.first + timedelta(seconds=seconds, milliseconds=500), tr.end, tr.interval_s)


def test_candles_and_cvd_panels_match_the_reference(stack: Stack) -> None:
    by_title = {p["title"]: p["targets"][0]["rawSql"] for p in panels(_signals_dashboard()) if p.get("targets")}
    for tr in (stack.time_range(RANGES["10m"][0]), _later_start(stack, 20)):
        for symbol in sorted({s for s, _ in stack.windows}):
            expected = [w for w in _symbol_windows(stack, symbol) if _in_range(w.window_start_ms, tr)]
            variables = {"symbol": symbol, "rollup": "pulse_metrics_1s"}
            candles = stack.run(by_title["Candles with VWAP"], tr, variables).to_pylist()
            assert [_ms(row["time"]) for row in candles] == [w.window_start_ms for w in expected]
            for column in ("open", "high", "low", "close", "vwap"):
                assert [row[column] for row in candles] == pytest.approx([getattr(w, column) for w in expected])
            assert [row["volume"] for row in candles] == pytest.approx([w.total_volume for w in expected])
            # CVD restarts at the range's first window: the running sum of the net deltas from there.
            cvd = stack.run(by_title["Cumulative volume delta"], tr, variables).to_pylist()
            assert [_ms(row["time"]) for row in cvd] == [w.window_start_ms for w in expected]
            running, sums = Decimal(0), []
            for w in expected:
                running += Decimal(w.net_delta)
                sums.append(float(running))
            assert [row["cvd"] for row in cvd] == pytest.approx(sums, rel=1e-9, abs=1e-9)
            assert [row["price"] for row in cvd] == [w.close for w in expected]


def _changes(windows: list[RefWindow], tr: TimeRange) -> list[tuple[int, str, str]]:
    """(time, text, tags) of every window whose signal is not NEUTRAL and differs from the window before it."""
    marks, previous = [], ""
    for w in windows:
        if _in_range(w.window_start_ms, tr) and w.signal not in ("NEUTRAL", previous):
            was = f" (was {previous})" if previous else ""
            marks.append((w.window_start_ms, f"{w.symbol}: {w.signal}{was}", f"{w.signal},{w.symbol}"))
        previous = w.signal
    return marks


def test_signal_change_annotations_mark_each_change_to_a_non_neutral_signal(stack: Stack) -> None:
    (annotation,) = annotation_queries(_signals_dashboard())
    sql = annotation["target"]["rawSql"]
    # The whole session, and a range that starts mid-session: its first window compares with the one
    # before the range, so a signal that merely continues is not marked at the left edge.
    for tr in (stack.time_range(RANGES["10m"][0]), _later_start(stack, 30)):
        for symbol in sorted({s for s, _ in stack.windows}):
            rows = stack.run(sql, tr, {"symbol": symbol}).to_pylist()
            got = sorted((_ms(row["time"]), row["text"], row["tags"]) for row in rows)
            expected = _changes(_symbol_windows(stack, symbol), tr)
            assert got == expected
            assert expected, f"{symbol}: the recording should have signal changes"


def test_signal_quality_panel_matches_the_reference_over_the_time_range(stack: Stack) -> None:
    (panel,) = [p for p in panels(_signals_dashboard()) if p["title"] == "Signal quality"]
    sql = panel["targets"][0]["rawSql"]
    for tr in (stack.time_range(RANGES["10m"][0]), _later_start(stack, 20)):
        for symbol in sorted({s for s, _ in stack.windows}):
            windows = _symbol_windows(stack, symbol)
            # Outcomes look at every later window, in the range or not; the range picks the signal windows.
            outcomes = [o for o in reference_outcomes(windows) if _in_range(o.window_start_ms, tr)]
            expected = reference_signal_quality(outcomes)
            rows = stack.run(sql, tr, {"symbol": symbol}).to_pylist()
            assert {(symbol, r["signal"], r["horizon_s"]): r["signals"] for r in rows} == \
                {key: q.signals for key, q in expected.items()}
            for row in rows:
                ref = expected[(symbol, row["signal"], row["horizon_s"])]
                assert row["mean_return_bps"] == pytest.approx(float(ref.mean_return_bps), rel=1e-9, abs=1e-9)
                if ref.hit_rate_pct is None:
                    assert row["hit_rate_pct"] is None
                else:
                    assert row["hit_rate_pct"] == pytest.approx(float(ref.hit_rate_pct), rel=1e-12)
    # Over the whole session the panel shows the rows of pulse_signal_quality.
    everything = stack.time_range(RANGES["2d"][0])
    for symbol in sorted({s for s, _ in stack.windows}):
        view = stack.transport.query_arrow(
            f"SELECT signal, horizon_s, signals, hit_rate_pct, mean_return_bps FROM pulse_signal_quality "
            f"WHERE symbol = '{symbol}' ORDER BY signal, horizon_s").to_pylist()
        panel_rows = sorted(stack.run(sql, everything, {"symbol": symbol}).to_pylist(),
                            key=lambda r: (r["signal"], r["horizon_s"]))
        assert [(r["signal"], r["horizon_s"], r["signals"]) for r in panel_rows] == \
            [(r["signal"], r["horizon_s"], r["signals"]) for r in view]


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
    live = metrics_row(newest, 3, now) | {"window_start": now - timedelta(seconds=2),
                                           "window_end": now - timedelta(seconds=1)}
    stack.transport.insert_arrow("pulse_metrics", arrow_table([live]))
    rows_after = stack.run(query["model"]["rawSql"], tr, {}).to_pylist()
    after = {row["symbol"]: row["seconds_since_last_window"] for row in rows_after}
    assert after["BTCUSDT"] < threshold
    assert all(seconds > threshold for symbol, seconds in after.items() if symbol != "BTCUSDT")


def test_play_queries_in_docs_run_on_the_schema(stack: Stack) -> None:
    text = (ROOT / "docs" / "queries.md").read_text()
    queries = re.findall(r"```sql\n(.*?)```", text, flags=re.DOTALL)
    assert len(queries) >= 5
    for view in ("pulse_cvd(", "pulse_signal_quality", "pulse_signal_outcomes", "pulse_asset_metrics"):
        assert any(view in query for query in queries), f"docs/queries.md has no query on {view}"
    # `now()` moved to the end of the recorded session, so the filters select the inserted windows.
    session_end = f"toDateTime64('{stack.last_end:%Y-%m-%d %H:%M:%S}', 3, 'UTC')"
    for query in queries:
        rows = stack.transport.query_arrow(query.replace("now()", session_end))
        assert rows.num_rows > 0, query


def _by_title(dashboard: dict[str, Any]) -> dict[str, str]:
    return {p["title"]: t["rawSql"] for p in panels(dashboard) for t in p.get("targets", [])}


def test_an_asset_across_venues_is_split_by_venue_as_the_reference(stack: Stack) -> None:
    """A second venue (OKX, 5 bps dearer) trades the busiest symbol's asset in the same seconds: the
    asset variable lists it first, and "Venues of $asset" gives each venue's trades, volume, VWAP, net
    delta and share exactly as sums over the reference windows."""
    trades = Counter[str]()
    for (symbol, _), w in stack.windows.items():
        trades[symbol] += w.trade_count
    symbol = trades.most_common(1)[0][0]
    asset = symbol.removesuffix("USDT")
    ours = [w for (s, _), w in stack.windows.items() if s == symbol]
    theirs = [replace(w, symbol=f"{asset}-USDT", vwap=w.vwap * 1.0005) for w in ours]
    stack.transport.insert_arrow("pulse_metrics", arrow_table([
        metrics_row(w, 2, utc(w.window_start_ms + 1000), venue="okx") | {"base_asset": asset, "quote_asset": "USDT"}
        for w in theirs]))
    (signals,) = [d for d in dashboards().values() if d["uid"] == "pulse-signals"]
    tr = stack.time_range(RANGES["2d"][0])
    variable = next(v for v in signals["templating"]["list"] if v["name"] == "asset")
    assert stack.run(variable["query"], tr, {}).column(0).to_pylist()[0] == asset
    rows = stack.run(_by_title(signals)["Venues of $asset"], tr, {"asset": asset}).to_pylist()
    total = 2 * sum(w.total_volume for w in ours)
    expected = {(venue, name): windows for venue, name, windows in
                (("binance-usdm", symbol, ours), ("okx", f"{asset}-USDT", theirs))}
    assert [(r["venue"], r["symbol"]) for r in rows] == sorted(expected, key=lambda k: (k[0], k[1]))
    for row in rows:
        windows = expected[(row["venue"], row["symbol"])]
        volume = sum(w.total_volume for w in windows)
        assert row["trades"] == sum(w.trade_count for w in windows)
        assert math.isclose(row["volume"], volume, rel_tol=1e-9)
        assert math.isclose(row["vwap"], sum(w.vwap * w.total_volume for w in windows) / volume, rel_tol=1e-9)
        assert math.isclose(row["net_delta"], sum(w.net_delta for w in windows), rel_tol=1e-9, abs_tol=1e-9)
        assert math.isclose(row["share"], volume / total, rel_tol=1e-9)


@pytest.mark.parametrize("asset", HOSTILE_SYMBOLS)
def test_an_asset_variable_can_never_close_the_sql_string_it_lands_in(stack: Stack, asset: str) -> None:
    tr = stack.time_range(RANGES["10m"][0])
    queries = [sql for d in dashboards().values() for sql in _by_title(d).values() if "${asset" in sql]
    assert len(queries) == 3
    for sql in queries:
        assert stack.run(sql, tr, {"asset": asset}).num_rows == 0, sql
