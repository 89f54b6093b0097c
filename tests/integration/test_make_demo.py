"""`make demo` as the README has it, and `pulse sql` over what it stored: one run of the bundled
recording that the tests here read (`make test` keeps the module on one worker: tests/conftest.py)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.integration.test_cli import PULSE, java_processes_under, run, sql_rows
from tests.support.recordings import ROOT, USDM_RAW, recording
from tests.support.reference import reference_windows, trades_from_recording
from tests.support.signal_quality import reference_outcomes, reference_signal_quality
from tests.support.terminal import JVM_LINE

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def make_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """One `make demo` of the bundled recording; the tests that only read its results share it."""
    data_dir = tmp_path_factory.mktemp("make-demo") / "demo"
    return data_dir, run("make", "demo", f"DATA_DIR={data_dir}")


def test_make_demo_then_pulse_sql(make_demo):
    data_dir, result = make_demo
    assert "== Pulse demo summary" in result.stdout
    progress = [line for line in result.stdout.splitlines() if line.startswith("[") and " windows" in line]
    assert progress, "the dashboard printed no progress line while the demo ran (stdout is no terminal)"
    jvm_lines = [line for line in (result.stdout + result.stderr).splitlines() if JVM_LINE.search(line)]
    assert not jvm_lines, f"JVM output reached the terminal: {jvm_lines[:5]}"
    assert result.stderr == ""
    assert (data_dir / "logs" / "spark.log").exists() and (data_dir / "logs" / "spark-jvm.log").exists()
    expected = reference_windows(trades_from_recording(recording(USDM_RAW)))
    per_symbol = {row["symbol"]: int(row["count()"]) for row in
                  sql_rows(data_dir, "SELECT symbol, count() FROM pulse_metrics GROUP BY symbol")}
    want: dict[str, int] = {}
    for symbol, _ in expected:
        want[symbol] = want.get(symbol, 0) + 1
    assert per_symbol == want
    assert f"windows out:      {len(expected)} " in result.stdout
    assert not java_processes_under(data_dir)


def test_make_demo_then_sql_gives_the_defined_signal_quality(make_demo):
    """`pulse sql "SELECT * FROM pulse_signal_quality"` after the demo gives exactly the rows the
    definition gives, computed independently over the same recording."""
    data_dir, _ = make_demo
    output = subprocess.run([PULSE, "sql", "SELECT * FROM pulse_signal_quality", "--format", "JSONEachRow",
                             "--data-dir", str(data_dir)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            check=True).stdout
    rows = [json.loads(line) for line in output.splitlines() if line.strip()]

    want = reference_signal_quality(reference_outcomes(reference_windows(trades_from_recording(
        recording(USDM_RAW))).values()))
    assert [list(row) for row in rows[:1]] == [["symbol", "signal", "horizon_s", "signals", "mean_return_bps",
                                                "hit_rate_pct"]]
    assert {(r["symbol"], r["signal"], int(r["horizon_s"])) for r in rows} == set(want)
    assert {int(r["horizon_s"]) for r in rows} == {5, 30, 60}
    for row in rows:
        ref = want[(row["symbol"], row["signal"], int(row["horizon_s"]))]
        assert int(row["signals"]) == ref.signals, row
        assert row["mean_return_bps"] == pytest.approx(float(ref.mean_return_bps), rel=1e-9, abs=1e-9), row
        if ref.hits is None:
            assert row["hit_rate_pct"] is None, row
        else:
            assert round(row["hit_rate_pct"] * ref.signals / 100) == ref.hits, row
