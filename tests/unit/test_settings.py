"""One settings object: overrides are validated like the environment, markets are data."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from pulse.resources import bundled_recording, schema_dir
from pulse.settings import PulseSettings
from pulse.source.binance.markets import MARKETS


def test_override_validates_and_keeps_the_rest():
    base = PulseSettings(_env_file=None)  # type: ignore[call-arg]
    changed = base.override(data_dir=Path("/tmp/x"), spark={"trigger_ms": 1000},
                            producer={"symbols": "btcusdt,BTCUSDT_260327", "market": "spot"})
    assert (changed.data_dir, changed.spark.trigger_ms, changed.spark.watermark_s) == (Path("/tmp/x"), 1000, 2.0)
    assert changed.producer.symbols == ["BTCUSDT", "BTCUSDT_260327"] and changed.producer.market == "spot"
    assert base.spark.trigger_ms == 250, "the original is untouched"
    with pytest.raises(ValidationError, match="trigger_ms"):
        base.override(spark={"trigger_ms": 1})
    with pytest.raises(ValidationError, match="market"):
        base.override(producer={"market": "options"})
    with pytest.raises(ValueError, match="unknown setting 'sparks'"):
        base.override(sparks={})


def test_environment_is_read_once_with_the_prefix(monkeypatch):
    monkeypatch.setenv("PULSE_SPARK__TRIGGER_MS", "100")
    monkeypatch.setenv("PULSE_PRODUCER__SYMBOLS", "ethusdt,btcusdt")
    settings = PulseSettings(_env_file=None)  # type: ignore[call-arg]
    assert settings.spark.trigger_ms == 100 and settings.producer.symbols == ["ETHUSDT", "BTCUSDT"]


def test_every_market_has_its_endpoints_and_limits():
    assert set(MARKETS) == {"usdm", "spot", "coinm"}
    for name, market in MARKETS.items():
        assert market.name == name and market.ws_url.startswith("wss://") and market.rest_url.startswith("https://")
        assert market.agg_trades_path.endswith("/aggTrades") and market.exchange_info_path.endswith("/exchangeInfo")
        assert market.weight_per_minute >= 20 * market.agg_trades_weight


def test_the_package_carries_its_schema_and_recording():
    assert PulseSettings(_env_file=None).schema_dir == schema_dir()  # type: ignore[call-arg]
    assert sorted(p.name for p in schema_dir().glob("*.sql"))[0] == "01_pulse_metrics.sql"
    assert bundled_recording().stat().st_size > 1_000_000


def test_real_time_mode_settings_are_checked_and_sized():
    base = PulseSettings(_env_file=None)  # type: ignore[call-arg]
    assert base.realtime and base.spark.state_store_provider == "rocksdb"
    # Every task of both queries at once: 2 x 3 partitions + 1 shuffle partition.
    assert (base.task_slots(), base.spark_master) == (8, "local[8]")
    assert base.override(spark={"mode": "microbatch"}).spark_master == "local[2]"
    assert base.override(spark={"master": "spark://h:7077"}).spark_master == "spark://h:7077"
    with pytest.raises(ValidationError, match="RocksDB"):
        base.override(spark={"state_store": "hdfs"})
    with pytest.raises(ValidationError, match="max_offsets_per_trigger"):
        base.override(spark={"max_offsets_per_trigger": 100})
    assert base.override(spark={"mode": "microbatch", "max_offsets_per_trigger": 100}).spark.max_offsets_per_trigger


def test_runs_that_await_their_end_use_short_batches_and_health_waits_a_batch():
    base = PulseSettings(_env_file=None)  # type: ignore[call-arg]
    assert base.spark.realtime_batch_s == 60.0
    assert base.short_batches().spark.realtime_batch_s == 5.0
    assert base.override(spark={"realtime_batch_s": 2.0}).short_batches().spark.realtime_batch_s == 2.0
    # Real-Time Mode reports progress only at a batch end: /health allows a whole batch more.
    assert base.health_stale_after_s == base.spark.health_stale_s + 60.0
    assert base.override(spark={"mode": "microbatch"}).health_stale_after_s == base.spark.health_stale_s


def test_only_a_real_time_mode_job_ends_itself_on_silence_and_a_batch_comes_on_top():
    base = PulseSettings(_env_file=None)  # type: ignore[call-arg]
    assert base.stall_exit_after_s == 300.0 + 60.0
    assert base.override(spark={"stall_exit_s": 10, "realtime_batch_s": 1}).stall_exit_after_s == 11.0
    # A micro-batch may run long over a backlog: it is never timed, nor is a job told not to be.
    assert base.override(spark={"mode": "microbatch"}).stall_exit_after_s is None
    assert base.override(spark={"stall_exit_s": None}).stall_exit_after_s is None
    with pytest.raises(ValidationError, match="stall_exit_s"):
        base.override(spark={"stall_exit_s": 0})


def test_each_venue_of_a_run_gets_its_own_urls_and_symbols():
    producer = PulseSettings(_env_file=None, producer={  # type: ignore[call-arg, arg-type]
        "ws_base_url": "ws://proxy:1", "ws_base_urls": {"okx": "ws://okx:2"},
        "rest_base_urls": {"binance-spot": "http://spot:3"}}).producer
    okx = producer.for_venue("okx", ["BTC-USDT"])
    assert (okx.venue, okx.symbols, okx.ws_base_url, okx.rest_base_url) == ("okx", ["BTC-USDT"], "ws://okx:2", None)
    spot = producer.for_venue("binance-spot", None)
    assert (spot.market, spot.symbols, spot.ws_base_url, spot.rest_base_url) == (
        "spot", ["BTCUSDT"], "ws://proxy:1", "http://spot:3")
    assert producer.for_venue(None, None) == producer
    with pytest.raises(ValidationError, match="ws_base_urls"):
        PulseSettings(_env_file=None, producer={"ws_base_urls": {"nowhere": "ws://x"}})  # type: ignore[call-arg, arg-type]
