"""Live sources of the venues that subscribe by message (OKX, Coinbase, Bybit), against local doubles
speaking each protocol (tests/support/venue_double.py), through the producer the runtime runs.

- Every trade of the tape reaches Kafka once, with its venue, the venue's symbol, the asset and quote,
  and the taker side under the venue's rule (OKX and Bybit name the taker, Coinbase the maker).
- The subscription is the venue's documented message; keep-alive pings are sent and answered.
- Coinbase repeats recent trades on subscribe (a snapshot): each counts once. Its trade ids run
  without gaps per product, so an id it skipped is filled from its REST market trades, and one REST
  lacks too becomes a gap event; Kraken's skipped ids become a gap event.
- A refused handshake is the venue's own one-line refusal, and the run ends on it (`fatal`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from pulse.settings import PulseSettings
from pulse.source.binance.live import StreamRefused
from pulse.source.venue_live import VenueSource, live_source
from tests.integration.test_live import PULSE, as_rows, live_env, stored_windows
from tests.support.binance_double import (
    COINM_NAMES,
    agg_trades_from_recording,
    coinm_contract_usd,
    double_in_thread,
    relabel,
)
from tests.support.names import on_broker
from tests.support.producer_harness import consume_all, fresh_topics, running_producer, scraped, wait_until
from tests.support.recordings import SPOT_RAW, USDM_RAW, recording
from tests.support.reference import RefTrade, reference_windows
from tests.support.terminal import Terminal
from tests.support.venue_double import TapeTrade, VenueDouble, venue_double_in_thread
from tests.support.venue_reference import (
    BINANCE_US,
    COINBASE,
    OKX,
    OKX_INSTRUMENTS,
    binance_us_trades,
    bybit_tape,
    coinbase_tape,
    kraken_tape,
    okx_instruments_replies,
    okx_tape,
    okx_trades,
    tape_trades,
    venue_recording,
)

pytestmark = pytest.mark.integration


async def _settings(base: PulseSettings, bootstrap: str, venue: str, double: VenueDouble, symbols: list[str]
                    ) -> PulseSettings:
    kafka = await asyncio.to_thread(fresh_topics, bootstrap)
    return base.override(kafka=kafka.model_dump(), producer={
        "venue": venue, "symbols": symbols, "ws_base_url": double.url, "keepalive_s": 0.2,
        "reconnect_initial_s": 0.05, "reconnect_max_s": 0.5, "stall_timeout_s": 30.0, "metrics_port": 0})


async def _stream(base: PulseSettings, bootstrap: str, venue: str, tape: list[TapeTrade],
                  withhold: frozenset[tuple[str, str]] = frozenset(),
                  instruments: dict[str, str] | None = None,
                  lost: frozenset[tuple[str, str]] = frozenset()) -> dict[str, Any]:
    """`withhold`: trades the websocket skips; `lost`: those that REST lacks too (Coinbase's)."""
    symbols = sorted({t.symbol for t in tape})
    async with VenueDouble(venue, tape, frames_per_s=400, instruments=instruments) as double:  # type: ignore[arg-type]
        double.withheld = set(withhold)
        double.rest_withheld = set(lost)
        settings = (await _settings(base, bootstrap, venue, double, symbols)).override(
            producer={"rest_base_url": double.rest_url})
        async with running_producer(settings, bootstrap) as service:
            await wait_until(double.finished.is_set, 60, "the double to play its tape")
            want = len(tape) - len(lost if venue == "coinbase" else withhold)
            await wait_until(lambda: service.router.trades >= want, 30, f"{want} trades")
            if venue != "coinbase":
                await wait_until(lambda: double.pings > 0, 10, "a keep-alive ping")
            if venue == "kraken":
                await wait_until(lambda: double.heartbeats > 0, 10, "a heartbeat")
            metrics = await scraped(service)
        trades = await consume_all(bootstrap, settings.kafka.trades_topic)
        gaps = await consume_all(bootstrap, settings.kafka.gaps_topic)
    return {"double": double, "trades": [t.value for t in trades], "gaps": [g.value for g in gaps],
            "metrics": metrics}


def _expected(tape: list[TapeTrade], withhold: frozenset[tuple[str, str]] = frozenset()
              ) -> Counter[tuple[Any, ...]]:
    return Counter((t.symbol, t.time_ms, float(t.price), float(t.size), "BUY" if t.taker_buys else "SELL")
                   for t in tape if (t.symbol, t.trade_id) not in withhold)


def _got(trades: list[dict[str, Any]]) -> Counter[tuple[Any, ...]]:
    return Counter((t["symbol"], t["timestamp"], t["price"], t["quantity"], t["side"]) for t in trades)


def test_okx_streams_spot_swaps_and_futures_with_contracts_converted_from_its_instruments(kafka, base_settings):
    """OKX's real trades of a spot pair, an inverse swap and a delivery future: contract sizes become
    base units with the contract values the source reads from the (double's) instruments endpoint."""
    tape = okx_tape(venue_recording(OKX))
    replies = okx_instruments_replies(venue_recording(OKX_INSTRUMENTS))
    result = asyncio.run(_stream(base_settings, kafka.bootstrap, "okx", tape, instruments=replies))
    trades, double = result["trades"], result["double"]
    reference = {(t.symbol, t.agg_id): t for t in okx_trades(venue_recording(OKX), venue_recording(OKX_INSTRUMENTS))}
    got = {(t["symbol"], t["agg_trade_id"]): t for t in trades}
    assert len(got) == len(trades) and set(got) == set(reference)
    for key, trade in got.items():
        want = reference[key]
        assert math.isclose(trade["quantity"], float(want.qty), rel_tol=1e-12), key
        assert trade["side"] == ("SELL" if want.buyer_maker else "BUY") and trade["venue"] == "okx"
        assert (trade["venue_quantity"] is None) == (key[0] == "BTC-USDT"), key
    assert {(t["base_asset"], t["quote_asset"]) for t in trades} == {("BTC", "USDT"), ("BTC", "USD"), ("UNI", "USD")}
    assert double.subscribe_messages[0] == {"op": "subscribe", "args": [
        {"channel": "trades", "instId": s} for s in sorted({t.symbol for t in tape})]}
    assert double.rest_calls == 2 and double.pings > 0


def test_bybit_streams_every_trade_once_with_the_takers_side(kafka, base_settings):
    venue = "bybit-spot"
    tape = bybit_tape(recording(SPOT_RAW), {"BTCUSDT", "ETHUSDT"})
    result = asyncio.run(_stream(base_settings, kafka.bootstrap, venue, tape))
    trades, double = result["trades"], result["double"]
    assert _got(trades) == _expected(tape)
    assert {(t["venue"], t["quote_asset"]) for t in trades} == {(venue, "USDT")}
    assert {t["base_asset"] for t in trades} == {"BTC", "ETH"}
    first = double.subscribe_messages[0]
    assert first["op"] == "subscribe" and set(first["args"]) == {"publicTrade.BTCUSDT", "publicTrade.ETHUSDT"}
    # Acknowledgements and pongs are skipped as frames of no trade, never dead-lettered.
    assert double.pings > 0 and result["metrics"]["frames_skipped"] >= 1


def test_coinbase_counts_snapshot_trades_once_and_fills_skipped_ids_from_rest(kafka, base_settings):
    """Two ids the websocket skipped: REST's market trades return one (published in id order, with
    the maker-side rule), and the one REST lacks too becomes the only gap event."""
    tape = coinbase_tape(venue_recording(COINBASE))
    counts = Counter(t.symbol for t in tape)
    product = max(counts, key=lambda s: counts[s])
    ids = sorted(int(t.trade_id) for t in tape if t.symbol == product)
    assert ids == list(range(ids[0], ids[-1] + 1)), "the recording's ids of a product run without gaps"
    filled, missing = ids[len(ids) // 3], ids[2 * len(ids) // 3]
    lost = frozenset({(product, str(missing))})
    result = asyncio.run(_stream(base_settings, kafka.bootstrap, "coinbase", tape,
                                 frozenset({(product, str(filled))}) | lost, lost=lost))
    trades, double = result["trades"], result["double"]
    assert _got(trades) == _expected(tape, lost)
    assert [t["agg_trade_id"] for t in trades if t["symbol"] == product] == [i for i in ids if i != missing]
    assert {t["venue"] for t in trades} == {"coinbase"}
    assert [m["channel"] for m in double.subscribe_messages] == ["market_trades", "heartbeats"]
    (gap,) = result["gaps"]
    assert (gap["symbol"], gap["first_missing_id"], gap["last_missing_id"]) == (product, missing, missing)
    assert gap["reason"] == "ids not returned by REST"
    metrics = result["metrics"]
    assert (metrics["trades_filled"], metrics["ids_lost"], metrics["gaps_unfilled"]) == (1, 1, 1)
    assert double.rest_calls >= 2


def test_kraken_streams_every_trade_once_skips_heartbeats_and_reports_skipped_ids(kafka, base_settings):
    """Kraken v2: one subscription without the snapshot, an acknowledgement per symbol, heartbeats and
    pongs skipped, the taker's side, `BTC/USD`-style names split on the slash, and an id the double
    skipped reported as a gap (trade ids run per book)."""
    tape = kraken_tape(venue_recording(COINBASE))
    counts = Counter(t.symbol for t in tape)
    pair = max(counts, key=lambda s: counts[s])
    ids = sorted(int(t.trade_id) for t in tape if t.symbol == pair)
    skipped = frozenset({(pair, str(ids[len(ids) // 2]))})
    result = asyncio.run(_stream(base_settings, kafka.bootstrap, "kraken", tape, skipped))
    trades, double = result["trades"], result["double"]
    assert _got(trades) == _expected(tape, skipped)
    assert {(t["venue"], t["symbol"].split("/")[0], t["symbol"].split("/")[1]) for t in trades} == {
        ("kraken", t["base_asset"], t["quote_asset"]) for t in trades}
    (message,) = double.subscribe_messages
    assert message == {"method": "subscribe", "params": {"channel": "trade", "symbol": sorted(counts),
                                                         "snapshot": False}}
    assert double.pings > 0 and double.heartbeats > 0
    assert result["metrics"]["frames_skipped"] >= len(counts) + 1, "the acks and the status, never dead letters"
    (gap,) = result["gaps"]
    missing = int(next(iter(skipped))[1])
    assert (gap["symbol"], gap["first_missing_id"], gap["last_missing_id"]) == (pair, missing, missing)


def test_a_refused_handshake_is_the_venues_own_line_and_ends_a_run(base_settings):
    async def scenario() -> str:
        async with VenueDouble("coinbase", []) as double:
            double.refuse_ws_with = 403
            settings = base_settings.override(producer={"venue": "coinbase", "symbols": ["BTC-USD"],
                                                        "ws_base_url": double.url, "reconnect_initial_s": 0.05})
            source = live_source(settings.producer)
            assert isinstance(source, VenueSource)
            stop = asyncio.Event()
            task = asyncio.create_task(source.stream.run(stop))
            await wait_until(lambda: source.fatal() is not None, 10, "the refusal")
            stop.set()
            await task
            error = source.fatal()
            assert isinstance(error, StreamRefused)
            return str(error)

    assert asyncio.run(scenario()) == "Coinbase refused the connection (HTTP 403)"


@contextlib.contextmanager
def _terminal_double(venue: str) -> Iterator[tuple[list[RefTrade], str, dict[str, str]]]:
    """The venue's double playing its tape: the tape's trades, the venue's title, and the environment
    that points `pulse live` at the double."""
    if venue.startswith("binance-"):
        payloads, trades, title = _binance_tape(venue)
        with double_in_thread(payloads, frames_per_s=100, market=venue.removeprefix("binance-")) as binance:
            yield trades, title, live_env(binance)
        return
    if venue == "okx":
        tape, title = okx_tape(venue_recording(OKX), spot_only=True), "OKX"
    elif venue == "coinbase":
        tape, title = coinbase_tape(venue_recording(COINBASE)), "Coinbase"
    elif venue == "kraken":
        tape, title = kraken_tape(venue_recording(COINBASE)), "Kraken"
    else:  # Bybit: real Binance trades, with linear contracts' UUID ids or spot's digits
        linear = venue == "bybit-linear"
        tape = bybit_tape(recording(SPOT_RAW), {"DOTUSDT"} if linear else {"ETHUSDT"}, uuids=linear)
        title = "Bybit linear contracts" if linear else "Bybit spot"
    with venue_double_in_thread(venue, tape, frames_per_s=100) as double:  # type: ignore[arg-type]
        yield tape_trades(tape), title, {**os.environ, "PULSE_PRODUCER__WS_BASE_URL": double.url,
                                         "PULSE_PRODUCER__RECONNECT_INITIAL_S": "0.05",
                                         "PULSE_PRODUCER__STALL_TIMEOUT_S": "600"}


def _binance_tape(venue: str) -> tuple[list[dict[str, Any]], list[RefTrade], str]:
    """Binance.US's real aggTrades (where Binance answers 451); one symbol of the spot recording; one
    of the USD-M recording under its COIN-M name, `q` counting contracts (base = q x size / p)."""
    if venue == "binance-us":
        return (agg_trades_from_recording(venue_recording(BINANCE_US)),
                binance_us_trades(venue_recording(BINANCE_US)), "Binance.US spot")
    if venue == "binance-spot":
        payloads = [p for p in agg_trades_from_recording(recording(SPOT_RAW)) if p["s"] == "DOTUSDT"]
        title = "Binance spot"
    else:
        payloads = relabel([p for p in agg_trades_from_recording(recording(USDM_RAW)) if p["s"] == "NEOUSDT"],
                           COINM_NAMES)
        title = "Binance COIN-M futures"
    contracts = venue == "binance-coinm"
    trades = [RefTrade(p["s"], p["a"], Decimal(p["p"]),
                       Decimal(p["q"]) * coinm_contract_usd(p["s"]) / Decimal(p["p"]) if contracts else Decimal(p["q"]),
                       p["T"], p["m"]) for p in payloads]
    return payloads, trades, title


@pytest.mark.parametrize("venue", ["okx", "coinbase", "bybit-linear", "bybit-spot", "kraken", "binance-us",
                                   "binance-spot", "binance-coinm"])
def test_pulse_live_on_each_venue_in_a_terminal_stores_every_window_of_the_tape(tmp_path, kafka, venue):
    """`pulse live --venue V` as a user runs it, in a pty, against the venue's double: the dashboard
    counts the tape's windows, Ctrl-C ends it with exit 0, and `pulse sql` finds exactly the reference's."""
    data_dir, cwd = tmp_path / "data", tmp_path / "cwd"
    cwd.mkdir()
    with _terminal_double(venue) as (trades, title, env):
        expected = reference_windows(trades)
        symbols = sorted({t.symbol for t in trades})
        screen = _live_in_terminal(["--venue", venue, "--symbols", ",".join(symbols)], data_dir, cwd,
                                   {**env, **on_broker(kafka.bootstrap)}, f"from {title} over 1 connection",
                                   len(expected))
    assert f"Pulse live · {title}" in screen
    assert stored_windows(data_dir, cwd) == as_rows(expected)


def _live_in_terminal(args: list[str], data_dir: Path, cwd: Path, env: dict[str, str], streaming: str,
                      windows: int, shows: str = "") -> str:
    """`pulse live ARGS` in a pty until it says `streaming` and its dashboard shows `shows` and counts
    `windows`, then Ctrl-C: it must end with 0 and no traceback. The screen before Ctrl-C. The runs
    use the suite's broker (`on_broker`): the embedded one's start is `pulse live`'s test in test_live.py."""
    # A test's live run lasts seconds: its JVMs compile as a replay's do (C1 only), not for hours.
    terminal = Terminal([PULSE, "live", *args, "--data-dir", str(data_dir)], cwd, {**env, "PULSE_JIT": "quick"})
    try:
        terminal.wait_for(lambda t: streaming in t.plain_output(), 240, "streaming to start")
        # Both at once: the view settles on its final state once the tapes have ended.
        terminal.wait_for(lambda t: f"· {windows} windows" in t.text() and shows in t.text(), 240,
                          f"the dashboard to count {windows} windows and show {shows!r}")
        screen = terminal.text()
        terminal.ctrl_c()
        code = terminal.wait(timeout_s=180)
    finally:
        terminal.close()
    output = terminal.plain_output()
    assert code == 0 and "Traceback" not in output, output[-3000:]
    return screen


def test_pulse_live_over_two_venues_at_once_groups_the_dashboard_by_asset_and_stores_each(tmp_path, kafka):
    """`pulse live --symbols okx:BTC-USDT,coinbase:BTC-USD`: both venues stream side by side into one
    run, each against its own double (named per venue in PULSE_PRODUCER__WS_BASE_URLS). OKX plays its
    recorded BTC trades; no Coinbase recording has BTC, so Coinbase plays the same trades framed as
    Coinbase sends them, 5 bps dearer. The dashboard shows BTC across the two (their spread: 5 bps),
    then each venue's row; the store holds exactly each venue's reference windows."""
    data_dir, cwd = tmp_path / "data", tmp_path / "cwd"
    cwd.mkdir()
    okx = okx_tape(venue_recording(OKX), spot_only=True)
    coinbase = [TapeTrade("BTC-USD", str(1000 + n), str(Decimal(t.price) * Decimal("1.0005")), t.size, t.taker_buys,
                          t.time_ms) for n, t in enumerate(okx)]
    expected = {**reference_windows(tape_trades(okx)), **reference_windows(tape_trades(coinbase))}
    with venue_double_in_thread("okx", okx, frames_per_s=100) as okx_double, \
            venue_double_in_thread("coinbase", coinbase, frames_per_s=100) as coinbase_double:
        env = {**os.environ, "PULSE_PRODUCER__WS_BASE_URLS": json.dumps({"okx": okx_double.url,
                                                                          "coinbase": coinbase_double.url}),
               "PULSE_PRODUCER__RECONNECT_INITIAL_S": "0.05", "PULSE_PRODUCER__STALL_TIMEOUT_S": "600",
               **on_broker(kafka.bootstrap)}
        screen = _live_in_terminal(["--symbols", "okx:BTC-USDT,coinbase:BTC-USD"], data_dir, cwd, env,
                                   "from OKX + Coinbase over 2 connections", len(expected), shows="spr 5.0bp")
    assert "Pulse live · OKX + Coinbase · 2 symbols" in screen
    lines = screen.splitlines()
    btc = next((i for i, line in enumerate(lines) if line.startswith("BTC ×2 ")), None)
    assert btc is not None, screen
    # Once both venues' newest windows hold the same trades, their VWAPs are 5 bps apart.
    assert "spr 5.0bp" in lines[btc], screen
    assert sorted(line.split()[:2] for line in lines[btc + 1:btc + 3]) == [["coinbase", "BTC-USD"],
                                                                           ["okx", "BTC-USDT"]], screen
    assert stored_windows(data_dir, cwd) == as_rows(expected)
