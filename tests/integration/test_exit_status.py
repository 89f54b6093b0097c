"""Every process that runs the pipeline ends with its own status, never by a signal (a crash in the
interpreter's teardown of Spark, chDB or the broker would show as a negative return code here),
and leaves the directory it ran in as it was. The benchmarks are run, short, as a user runs them;
`pulse demo` and `pulse live` are checked the same way in test_cli.py and test_live.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.recordings import ROOT

pytestmark = pytest.mark.integration


def _bench(module: str, cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    # Run from an empty folder: the checkout only on PYTHONPATH, so nothing can land in it unseen.
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=900, check=False, env={**os.environ, "PYTHONPATH": str(ROOT), **env})


@pytest.mark.parametrize(("module", "env", "args"), [
    ("bench.producer_bench", {}, ("--frames", "20000", "--seed-frames", "500", "--seconds", "2", "--json")),
    # A smoke run: one second per job, no warm-up run, and JVMs that skip C2 (nothing is measured here).
    pytest.param("bench.processor_bench", {"BENCH_SECONDS": "1", "BENCH_BACKLOG": "2000",
                                           "BENCH_WARMUP_SECONDS": "0", "PULSE_JIT": "quick"}, ("--json",),
                 marks=pytest.mark.slow),
    # Broker starts only, one of each: a demo pair would add ~40 s for a path the test suite runs anyway.
    ("bench.startup_bench", {}, ("--rounds", "1", "--only", "broker", "--json")),
], ids=["producer_bench", "processor_bench", "startup_bench"])
def test_benchmarks_exit_0(tmp_path, module, env, args):
    result = _bench(module, tmp_path, env, *args)
    assert result.returncode == 0, (f"{module} ended with {result.returncode}"
                                    f" (negative: killed by signal {-result.returncode})\n{result.stderr[-3000:]}")
    headline = json.loads(result.stdout.strip().splitlines()[-1])
    assert headline, "the --json headline line"
    assert list(tmp_path.iterdir()) == [], "a benchmark writes under its own data directory only"
