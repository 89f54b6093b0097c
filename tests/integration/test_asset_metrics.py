"""`pulse_asset_metrics`, the view across venues, against an independent computation.

Three venues trade BTC in the same two seconds, each in its own protocol (Binance.US aggTrades,
OKX spot and an inverse swap counted in contracts, Coinbase matches whose side is the maker's),
plus ETH against EUR on Coinbase, a quote family of its own. Each replay goes through the
producer, all through one Spark job into chDB; the test computes every column of the view from
the frames it wrote, with exact decimals and each venue's rules applied here, not by Pulse.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.support.pipeline import process_topic, publish_recording
from tests.support.producer_harness import running_producer, wait_until
from tests.support.venue_double import TapeTrade, VenueDouble
from tests.support.venue_reference import OKX, okx_tape, venue_recording

pytestmark = pytest.mark.integration

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
SWAP_CONTRACT_USD = Decimal(100)
USD_FAMILY = ("USD", "USDT", "USDC")


@dataclass(frozen=True)
class Fill:
    venue: str
    asset: str
    quote: str
    price: Decimal
    base_qty: Decimal
    time_ms: int
    taker_buys: bool


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}123Z"


def _write(tmp_path: Path) -> tuple[dict[str, Path], Path, list[Fill]]:
    """Recorder files of each venue (`<unix s>: <frame>`), the OKX instruments reply, and the fills."""
    rng = random.Random(7)
    fills: list[Fill] = []
    lines: dict[str, list[str]] = defaultdict(list)
    # Two seconds of trades, all within the job's 2 s watermark delay: none of them can be late,
    # whatever order the three replays reach the job in.
    times = sorted(T0 + rng.randrange(0, 1900) for _ in range(36))
    for n, time_ms in enumerate(times):
        price = Decimal(50_000) + Decimal(rng.randrange(-500, 500)) / 10
        buys = rng.random() < 0.5
        venue = ("binance-us", "okx", "okx-swap", "coinbase", "coinbase-eth")[n % 5]
        qty = Decimal(rng.randrange(1, 2000)) / 1000
        stamp = f"{time_ms / 1000 + 0.3:.3f}: "
        if venue == "binance-us":
            data = {"e": "aggTrade", "E": time_ms + 5, "s": "BTCUSDT", "a": 1000 + n, "p": str(price), "q": str(qty),
                    "f": 5000 + n, "l": 5000 + n, "T": time_ms, "m": not buys}
            lines["binance-us"].append(stamp + json.dumps({"stream": "btcusdt@aggTrade", "data": data}))
            fills.append(Fill("binance-us", "BTC", "USDT", price, qty, time_ms, buys))
        elif venue in ("okx", "okx-swap"):
            inst, size = ("BTC-USDT", qty) if venue == "okx" else ("BTC-USD-SWAP", Decimal(rng.randrange(1, 40)))
            trade = {"instId": inst, "tradeId": str(90_000 + n), "px": str(price), "sz": str(size),
                     "side": "buy" if buys else "sell", "ts": str(time_ms)}
            lines["okx"].append(stamp + json.dumps({"arg": {"channel": "trades", "instId": inst}, "data": [trade]}))
            base = size if venue == "okx" else size * SWAP_CONTRACT_USD / price
            fills.append(Fill("okx", "BTC", "USD" if venue == "okx-swap" else "USDT", price, base, time_ms, buys))
        else:
            product, eth = ("BTC-USD", False) if venue == "coinbase" else ("ETH-EUR", True)
            if eth:
                price = Decimal(3_000) + Decimal(rng.randrange(-50, 50)) / 10
            # Coinbase names the maker's side: a taker buy is a "sell" match.
            match = {"type": "match", "trade_id": 700 + n, "maker_order_id": "m", "taker_order_id": "t",
                     "side": "sell" if buys else "buy", "size": str(qty), "price": str(price),
                     "product_id": product, "sequence": n, "time": _iso(time_ms)}
            lines["coinbase"].append(stamp + json.dumps(match))
            fills.append(Fill("coinbase", "ETH" if eth else "BTC", "EUR" if eth else "USD", price, qty, time_ms,
                              buys))
    paths = {}
    for venue, text in lines.items():
        paths[venue] = tmp_path / f"{venue}.rec"
        paths[venue].write_text("\n".join(text) + "\n")
    instruments = tmp_path / "okx-instruments.json"
    instruments.write_text(json.dumps({"code": "0", "data": [
        {"instId": "BTC-USD-SWAP", "instType": "SWAP", "ctVal": str(SWAP_CONTRACT_USD), "ctMult": "1",
         "ctValCcy": "USD", "uly": "BTC-USD", "baseCcy": "", "quoteCcy": ""}]}) + "\n")
    return paths, instruments, fills


def _expected(fills: list[Fill]) -> dict[tuple[str, str, int], dict[str, Any]]:
    by_key: dict[tuple[str, str, int], list[Fill]] = defaultdict(list)
    for fill in fills:
        family = "USD" if fill.quote in USD_FAMILY else fill.quote
        by_key[(fill.asset, family, fill.time_ms - fill.time_ms % 1000)].append(fill)
    rows: dict[tuple[str, str, int], dict[str, Any]] = {}
    cvd: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for key in sorted(by_key):
        group = by_key[key]
        volume = sum((f.base_qty for f in group), Decimal(0))
        delta = sum((f.base_qty if f.taker_buys else -f.base_qty for f in group), Decimal(0))
        cvd[key[:2]] += delta
        per_venue: dict[str, list[Fill]] = defaultdict(list)
        for fill in group:
            per_venue[fill.venue].append(fill)
        vwaps = {v: sum((f.price * f.base_qty for f in fs), Decimal(0)) / sum((f.base_qty for f in fs), Decimal(0))
                 for v, fs in per_venue.items()}
        rows[key] = {
            "total_volume": volume, "net_delta": delta, "cvd": cvd[key[:2]],
            "vwap": sum((f.price * f.base_qty for f in group), Decimal(0)) / volume,
            "venues": len(per_venue),
            "venue_share": {v: sum((f.base_qty for f in fs), Decimal(0)) / volume for v, fs in per_venue.items()},
            "spread_bps": (max(vwaps.values()) - min(vwaps.values())) / min(vwaps.values()) * 10_000,
            "first_venue": min((min(f.time_ms for f in fs), v) for v, fs in per_venue.items())[1],
            "trade_count": len(group),
        }
    return rows


def _close(actual: float, expected: Decimal) -> bool:
    return math.isclose(actual, float(expected), rel_tol=1e-9, abs_tol=1e-9)


def _assert_view_matches(database: Any, fills: list[Fill]) -> None:
    rows = database.query_arrow(
        "SELECT asset, quote_family, toUnixTimestamp64Milli(window_start) AS ws, total_volume, net_delta, cvd, vwap,"
        " venues, venue_share, spread_bps, first_venue, trade_count FROM pulse_asset_metrics").to_pylist()
    expected = _expected(fills)
    assert {(r["asset"], r["quote_family"], r["ws"]) for r in rows} == set(expected)
    assert any(w["venues"] >= 2 for w in expected.values()), "a second where several venues traded BTC"
    for row in rows:
        want = expected[(row["asset"], row["quote_family"], row["ws"])]
        where = f"{row['asset']}/{row['quote_family']} @ {row['ws']}"
        assert (row["venues"], row["first_venue"], row["trade_count"]) == (
            want["venues"], want["first_venue"], want["trade_count"]), where
        for column in ("total_volume", "net_delta", "cvd", "vwap", "spread_bps"):
            assert _close(row[column], want[column]), f"{where}: {column} {row[column]} != {want[column]}"
        shares = dict(row["venue_share"])
        want_shares = want["venue_share"]
        assert isinstance(want_shares, dict) and set(shares) == set(want_shares), where
        assert all(_close(shares[v], want_shares[v]) for v in shares), where


def test_asset_metrics_across_three_venues_match_an_independent_computation(tmp_path, kafka, spark, database,
                                                                              settings):
    paths, instruments, fills = _write(tmp_path)
    published = (publish_recording(settings, paths["binance-us"], venue="binance-us")
                 + publish_recording(settings, paths["okx"], venue="okx", instruments=instruments)
                 + publish_recording(settings, paths["coinbase"], venue="coinbase"))
    assert published == len(fills)
    process_topic(settings)

    _assert_view_matches(database, fills)
    expected = _expected(fills)
    assert {key[:2] for key in expected} == {("BTC", "USD"), ("ETH", "EUR")}
    assert any(w["venues"] == 3 for w in expected.values()), "a second where all three venues traded BTC"


@pytest.mark.slow
def test_asset_metrics_from_two_live_venues_match_an_independent_computation(kafka, spark, database, settings):
    """The live path: OKX's and Coinbase's doubles stream BTC in the same seconds, each to its own
    `pulse produce`-style producer (the runtime's ProducerService on live_source), into one topic."""
    okx = okx_tape(venue_recording(OKX), spot_only=True)
    # Coinbase's side of the same seconds: other prices and sizes, every third trade.
    coinbase = [TapeTrade("BTC-USD", str(5000 + n), str(Decimal(t.price) + Decimal(n % 7) - 3),
                          str(Decimal(t.size) * 2), n % 2 == 0, t.time_ms) for n, t in enumerate(okx) if n % 3 == 0]

    async def stream() -> None:
        async with VenueDouble("okx", okx, frames_per_s=200) as okx_double, \
                VenueDouble("coinbase", coinbase, frames_per_s=200, snapshot=0) as coinbase_double:
            producers = []
            for venue, double, tape in (("okx", okx_double, okx), ("coinbase", coinbase_double, coinbase)):
                producers.append(running_producer(settings.override(producer={
                    "venue": venue, "symbols": sorted({t.symbol for t in tape}), "ws_base_url": double.url,
                    "metrics_port": 0, "reconnect_initial_s": 0.05}), kafka.bootstrap))
            async with producers[0] as first, producers[1] as second:
                await wait_until(lambda: first.router.trades + second.router.trades >= len(okx) + len(coinbase), 60,
                                 "both venues' trades")

    asyncio.run(stream())
    process_topic(settings)
    fills = [Fill("okx", "BTC", "USDT", Decimal(t.price), Decimal(t.size), t.time_ms, t.taker_buys) for t in okx]
    fills += [Fill("coinbase", "BTC", "USD", Decimal(t.price), Decimal(t.size), t.time_ms, t.taker_buys)
              for t in coinbase]
    _assert_view_matches(database, fills)
