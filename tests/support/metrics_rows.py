"""Reference windows as the rows the Spark job writes to `pulse_metrics`, for the stack tests.

Each row carries a `version` (the job's batch id): write an older version of a window beside the
newest to check that a reader sees only the newest (ReplacingMergeTree, FINAL).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from tests.support.reference import RefWindow


def utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def metrics_row(w: RefWindow, version: int, written_at: datetime, venue: str = "binance-usdm") -> dict[str, Any]:
    buy = (w.total_volume + w.net_delta) / 2
    latency_ms = (written_at - utc(w.window_start_ms)).total_seconds() * 1000
    # The recordings' symbols all quote USDT.
    base, quote = (w.symbol.removesuffix("USDT"), "USDT") if w.symbol.endswith("USDT") else (w.symbol, "")
    return {
        "venue": venue, "symbol": w.symbol, "base_asset": base, "quote_asset": quote,
        "window_start": utc(w.window_start_ms), "window_end": utc(w.window_start_ms + 1000),
        "vwap": w.vwap, "net_delta": w.net_delta, "buy_pressure_pct": w.buy_pressure_pct,
        "total_volume": w.total_volume, "trade_count": w.trade_count, "avg_price_1_sec": w.avg_price,
        "signal": w.signal, "open": w.open, "high": w.high, "low": w.low, "close": w.close,
        "buy_volume": buy, "sell_volume": w.total_volume - buy, "quote_volume": w.vwap * w.total_volume,
        "first_agg_trade_id": w.first_agg_id, "last_agg_trade_id": w.last_agg_id,
        "expected_trade_count": w.last_agg_id - w.first_agg_id + 1,
        "avg_ingest_latency_ms": 40.0, "max_ingest_latency_ms": 90.0,
        "avg_write_latency_ms": latency_ms - 500, "max_write_latency_ms": latency_ms,
        "first_trade_time": utc(w.window_start_ms), "written_at": written_at, "version": version,
    }


def arrow_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows as Arrow, datetimes as naive UTC."""
    return pa.Table.from_pylist([{k: (v.replace(tzinfo=None) if isinstance(v, datetime) else v)
                                  for k, v in row.items()} for row in rows])
