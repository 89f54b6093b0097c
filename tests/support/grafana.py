"""The Grafana side of the docker stack as the tests read it, and the ClickHouse plugin's macros.

`expand_macros` reproduces the grafana-clickhouse-datasource v4 backend (its pkg/macros): the SQL
text the plugin sends to ClickHouse for a time range and interval, so a query that runs here after
expansion is the query Grafana runs. `interpolate` does Grafana's part before that: dashboard
variables (`$name`, `${name}`), which the frontend replaces before the plugin sees the text.
"""

from __future__ import annotations

import json
import math
import re
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "grafana"
DASHBOARDS = GRAFANA / "dashboards"
PROVISIONING = GRAFANA / "provisioning"
PLUGIN_TYPE = "grafana-clickhouse-datasource"
DATASOURCE_UID = "pulse-clickhouse"


@dataclass(frozen=True)
class TimeRange:
    start: datetime
    end: datetime
    interval_s: float  # Grafana's $__interval for the panel, in seconds


def dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def annotation_queries(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """The dashboard's annotation queries that a datasource runs (not Grafana's built-in one)."""
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if not annotation.get("builtIn"):
            yield annotation


def provisioning(folder: str) -> list[dict[str, Any]]:
    return [yaml.safe_load(path.read_text()) for path in sorted((PROVISIONING / folder).glob("*.y*ml"))]


def alert_rules() -> list[dict[str, Any]]:
    return [rule for document in provisioning("alerting") for group in document.get("groups", [])
            for rule in group["rules"]]


def interpolate(sql: str, variables: Mapping[str, str]) -> str:
    """Replace `${name}`, `${name:percentencode}` and `$name` for the given dashboard variables, as
    Grafana's frontend does. percentencode is Grafana's encodeURIComponentStrict: everything but
    A-Z a-z 0-9 - _ . ~ as %XX of its UTF-8 bytes, so a value can never close a SQL string literal."""
    for name, value in variables.items():
        encoded = urllib.parse.quote(value, safe="")
        sql = sql.replace("${" + name + ":percentencode}", encoded)
        if re.search(r"\$\{" + re.escape(name) + r":", sql):
            raise ValueError(f"a format of ${{{name}}} that this test double does not implement: {sql}")
        # A function, not a replacement string, so backslashes in a value stay literal.
        sql = re.sub(r"\$\{" + re.escape(name) + r"\}|\$" + re.escape(name) + r"\b", _literal(value), sql)
    return sql


def _literal(value: str) -> Callable[[re.Match[str]], str]:
    return lambda _match: value


def _to_datetime(moment: datetime) -> str:
    return f"toDateTime({math.floor(moment.timestamp())})"


def _to_datetime64(moment: datetime) -> str:
    return f"fromUnixTimestamp64Milli({math.floor(moment.timestamp() * 1000)})"


def _one_arg(name: str, args: list[str]) -> str:
    if len(args) != 1:
        raise ValueError(f"$__{name} expects 1 argument, got {len(args)}")
    return args[0]


def _macro(name: str, args: list[str], tr: TimeRange) -> str:
    seconds = int(max(tr.interval_s, 1))
    if name == "fromTime":
        return _to_datetime(tr.start)
    if name == "toTime":
        return _to_datetime(tr.end)
    if name == "fromTime_ms":
        return _to_datetime64(tr.start)
    if name == "toTime_ms":
        return _to_datetime64(tr.end)
    if name in ("timeFilter", "timeFilter_ms"):
        column = _one_arg(name, args)
        bound = _to_datetime if name == "timeFilter" else _to_datetime64
        return f"{column} >= {bound(tr.start)} AND {column} <= {bound(tr.end)}"
    if name == "timeInterval":
        return f"toStartOfInterval(toDateTime({_one_arg(name, args)}), INTERVAL {seconds} second)"
    if name == "timeInterval_ms":
        millis = int(max(tr.interval_s * 1000, 1))
        return f"toStartOfInterval(toDateTime64({_one_arg(name, args)}, 3), INTERVAL {millis} millisecond)"
    if name == "interval_s":
        return str(seconds)
    raise ValueError(f"macro $__{name} is not one the ClickHouse plugin expands")


_MACRO = re.compile(r"\$__(\w+)(?:\(([^()]*)\))?")


def expand_macros(sql: str, tr: TimeRange) -> str:
    def replace(match: re.Match[str]) -> str:
        args = [arg.strip() for arg in match.group(2).split(",")] if match.group(2) is not None else []
        return _macro(match.group(1), args, tr)

    expanded = _MACRO.sub(replace, sql)
    if "$" in expanded:
        raise ValueError(f"unexpanded variable or macro left in:\n{expanded}")
    return expanded
