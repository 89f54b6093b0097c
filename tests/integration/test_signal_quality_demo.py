"""`pulse demo --input <recording> --speed max`, then `pulse sql "SELECT * FROM pulse_signal_quality"`,
gives exactly the rows the definition gives, computed independently over the same recording."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.recordings import ROOT, SPOT_RAW, recording
from tests.support.reference import reference_windows, trades_from_recording
from tests.support.signal_quality import reference_outcomes, reference_signal_quality

pytestmark = pytest.mark.integration
PULSE = str(Path(sys.executable).with_name("pulse"))


def test_demo_then_sql_gives_the_defined_signal_quality(tmp_path):
    data_dir = tmp_path / "quality"
    path = recording(SPOT_RAW)
    demo = subprocess.run([PULSE, "demo", "--input", str(path), "--speed", "max", "--data-dir", str(data_dir)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    output = subprocess.run([PULSE, "sql", "SELECT * FROM pulse_signal_quality", "--format", "JSONEachRow",
                             "--data-dir", str(data_dir)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            check=True).stdout
    rows = [json.loads(line) for line in output.splitlines() if line.strip()]

    want = reference_signal_quality(reference_outcomes(reference_windows(trades_from_recording(path)).values()))
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
