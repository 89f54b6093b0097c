"""The read side, on the real engine: what the summary, the dashboard and the notebook ask."""

from __future__ import annotations

from pulse.settings import PulseSettings
from pulse.storage.clickhouse import ChdbEngine, ChdbTransport, apply_schema
from pulse.storage.results import Results
from tests.support.names import unique_name

COLUMNS = "symbol, window_start, window_end, trade_count, signal, written_at, version"
HOSTILE = "x'); DROP TABLE pulse_metrics; --\\"


def test_summary_dashboard_and_notebook_queries(chdb_engine: ChdbEngine, base_settings: PulseSettings) -> None:
    transport = ChdbTransport(base_settings.chdb_path, unique_name("results"))
    apply_schema(transport, base_settings.schema_dir)
    assert transport.local and transport.address == str(base_settings.chdb_path)
    results = Results(transport)
    assert results.newest_written_ms() == 0
    transport.command(
        f"INSERT INTO pulse_metrics ({COLUMNS}) VALUES "
        "('BTCUSDT', '2026-01-01 00:00:00', '2026-01-01 00:00:01', 2, 'NEUTRAL', '2026-01-01 00:00:01.500', 2), "
        "('BTCUSDT', '2026-01-01 00:00:00', '2026-01-01 00:00:01', 3, 'STRONG BUY', '2026-01-01 00:00:02', 3), "
        "('ETHUSDT', '2026-01-01 00:00:01', '2026-01-01 00:00:02', 1, 'NEUTRAL', '2026-01-01 00:00:03', 1)")
    # The newest state of each window, counted per symbol and per signal; `since` keeps the later rows.
    assert results.windows_by_symbol() == {"BTCUSDT": 1, "ETHUSDT": 1}
    assert results.windows_by_signal() == {"STRONG BUY": 1, "NEUTRAL": 1}
    later = 1_767_225_602_500  # 2026-01-01 00:00:02.500 UTC
    assert results.windows_by_symbol(later) == {"ETHUSDT": 1}
    assert results.rejects() == 0
    # Every version not merged away yet, in write order (the engine may merge the BTC pair at once).
    written = results.windows_written_after(0)
    assert {r["symbol"] for r in written} == {"BTCUSDT", "ETHUSDT"} and written[-1]["symbol"] == "ETHUSDT"
    assert [r["written_ms"] for r in written] == sorted(r["written_ms"] for r in written)
    assert [r["symbol"] for r in results.windows_written_after(later)] == ["ETHUSDT"]
    assert results.newest_written_ms() == 1_767_225_603_000
    assert results.symbols_by_trades() == ["BTCUSDT", "ETHUSDT"]
    assert results.newest_windows("BTCUSDT", 5).column("trade_count").to_pylist() == [3]
    # A symbol is data: quoted, it matches nothing and changes nothing.
    assert results.newest_windows(HOSTILE, 5).num_rows == 0
    assert results.windows_by_symbol() == {"BTCUSDT": 1, "ETHUSDT": 1}
