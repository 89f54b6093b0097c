"""Replay and synthetic sources through the same producer service as the live one."""

from __future__ import annotations

import asyncio

import pytest

from pulse.runtime import Plan, Until, run
from pulse.settings import PulseSettings
from pulse.source.base import Source
from pulse.source.replay import ReplaySource
from pulse.source.synthetic import SyntheticSource
from tests.support.pipeline import exported
from tests.support.producer_harness import Consumed, consume_all, fresh_topics, ids_by_symbol
from tests.support.recordings import ARCHIVE_CSV, USDM_RAW, recording
from tests.support.reference import trades_from_recording

pytestmark = pytest.mark.integration


def _run(settings: PulseSettings, bootstrap: str, source: Source) -> tuple[dict[str, float], list[Consumed]]:
    """The source through the pipeline's producer until it is exhausted, and what its /metrics exported."""
    service = run(Plan(settings.override(kafka={"bootstrap_servers": bootstrap}), source,
                       until=Until.SOURCE_ENDED)).producer
    assert service is not None
    return exported(service), asyncio.run(consume_all(bootstrap, settings.kafka.trades_topic))


@pytest.mark.parametrize(("name", "symbol"), [(USDM_RAW, None), (ARCHIVE_CSV, "BTCUSDT")])
def test_replay_source_publishes_every_recorded_trade(kafka, base_settings, name, symbol):
    settings = base_settings.model_copy(update={"kafka": fresh_topics(kafka.bootstrap)})
    path = recording(name)
    metrics, records = _run(settings, kafka.bootstrap, ReplaySource(path, symbol))
    want: dict[str, list[int]] = {}
    for trade in trades_from_recording(path, symbol):
        want.setdefault(trade.symbol, []).append(trade.agg_id)
    assert ids_by_symbol(records) == want
    assert metrics["trades_received"] == len(records) and metrics["replay_lines"] > 0
    assert not any(name.startswith("frames_invalid{") for name in metrics)


def test_synthetic_source_publishes_consecutive_ids_per_symbol(kafka, base_settings):
    settings = base_settings.model_copy(update={
        "kafka": fresh_topics(kafka.bootstrap),
        # A queue for all 20,000: the source outruns a loaded machine's publisher, and drops (tested with
        # the queue) would break the id sequence this test reads.
        "producer": base_settings.producer.model_copy(update={"symbols": ["AAAUSDT", "BBBUSDT", "CCCUSDT"],
                                                              "queue_max": 20_000})})
    symbols = ["AAAUSDT", "BBBUSDT", "CCCUSDT"]
    metrics, records = _run(settings, kafka.bootstrap, SyntheticSource(symbols, 20_000, 20_000))
    assert not any(name.startswith("records_dropped{") for name in metrics)
    assert metrics["frames_received"] == metrics["trades_received"] == 20_000
    got = ids_by_symbol(records)
    assert set(got) == {"AAAUSDT", "BBBUSDT", "CCCUSDT"}
    assert sum(map(len, got.values())) == 20_000
    for ids in got.values():
        assert ids == list(range(1, len(ids) + 1))
    assert all(record.value["price"] > 0 and record.value["quantity"] > 0 for record in records)
