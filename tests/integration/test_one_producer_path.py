"""`pulse produce --source replay` and the end-to-end tests publish through the same producer: the
same recording, sent once by the command and once by the tests' helper, lands as the same records
(key, partition, order and every field but the receive time), and the command counts what it sent
as the helper does."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.pipeline import publish_recording
from tests.support.producer_harness import consume_all, fresh_topics
from tests.support.recordings import ROOT, USDM_RAW, recording

pytestmark = pytest.mark.integration
PULSE = str(Path(sys.executable).with_name("pulse"))


def _records(bootstrap: str, topic: str) -> list[tuple[str, int, dict[str, object]]]:
    records = asyncio.run(consume_all(bootstrap, topic))
    return sorted(((r.key, r.partition, {k: v for k, v in r.value.items() if k != "ingest_time"}) for r in records),
                  key=lambda record: (record[1], str(record[2]["symbol"]), int(str(record[2]["agg_trade_id"]))))


def test_the_command_and_the_tests_publish_the_same_records(kafka, base_settings, tmp_path):
    path = recording(USDM_RAW)
    by_command, by_tests = fresh_topics(kafka.bootstrap), fresh_topics(kafka.bootstrap)
    env = {**os.environ, "PULSE_KAFKA__TRADES_TOPIC": by_command.trades_topic,
           "PULSE_KAFKA__DEAD_LETTER_TOPIC": by_command.dead_letter_topic,
           "PULSE_KAFKA__GAPS_TOPIC": by_command.gaps_topic}
    result = subprocess.run([PULSE, "produce", "--source", "replay", "--input", str(path), "--bootstrap-servers",
                             kafka.bootstrap, "--metrics-port", "0", "--data-dir", str(tmp_path)],
                            env=env, cwd=ROOT, check=True, timeout=120, capture_output=True, text=True)
    published = publish_recording(base_settings.override(kafka=by_tests.model_dump()), path)

    command_records, test_records = (_records(kafka.bootstrap, t.trades_topic) for t in (by_command, by_tests))
    assert len(command_records) == published == 574
    assert command_records == test_records
    counted = re.search(r"stopped: (\d+) trades, (\d+) invalid, (\d+) published, 0 dropped", result.stdout)
    assert counted is not None, result.stdout
    trades, invalid, sent = map(int, counted.groups())
    assert trades == published and sent == trades + invalid
