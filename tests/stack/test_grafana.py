"""Grafana provisioning, read as Grafana reads it: field names of the ClickHouse plugin v4, one
datasource uid that every panel and the alert rule use, and paths that match the compose mounts.
The panel and annotation queries themselves run on chDB in tests/stack/test_dashboard_queries.py.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.grafana import (
    DATASOURCE_UID,
    GRAFANA,
    PLUGIN_TYPE,
    ROOT,
    alert_rules,
    annotation_queries,
    dashboards,
    panels,
    provisioning,
)

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
GRAFANA_SERVICE = COMPOSE["services"]["grafana"]
ENV_EXAMPLE = dict(line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))


def _mount_target(host_path: str) -> str:
    for mount in GRAFANA_SERVICE["volumes"]:
        source, target = str(mount).split(":")[:2]
        if Path(source) == Path(host_path):
            return target
    raise AssertionError(f"{host_path} is not mounted into grafana")


def _env_reference(value: str) -> str:
    match = re.fullmatch(r"\$\{?(\w+)\}?", value)
    assert match, f"{value!r} should come from the environment, not be written in the file"
    return str(match.group(1))


def test_datasource_uses_the_plugin_v4_fields_and_the_read_only_user() -> None:
    datasources = [d for doc in provisioning("datasources") for d in doc["datasources"]]
    assert [d["uid"] for d in datasources] == [DATASOURCE_UID]
    (source,) = datasources
    assert source["type"] == PLUGIN_TYPE
    data = source["jsonData"]
    assert {"host", "port", "protocol", "username", "defaultDatabase"} <= set(data)
    assert "server" not in data, "v3's `server` is `host` in the v4 plugin"
    assert data["protocol"] == "http" and data["port"] == 8123
    assert data["host"] == "clickhouse" and "clickhouse" in COMPOSE["services"]
    assert data["defaultDatabase"] == COMPOSE["services"]["clickhouse"]["environment"]["CLICKHOUSE_DB"]
    # Credentials come from Grafana's environment, which compose fills with the reader's from .env.
    user_var = _env_reference(data["username"])
    password_var = _env_reference(source["secureJsonData"]["password"])
    assert GRAFANA_SERVICE["environment"][user_var].startswith("${CLICKHOUSE_READER_USER")
    assert GRAFANA_SERVICE["environment"][password_var].startswith("${CLICKHOUSE_READER_PASSWORD")
    assert "password" not in data


def test_dashboard_provider_reads_the_mounted_folder() -> None:
    assert _mount_target("./grafana/provisioning") == "/etc/grafana/provisioning"
    dashboards_in_container = _mount_target("./grafana/dashboards")
    (provider,) = [p for doc in provisioning("dashboards") for p in doc["providers"]]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == dashboards_in_container
    home = GRAFANA_SERVICE["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(dashboards_in_container + "/")
    assert (GRAFANA / "dashboards" / Path(home).name).is_file()
    for folder in ("datasources", "dashboards", "alerting"):
        assert (GRAFANA / "provisioning" / folder).is_dir()


def _datasource_uid(value: Any) -> str | None:
    return value.get("uid") if isinstance(value, dict) else value


def test_every_panel_query_and_variable_uses_the_provisioned_datasource() -> None:
    for name, dashboard in dashboards().items():
        for variable in dashboard["templating"]["list"]:
            if variable["type"] == "query":
                assert _datasource_uid(variable["datasource"]) == DATASOURCE_UID, f"{name}: ${variable['name']}"
        for panel in panels(dashboard):
            if panel["type"] in ("row", "text"):
                continue
            assert _datasource_uid(panel["datasource"]) == DATASOURCE_UID, f"{name}: {panel['title']}"
            assert panel["targets"], f"{name}: {panel['title']} has no query"
            for target in panel["targets"]:
                assert _datasource_uid(target["datasource"]) == DATASOURCE_UID
                assert target["editorType"] == "sql" and target["rawSql"].strip()
                assert target["format"] in (0, 1), "0 = time series, 1 = table in the plugin's Format enum"
        for annotation in annotation_queries(dashboard):
            target = annotation["target"]
            assert _datasource_uid(annotation["datasource"]) == DATASOURCE_UID, f"{name}: {annotation['name']}"
            assert _datasource_uid(target["datasource"]) == DATASOURCE_UID
            assert target["editorType"] == "sql" and target["rawSql"].strip()
            assert target["format"] == 1, "annotations are read from a table"


def test_dashboards_are_the_two_the_issue_asks_for() -> None:
    by_title = {d["title"]: d for d in dashboards().values()}
    assert set(by_title) == {"Pulse — signals", "Pulse — pipeline health"}
    assert len({d["uid"] for d in by_title.values()}) == 2
    signals = by_title["Pulse — signals"]
    assert signals["refresh"] == "1s"
    assert signals["time"] in ({"from": f"now-{m}m", "to": "now"} for m in range(5, 16))
    assert "1s" in signals["timepicker"]["refresh_intervals"]
    assert GRAFANA_SERVICE["environment"]["GF_DASHBOARDS_MIN_REFRESH_INTERVAL"] == "1s"
    assert "symbol" in {v["name"] for v in signals["templating"]["list"]}
    kinds = {p["title"]: p["type"] for p in panels(signals)}
    assert kinds["Price vs VWAP"] == "timeseries"
    assert kinds["Signal"] == "state-timeline" and kinds["Latest signal"] == "stat"
    sql = " ".join(t["rawSql"] for p in panels(signals) for t in p.get("targets", []))
    for column in ("vwap", "net_delta", "buy_pressure_pct", "total_volume", "trade_count", "signal"):
        assert column in sql
    # The trader's view: candles with VWAP and volume, CVD, signal markers, and whether signals mean anything.
    assert kinds["Candles with VWAP"] == "candlestick"
    assert _panels_by_title(signals)["Candles with VWAP"]["options"]["mode"] == "candles+volume"
    assert _panels_by_title(signals)["Candles with VWAP"]["options"]["includeAllFields"], "VWAP is drawn too"
    assert kinds["Cumulative volume delta"] == "timeseries" and "pulse_cvd(" in sql
    assert kinds["Signal quality"] == "table" and "pulse_signal_outcomes" in sql
    (markers,) = annotation_queries(signals)
    assert markers["enable"] and "signal" in markers["target"]["rawSql"]
    assert set(markers["filter"]["ids"]) <= {p["id"] for p in panels(signals)} and not markers["filter"]["exclude"]
    health_sql = " ".join(t["rawSql"] for p in panels(by_title["Pulse — pipeline health"])
                          for t in p.get("targets", []))
    for table in ("pulse_health", "pulse_metrics", "pulse_rejects"):
        assert table in health_sql


def _panels_by_title(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["title"]: p for p in panels(dashboard)}


def test_symbol_variable_refreshes_on_time_range_change() -> None:
    """refresh 2 = on time-range change: a symbol that starts trading shows up without reloading the
    dashboard (1, on load, keeps the list the dashboard opened with)."""
    found = 0
    for name, dashboard in dashboards().items():
        for variable in dashboard["templating"]["list"]:
            if variable["name"] == "symbol":
                assert variable["refresh"] == 2, f"{name}: $symbol refreshes only on load"
                found += 1
    assert found >= 1


def test_alert_rule_fires_on_60_seconds_without_a_window() -> None:
    (rule,) = alert_rules()
    steps = {step["refId"]: step for step in rule["data"]}
    assert rule["condition"] in steps
    (query,) = [s for s in steps.values() if s["datasourceUid"] != "__expr__"]
    assert query["datasourceUid"] == DATASOURCE_UID
    assert query["model"]["editorType"] == "sql" and "pulse_metrics" in query["model"]["rawSql"]
    threshold = steps[rule["condition"]]["model"]
    assert threshold["type"] == "threshold"
    assert threshold["conditions"][0]["evaluator"] == {"type": "gt", "params": [60]}
    # Every expression reads a step that exists, so the chain reaches the query.
    for step in steps.values():
        if step["datasourceUid"] == "__expr__":
            assert step["model"]["expression"] in steps
    # No rows only before the first window: a fresh stack is quiet (tests/stack/test_alert_rule.py).
    assert rule["noDataState"] == "OK"
    assert "WHERE window_start >=" in query["model"]["rawSql"], "the rule watches recently active symbols only"
    linked = {d["uid"]: d for d in dashboards().values()}[rule["annotations"]["__dashboardUid__"]]
    assert int(rule["annotations"]["__panelId__"]) in {p["id"] for p in panels(linked)}


@pytest.mark.parametrize("name", sorted(dashboards()))
def test_panel_ids_are_unique(name: str) -> None:
    ids = [p["id"] for p in panels(dashboards()[name])]
    assert len(ids) == len(set(ids))


def test_reader_user_in_env_example_matches_compose_default() -> None:
    assert ENV_EXAMPLE["CLICKHOUSE_READER_USER"] == "pulse_reader"
    assert "${CLICKHOUSE_READER_USER:-pulse_reader}" in GRAFANA_SERVICE["environment"]["CLICKHOUSE_READER_USER"]
