"""What a notebook runs against: embedded on its own; in the stack, never what the processor owns."""

from __future__ import annotations

from pathlib import Path

from pulse.notebook import NOTEBOOK_DATABASE, notebook_settings
from pulse.resources import bundled_recording
from pulse.settings import PulseSettings

BASE = PulseSettings(_env_file=None)  # type: ignore[call-arg]
STACK = BASE.override(kafka={"bootstrap_servers": "redpanda:9092"}, clickhouse={"transport": "http"})


def test_on_its_own_it_replays_the_bundled_recording_from_the_start():
    settings, recording = notebook_settings(BASE)
    assert recording == bundled_recording()
    assert settings.spark.starting_offsets == "earliest" and settings.clickhouse.database == "pulse"


def test_in_the_stack_it_watches_the_live_topic_from_latest_in_its_own_database():
    settings, recording = notebook_settings(STACK)
    assert recording is None, "no replay into the live topic unless asked"
    assert settings.kafka.trades_topic == STACK.kafka.trades_topic
    assert settings.spark.starting_offsets == "latest"
    assert settings.clickhouse.database == NOTEBOOK_DATABASE != STACK.clickhouse.database
    assert settings.clickhouse.apply_schema


def test_in_the_stack_a_replay_goes_into_a_topic_of_its_own():
    settings, recording = notebook_settings(STACK, Path("trades.csv"))
    assert recording == Path("trades.csv")
    topics = {settings.kafka.trades_topic, settings.kafka.dead_letter_topic, settings.kafka.gaps_topic}
    assert not topics & {STACK.kafka.trades_topic, STACK.kafka.dead_letter_topic, STACK.kafka.gaps_topic}
    assert settings.spark.starting_offsets == "earliest"
    assert settings.clickhouse.database == NOTEBOOK_DATABASE
