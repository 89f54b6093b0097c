"""Replay and synthetic sources through the same producer service as the live one."""

from __future__ import annotations

import asyncio

import pytest

from pulse.producer import ProducerService, SourceChoice
from pulse.settings import PulseSettings
from tests.support.producer_harness import Consumed, consume_all, fresh_topics, ids_by_symbol
from tests.support.recordings import ARCHIVE_CSV, USDM_RAW, recording
from tests.support.reference import trades_from_recording

pytestmark = pytest.mark.integration


def _run(settings: PulseSettings, bootstrap: str, source: SourceChoice) -> tuple[ProducerService, list[Consumed]]:
    async def scenario() -> tuple[ProducerService, list[Consumed]]:
        service = ProducerService(settings, source)
        await service.run(bootstrap, asyncio.Event())
        return service, await consume_all(bootstrap, settings.kafka.trades_topic)

    return asyncio.run(scenario())


@pytest.mark.parametrize(("name", "symbol"), [(USDM_RAW, None), (ARCHIVE_CSV, "BTCUSDT")])
def test_replay_source_publishes_every_recorded_trade(kafka, base_settings, name, symbol):
    settings = base_settings.model_copy(update={"kafka": fresh_topics(kafka.bootstrap)})
    path = recording(name)
    service, records = _run(settings, kafka.bootstrap, SourceChoice(kind="replay", input=path, symbol=symbol))
    want: dict[str, list[int]] = {}
    for trade in trades_from_recording(path, symbol):
        want.setdefault(trade.symbol, []).append(trade.agg_id)
    assert ids_by_symbol(records) == want
    assert service.router.counters.invalid == 0


def test_synthetic_source_publishes_consecutive_ids_per_symbol(kafka, base_settings):
    settings = base_settings.model_copy(update={
        "kafka": fresh_topics(kafka.bootstrap),
        "producer": base_settings.producer.model_copy(update={"symbols": ["AAAUSDT", "BBBUSDT", "CCCUSDT"]})})
    service, records = _run(settings, kafka.bootstrap, SourceChoice(kind="synthetic", rate_per_s=20_000, total=20_000))
    assert sum(service.queue.dropped.values()) == 0
    got = ids_by_symbol(records)
    assert set(got) == {"AAAUSDT", "BBBUSDT", "CCCUSDT"}
    assert sum(map(len, got.values())) == 20_000
    for ids in got.values():
        assert ids == list(range(1, len(ids) + 1))
    assert all(record.value["price"] > 0 and record.value["quantity"] > 0 for record in records)
