"""Where a checkpoint resumes, what it has yet to read, and whether retention deleted some of it."""

from __future__ import annotations

import json
from pathlib import Path

from pulse.compute.progress import behind_retention, checkpoint_offsets, silent_for, unread


def _offset_log(checkpoint: Path, batch: int, offsets: dict[str, dict[str, int]]) -> None:
    folder = checkpoint / "offsets"
    folder.mkdir(parents=True, exist_ok=True)
    # Spark's offset log entry: version, metadata, then one line per source.
    (folder / str(batch)).write_text(f"v1\n{json.dumps({'batchWatermarkMs': 0})}\n{json.dumps(offsets)}")


def test_a_checkpoint_resumes_at_its_newest_offset_log_entry(tmp_path: Path) -> None:
    assert checkpoint_offsets(tmp_path / "none") == {}
    _offset_log(tmp_path, 9, {"trades": {"0": 5, "1": 0}})
    _offset_log(tmp_path, 10, {"trades": {"0": 20, "1": 3}})
    (tmp_path / "offsets" / ".10.crc").write_text("")
    assert checkpoint_offsets(tmp_path) == {"trades": {"0": 20, "1": 3}}


def test_behind_retention_only_when_an_unread_offset_was_deleted() -> None:
    resume = {"trades": {"0": 20, "1": 3}}
    assert not behind_retention(resume, {0: 20, 1: 0}, "trades")
    assert behind_retention(resume, {0: 32, 1: 0}, "trades")
    assert behind_retention(resume, {0: 0, 1: 4}, "trades")
    assert not behind_retention(resume, {0: 99}, "other")


def test_unread_counts_from_the_checkpoint_else_from_where_a_new_query_starts() -> None:
    ends = {0: 50, 1: 7, 2: 0}
    # No checkpoint: from the oldest offsets (earliest), or nothing (latest: the ends themselves).
    assert unread({}, {0: 10, 1: 0, 2: 0}, ends, "trades") == 40 + 7
    assert unread({}, ends, ends, "trades") == 0
    # A checkpoint: from its offsets; a partition it never read (added since) from the fresh start.
    assert unread({"trades": {"0": 45, "1": 7}}, {0: 10, 1: 0, 2: 0}, {**ends, 2: 4}, "trades") == 5 + 0 + 4
    # Another topic's offsets say nothing about this one; a checkpoint ahead of the end is not negative.
    assert unread({"other": {"0": 45}}, ends, ends, "trades") == 0
    assert unread({"trades": {"0": 60}}, {0: 0}, {0: 50}, "trades") == 0


def test_silence_counts_from_the_last_report_or_from_the_start_of_the_queries():
    assert silent_for(None, started_at=100.0, now=130.0) == 30.0
    assert silent_for(120.0, started_at=100.0, now=130.0) == 10.0
    # A report of the catch-up micro-batches, before these queries started, does not count against them.
    assert silent_for(90.0, started_at=100.0, now=130.0) == 30.0
