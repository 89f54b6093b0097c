"""The live source on each Binance market, against the double serving that market's own paths.

Spot streams on `/stream` and fills gaps from `/api/v3/aggTrades`; COIN-M on `/stream` and
`/dapi/v1/aggTrades`, with symbols like BTCUSD_PERP and delivery contracts (ETHUSD_260327); the
double serves nothing else for them, so a wrong path fails the test. The settings name only the
double's host: the market supplies the path. `all` resolves the market's trading symbols from
exchangeInfo and spreads 500 of them over connections of at most 200 streams.
"""

from __future__ import annotations

import asyncio
import math
from decimal import Decimal
from typing import Any

import pytest

from pulse.settings import PulseSettings
from pulse.source.binance.live import UnknownSymbols, market_symbols
from pulse.source.binance.rest import BinanceRefused
from tests.support.binance_double import (
    COINM_NAMES,
    BinanceDouble,
    agg_trades_from_recording,
    coinm_contract_usd,
    relabel,
)
from tests.support.producer_harness import (
    consume_all,
    expected_ids,
    fresh_topics,
    gaps_pending,
    ids_by_symbol,
    live_settings,
    published,
    recorded_tape,
    running_producer,
    scraped,
    wait_until,
)
from tests.support.recordings import SPOT_RAW, USDM_RAW, recording
from tests.support.venue_reference import BINANCE_US, venue_recording

pytestmark = pytest.mark.integration



async def _stream_market(base: PulseSettings, bootstrap: str, tape: list[dict[str, Any]], market: str,
                         withhold: dict[str, range]) -> dict[str, Any]:
    kafka = await asyncio.to_thread(fresh_topics, bootstrap)
    async with BinanceDouble(tape, frames_per_s=2000, market=market) as double:  # type: ignore[arg-type]
        for symbol, ids in withhold.items():
            double.withhold(symbol, ids)
        settings = live_settings(base, kafka, double, market=market, ws_base_url=double.ws_host_url)
        async with running_producer(settings, bootstrap) as service:
            await wait_until(double.finished.is_set, 60, "the double to play its tape")
            await wait_until(lambda: published(service) >= len(tape) and not gaps_pending(service), 60,
                             f"{len(tape)} published trades")
            metrics = await scraped(service)
        trades = await consume_all(bootstrap, kafka.trades_topic)
    return {"double": double, "metrics": metrics, "ids": ids_by_symbol(trades),
            "venues": {t.value["venue"] for t in trades}, "trades": [t.value for t in trades]}


def _ids(tape: list[dict[str, Any]]) -> dict[str, list[int]]:
    ids: dict[str, list[int]] = {}
    for payload in tape:
        ids.setdefault(payload["s"], []).append(payload["a"])
    return ids


def test_spot_streams_on_its_path_and_fills_gaps_from_api_v3(kafka, base_settings):
    tape = agg_trades_from_recording(recording(SPOT_RAW))
    want = _ids(tape)
    withheld = {"BTCUSDT": range(want["BTCUSDT"][300], want["BTCUSDT"][320] + 1),
                "DOTUSDT": range(want["DOTUSDT"][10], want["DOTUSDT"][12] + 1)}
    result = asyncio.run(_stream_market(base_settings, kafka.bootstrap, tape, "spot", withheld))
    assert result["ids"] == want, "every spot trade once, in id order per symbol"
    metrics, double = result["metrics"], result["double"]
    assert metrics["gaps_found"] == 2 and metrics["gaps_filled"] == 2
    assert metrics["trades_filled"] == sum(len(r) for r in withheld.values())
    assert double.rest_calls >= 2 and double.connection_symbols == [frozenset(want)]


def test_binance_us_streams_spot_frames_from_its_own_host_and_fills_gaps(kafka, base_settings):
    """Binance.US (where Binance answers HTTP 451): Binance spot's frames and REST paths, on the real
    recording of its aggTrades (../shared/data/venues, cryptofeed project, Bryant Moscon)."""
    tape = agg_trades_from_recording(venue_recording(BINANCE_US))
    want = _ids(tape)
    symbol = max(want, key=lambda s: len(want[s]))
    withheld = {symbol: range(want[symbol][1], want[symbol][1] + 1)}
    result = asyncio.run(_stream_market(base_settings, kafka.bootstrap, tape, "us", withheld))
    assert result["ids"] == want and result["venues"] == {"binance-us"}
    assert result["metrics"]["gaps_filled"] == 1 and result["double"].rest_calls >= 1


def test_coinm_streams_perpetuals_and_delivery_contracts_and_fills_gaps_from_dapi(kafka, base_settings):
    tape = relabel(agg_trades_from_recording(recording(USDM_RAW)), COINM_NAMES)
    want = _ids(tape)
    assert set(want) == set(COINM_NAMES.values())
    withheld = {"BATUSD_260327": range(want["BATUSD_260327"][5], want["BATUSD_260327"][8] + 1),
                "NEOUSD_PERP": range(want["NEOUSD_PERP"][20], want["NEOUSD_PERP"][20] + 1)}
    result = asyncio.run(_stream_market(base_settings, kafka.bootstrap, tape, "coinm", withheld))
    assert result["ids"] == want
    assert result["metrics"]["gaps_filled"] == 2 and result["metrics"]["trades_filled"] == 5
    assert result["double"].rest_calls >= 2


def test_coinm_contracts_become_base_units_and_keep_the_venues_count(kafka, base_settings):
    """COIN-M counts contracts of contractSize USD (exchangeInfo): base units are q x size / p, the
    venue's own count kept; websocket and REST-filled trades alike."""
    tape = relabel([p for p in agg_trades_from_recording(recording(USDM_RAW)) if p["s"] == "BATUSDT"], COINM_NAMES)
    ids = _ids(tape)["BATUSD_260327"]
    result = asyncio.run(_stream_market(base_settings, kafka.bootstrap, tape, "coinm",
                                        {"BATUSD_260327": range(ids[5], ids[8] + 1)}))
    assert result["metrics"]["trades_filled"] == 4 and len(result["trades"]) == len(tape)
    sent = {(p["s"], p["a"]): p for p in tape}
    for trade in result["trades"]:
        wire = sent[(trade["symbol"], trade["agg_trade_id"])]
        base = Decimal(wire["q"]) * coinm_contract_usd(wire["s"]) / Decimal(wire["p"])
        assert math.isclose(trade["quantity"], float(base), rel_tol=1e-12), trade
        assert trade["venue_quantity"] == float(wire["q"]) and trade["quote_asset"] == "USD"


def test_all_resolves_500_symbols_from_exchange_info_over_three_connections(kafka, base_settings):
    quiet = {f"Q{i:03d}USDT": "TRADING" for i in range(495)}
    not_trading = {"BTCUSDT_250328": "SETTLING", "LUNAUSDT": "BREAK"}

    async def scenario() -> dict[str, Any]:
        kafka_settings = await asyncio.to_thread(fresh_topics, kafka.bootstrap)
        tape = recorded_tape()
        async with BinanceDouble(tape, frames_per_s=2000, listed=quiet | not_trading) as double:
            settings = live_settings(base_settings, kafka_settings, double, stall_timeout_s=600)
            symbols = await market_symbols(settings.producer, ["ALL"])
            settings = settings.override(producer={"symbols": symbols})
            async with running_producer(settings, kafka.bootstrap) as service:
                await wait_until(double.finished.is_set, 60, "the double to play its tape")
                await wait_until(lambda: published(service) >= len(tape), 60, "every trade published")
                metrics = await scraped(service)
            trades = await consume_all(kafka.bootstrap, kafka_settings.trades_topic)
        return {"symbols": symbols, "double": double, "metrics": metrics, "ids": ids_by_symbol(trades)}

    result = asyncio.run(scenario())
    symbols, double = result["symbols"], result["double"]
    assert len(symbols) == 8 + 495 and not set(not_trading) & set(symbols)
    assert double.exchange_info_calls == 1
    assert sorted(len(s) for s in double.connection_symbols) == [103, 200, 200]
    assert set().union(*double.connection_symbols) == set(symbols)
    assert result["metrics"]["ws_connections_wanted"] == 3 and result["metrics"]["ws_connects"] == 3
    assert result["ids"] == expected_ids()


def test_given_symbols_are_checked_against_exchange_info(base_settings):
    async def check(double: BinanceDouble, wanted: list[str]) -> list[str]:
        settings = base_settings.override(producer={"rest_base_url": double.rest_base_url})
        return await market_symbols(settings.producer, wanted)

    async def scenario() -> None:
        async with BinanceDouble(recorded_tape(), listed={"BTCUSDT_250328": "SETTLING"}) as double:
            assert await check(double, ["BTCUSDT", "ETHUSDT"]) == ["BTCUSDT", "ETHUSDT"]
            typo = r"BTCUSTD is not a USD-M futures symbol \(did you mean BTCUSDT\?\)"
            with pytest.raises(UnknownSymbols, match=typo):
                await check(double, ["BTCUSTD"])
            expired = r"BTCUSDT_250328 is not trading on USD-M futures \(status SETTLING\)"
            with pytest.raises(UnknownSymbols, match=expired):
                await check(double, ["BTCUSDT_250328"])
            double.refuse_rest_with = 451
            with pytest.raises(BinanceRefused, match="HTTP 451"):
                await check(double, ["BTCUSDT"])

    asyncio.run(scenario())
