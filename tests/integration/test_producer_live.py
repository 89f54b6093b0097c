"""The live producer against the Binance double (real websocket + REST servers) and the real broker.

Expected ids come from the recordings through the reference parser, never from pulse; what
reached Kafka is read back with a plain aiokafka consumer.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from pulse.broker.local_kafka import LocalKafkaBroker
from pulse.settings import KafkaSettings, PulseSettings
from tests.support.binance_double import BinanceDouble
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

pytestmark = pytest.mark.integration


@pytest.fixture
def kafka_topics(kafka: LocalKafkaBroker) -> KafkaSettings:
    return fresh_topics(kafka.bootstrap)


async def _run_scenario(base: PulseSettings, kafka_settings: KafkaSettings, bootstrap: str, frames_per_s: float,
                        act: Any = None, expect_published: int | None = None, **producer: Any) -> dict[str, Any]:
    """Play the whole recorded tape through the double into the producer; `act(double, service)`
    runs alongside to break things. Returns counters and what the topics hold."""
    tape = recorded_tape()
    async with BinanceDouble(tape, frames_per_s=frames_per_s) as double:
        settings = live_settings(base, kafka_settings, double, **producer)
        async with running_producer(settings, bootstrap) as service:
            if act is not None:
                await act(double, service)
            await wait_until(double.finished.is_set, 60, "the double to play its tape")
            target = expect_published if expect_published is not None else len(tape) - len(double.unfillable)
            await wait_until(lambda: published(service) >= target and not gaps_pending(service), 60,
                             f"{target} published records")
            metrics = await scraped(service)
        trades = await consume_all(bootstrap, kafka_settings.trades_topic)
        gaps = await consume_all(bootstrap, kafka_settings.gaps_topic)
        dlq = await consume_all(bootstrap, kafka_settings.dead_letter_topic)
    return {"service": service, "double": double, "trades": trades, "gaps": gaps, "dlq": dlq, "metrics": metrics}


def _assert_every_trade_once_in_order(result: dict[str, Any],
                                      missing: frozenset[tuple[str, int]] = frozenset()) -> None:
    want = {symbol: [i for i in ids if (symbol, i) not in missing] for symbol, ids in expected_ids().items()}
    got = ids_by_symbol(result["trades"])
    assert set(got) == set(want)
    for symbol, ids in want.items():
        assert got[symbol] == ids, f"{symbol}: ids differ from the recording (order, loss or duplicates)"
    for record in result["trades"]:
        assert record.key == record.value["symbol"]


def _past(double: BinanceDouble, frame: int) -> Any:
    return lambda: double.cursor > frame


def test_normal_flow_every_trade_lands_once_in_id_order(kafka, kafka_topics, base_settings):
    # 8 recorded symbols and 52 quiet ones: at least 50 streams on one connection.
    symbols = sorted(expected_ids()) + [f"QUIET{i}USDT" for i in range(52)]
    result = asyncio.run(_run_scenario(base_settings, kafka_topics, kafka.bootstrap, frames_per_s=2000,
                                       symbols=symbols))
    _assert_every_trade_once_in_order(result)
    metrics = result["metrics"]
    assert metrics["gaps_found"] == 0 and result["gaps"] == [] and result["dlq"] == []
    assert metrics["ws_connects"] == 1 and metrics["ws_connections"] == 1
    assert result["double"].most_symbols_on_one_connection == 60


def test_server_closing_the_connection_reconnects_and_refills_from_rest(kafka, kafka_topics, base_settings):
    async def close_twice(double: BinanceDouble, service: Any) -> None:
        for at_frame in (600, 1200):
            await wait_until(_past(double, at_frame), 30, "the tape to advance")
            await double.close_connections()

    result = asyncio.run(_run_scenario(base_settings, kafka_topics, kafka.bootstrap, frames_per_s=1000,
                                       act=close_twice))
    _assert_every_trade_once_in_order(result)
    metrics = result["metrics"]
    assert metrics["ws_server_closes"] == 2
    assert metrics["ws_connects"] == 3
    assert metrics["reconnects{reason=closed}"] == 2
    assert result["gaps"] == []


def test_stalled_server_is_detected_by_the_watchdog(kafka, kafka_topics, base_settings):
    async def stall(double: BinanceDouble, service: Any) -> None:
        await wait_until(lambda: double.cursor > 500, 30, "the tape to advance")
        double.stalled = True
        await wait_until(lambda: service.source.telemetry().counters["ws_stalls"] >= 1, 10, "the watchdog to fire")
        double.stalled = False

    result = asyncio.run(_run_scenario(base_settings, kafka_topics, kafka.bootstrap, frames_per_s=800, act=stall,
                                       stall_timeout_s=0.5))
    _assert_every_trade_once_in_order(result)
    metrics = result["metrics"]
    assert metrics["ws_stalls"] >= 1
    assert metrics["trades_filled"] > 0, "trades sent while stalled must come from REST"
    assert metrics["rest_calls"] >= 1


def test_withheld_frames_are_detected_as_gaps_and_filled_from_rest(kafka, kafka_topics, base_settings):
    ids = expected_ids()
    withheld = {"BTCUSDT": ids["BTCUSDT"][100:130], "NEOUSDT": ids["NEOUSDT"][50:51],
                "ETHUSDT": ids["ETHUSDT"][200:205]}

    async def withhold(double: BinanceDouble, service: Any) -> None:
        for symbol, missing in withheld.items():
            double.withhold(symbol, range(missing[0], missing[-1] + 1))
        double.rate_limit_next, double.retry_after_s = 1, 1

    result = asyncio.run(_run_scenario(base_settings, kafka_topics, kafka.bootstrap, frames_per_s=2000,
                                       act=withhold))
    _assert_every_trade_once_in_order(result)
    metrics, double = result["metrics"], result["double"]
    assert metrics["gaps_found"] == 3 and metrics["gaps_filled"] == 3 and metrics["gaps_unfilled"] == 0
    assert metrics["trades_filled"] == sum(map(len, withheld.values()))
    assert double.rest_rate_limited == 1 and metrics["rest_rate_limited"] == 1, "429 must be honoured, then retried"
    assert metrics["rest_calls"] >= 4 and metrics["rest_weight_waited_seconds"] > 0
    assert result["gaps"] == []


def test_unfillable_gap_is_published_as_a_gap_event(kafka, kafka_topics, base_settings):
    ids = expected_ids()
    lost = ids["SANDUSDT"][40:47]
    filled = ids["SANDUSDT"][47:50]

    async def lose(double: BinanceDouble, service: Any) -> None:
        double.make_unfillable("SANDUSDT", range(lost[0], lost[-1] + 1))
        double.withhold("SANDUSDT", range(filled[0], filled[-1] + 1))

    result = asyncio.run(_run_scenario(base_settings, kafka_topics, kafka.bootstrap, frames_per_s=2000, act=lose,
                                       expect_published=len(recorded_tape()) - len(lost) + 1))
    _assert_every_trade_once_in_order(result, missing=frozenset(("SANDUSDT", i) for i in lost))
    assert [(g.key, g.value["first_missing_id"], g.value["last_missing_id"], g.value["missing_count"])
            for g in result["gaps"]] == [("SANDUSDT", lost[0], lost[-1], len(lost))]
    assert result["metrics"]["gaps_unfilled"] == 1
    assert result["metrics"]["ids_lost"] == len(lost)
    assert result["metrics"]["gap_events"] == 1


def test_injected_malformed_frames_go_to_the_dead_letter_topic(kafka, kafka_topics, base_settings):
    bad = ["not json", "{}", '{"stream":"btcusdt@aggTrade","data":{"e":"aggTrade"}}', "[1,2]",
           json.dumps({"stream": "btcusdt@aggTrade", "data": {"e": "aggTrade", "E": 1, "s": "BTCUSDT", "a": 1,
                                                              "p": "-1", "q": "1", "f": 1, "l": 1, "T": 1, "m": True}}),
           '{"e":"trade"}', "\u00ff\u0000"]

    async def inject(double: BinanceDouble, service: Any) -> None:
        await wait_until(lambda: double.cursor > 200, 30, "the tape to advance")
        double.inject(bad)

    result = asyncio.run(_run_scenario(base_settings, kafka_topics, kafka.bootstrap, frames_per_s=2000,
                                       act=inject, expect_published=len(recorded_tape()) + len(bad)))
    _assert_every_trade_once_in_order(result)
    assert sorted(d.value["raw"] for d in result["dlq"]) == sorted(bad)
    assert all(d.value["reason"] for d in result["dlq"])
    invalid = {k: v for k, v in result["metrics"].items() if k.startswith("frames_invalid{")}
    assert sum(invalid.values()) == len(bad), invalid


def test_multi_megabyte_frames_lose_nothing_else(kafka, kafka_topics, base_settings):
    """A 2 MiB frame (over the decoder's 1 MiB, under the websocket's 4 MiB max_size) is dead-lettered
    with its head; a 5 MiB frame, over max_size, ends that connection (close code 1009): the source
    reconnects and REST fills what passed meanwhile, so every trade still lands once, in order."""
    large = json.dumps({"stream": "btcusdt@aggTrade", "data": {"pad": "x" * (2 << 20)}})
    huge = json.dumps({"stream": "btcusdt@aggTrade", "data": {"pad": "y" * (5 << 20)}})

    async def inject(double: BinanceDouble, service: Any) -> None:
        await wait_until(lambda: double.cursor > 200, 30, "the tape to advance")
        double.inject([large])
        await wait_until(lambda: double.cursor > 400, 30, "the tape to advance")
        double.inject([huge])

    result = asyncio.run(_run_scenario(base_settings, kafka_topics, kafka.bootstrap, frames_per_s=2000,
                                       act=inject, expect_published=len(recorded_tape()) + 1))
    _assert_every_trade_once_in_order(result)
    (letter,) = result["dlq"]
    assert letter.value["raw"] == large[:4096]
    assert letter.value["reason"] == f"frame of {len(large):,} bytes, over the 1,048,576-byte limit"
    assert result["metrics"]["ws_reconnects"] >= 1
