"""The read side of the result tables: every query the run summary, the terminal dashboard and the
notebook ask of `pulse_metrics`, `pulse_rejects` and the views, in one place, over any transport.

Values interpolated into SQL are numbers (cast here) or quoted here; nothing else reaches a query.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from pulse.storage.clickhouse import ClickHouseTransport


def _after(column: str, since_ms: int) -> str:
    return f"{column} > fromUnixTimestamp64Milli(toInt64({int(since_ms)}))"


def quote_string(value: str) -> str:
    """A ClickHouse string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass(frozen=True)
class RunResults:
    """What one run left in the store: its windows by symbol and by signal, and its rejects."""

    windows_by_symbol: dict[str, int]
    signals: dict[str, int]
    rejects: int

    @property
    def windows(self) -> int:
        return sum(self.windows_by_symbol.values())


class Results:
    def __init__(self, transport: ClickHouseTransport) -> None:
        self.transport = transport

    # -- the run summary ---------------------------------------------------------------------------

    def run(self, since_ms: int) -> RunResults:
        """What was written after `since_ms` (a run's start)."""
        return RunResults(self.windows_by_symbol(since_ms), self.windows_by_signal(since_ms), self.rejects(since_ms))

    def windows_by_symbol(self, since_ms: int = 0) -> dict[str, int]:
        """Windows (one per symbol and second) written after `since_ms`, per symbol."""
        rows = self.transport.query_arrow(f"SELECT symbol, count() AS windows FROM pulse_metrics FINAL "
                                          f"WHERE {_after('written_at', since_ms)} GROUP BY symbol").to_pylist()
        return {str(r["symbol"]): int(r["windows"]) for r in rows}

    def windows_by_signal(self, since_ms: int = 0) -> dict[str, int]:
        rows = self.transport.query_arrow(f"SELECT signal, count() AS windows FROM pulse_metrics FINAL "
                                          f"WHERE {_after('written_at', since_ms)} GROUP BY signal").to_pylist()
        return {str(r["signal"]): int(r["windows"]) for r in rows}

    def rejects(self, since_ms: int = 0) -> int:
        rows = self.transport.query_arrow(
            f"SELECT count() AS n FROM pulse_rejects FINAL WHERE {_after('rejected_at', since_ms)}").to_pylist()
        return int(rows[0]["n"])

    def merge_versions(self) -> None:
        """Merge every window's versions now, so the table itself holds one row per window."""
        self.transport.command("OPTIMIZE TABLE pulse_metrics FINAL")

    # -- the terminal dashboard --------------------------------------------------------------------

    def windows_written_after(self, since_ms: int) -> list[dict[str, Any]]:
        """Window rows written after `since_ms`, in write order: what a live view has not shown yet."""
        rows: list[dict[str, Any]] = self.transport.query_arrow(f"""
SELECT venue, symbol, base_asset AS asset, quote_asset AS quote, toUnixTimestamp64Milli(window_start) AS ws,
       close, vwap, net_delta, buy_pressure_pct AS buy, total_volume AS volume, buy_volume, signal,
       avg_write_latency_ms AS write_ms, avg_ingest_latency_ms AS ingest_ms,
       toUnixTimestamp64Milli(written_at) AS written_ms
FROM pulse_metrics WHERE {_after('written_at', since_ms)} ORDER BY written_at, version""").to_pylist()
        return rows

    def newest_written_ms(self) -> int:
        """When the newest window row was written (epoch ms), 0 for an empty table."""
        row = self.transport.query_arrow(
            "SELECT count() AS n, toUnixTimestamp64Milli(max(written_at)) AS ms FROM pulse_metrics").to_pylist()[0]
        return int(row["ms"]) if int(row["n"]) else 0

    # -- the notebook ------------------------------------------------------------------------------

    def symbols_by_trades(self) -> list[str]:
        rows = self.transport.query_arrow(
            "SELECT symbol, sum(trade_count) AS trades FROM pulse_metrics_latest GROUP BY symbol ORDER BY trades DESC"
        ).to_pylist()
        return [str(row["symbol"]) for row in rows]

    def newest_windows(self, symbol: str, limit: int) -> pa.Table:
        """The newest `limit` windows of `symbol`, newest first."""
        return self.transport.query_arrow(f"""
SELECT symbol, window_start, trade_count, expected_trade_count, avg_price_1_sec, vwap, net_delta,
       buy_pressure_pct, signal, open, high, low, close, max_write_latency_ms
FROM pulse_metrics_latest
WHERE symbol = {quote_string(symbol)}
ORDER BY window_start DESC
LIMIT {int(limit)}""")

    def signal_quality(self) -> pa.Table:
        """Hit rate and mean forward return per signal and horizon, all symbols weighted by windows."""
        return self.transport.query_arrow(
            # Aliases differ from the view's columns: the sums read the view's own.
            "SELECT signal, horizon_s, sum(q.signals) AS windows,"
            " round(sum(q.mean_return_bps * q.signals) / windows, 3) AS return_bps,"
            " round(sum(q.hit_rate_pct * q.signals) / windows, 1) AS hit_pct"
            " FROM pulse_signal_quality AS q GROUP BY signal, horizon_s ORDER BY signal, horizon_s")

    def outcomes(self) -> pa.Table:
        """Each window's forward price per horizon, with what the signal rule reads."""
        return self.transport.query_arrow(
            "SELECT o.horizon_s AS horizon_s, o.close AS close, o.forward_price AS forward_price,"
            " m.avg_price_1_sec AS avg_price, m.vwap AS vwap, m.buy_volume AS buy_volume, m.sell_volume AS sell_volume"
            " FROM pulse_signal_outcomes AS o INNER JOIN pulse_metrics_latest AS m"
            " ON o.venue = m.venue AND o.symbol = m.symbol AND o.window_start = m.window_start")
