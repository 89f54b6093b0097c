"""`pulse demo`: the whole pipeline on this machine, end to end, on a recording.

The plan: replay the recording (from a fresh start: no old checkpoint, log or database) through
the producer, the Spark job and ClickHouse (the embedded broker and chDB unless settings name
others), until the job stored every trade. The terminal dashboard watches it; the summary sums it
up. The results stay in `<data_dir>/chdb` for `pulse sql`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pulse.dashboard import DashboardObserver, WarningCount
from pulse.resources import bundled_recording
from pulse.runtime import Plan, Until, run
from pulse.settings import PulseSettings, VenueName
from pulse.source.replay import ReplaySource
from pulse.summary import RunSummary, summary_of

BUNDLED_RECORDING = bundled_recording()


def demo_plan(settings: PulseSettings, input_path: Path, symbol: str | None, speed: float | None,
              venue: VenueName = "binance-usdm", instruments: Path | None = None) -> Plan:
    # A demo replays its recording from the start, and its /metrics never collides with a running producer.
    # Its end waits for the rejects query too: a short trigger there, since a replay is not live.
    settings = settings.override(spark={"starting_offsets": "earliest", "rejects_trigger_ms": 1000},
                                 producer={"metrics_port": 0}).short_batches()
    pace = "as fast as possible" if speed is None else f"{speed:g}x the recorded pace"
    source = ReplaySource(input_path, symbol, speed, venue, instruments)
    return Plan(settings, source, label=f"replaying {input_path.name} {pace}", compute=True, fresh=True,
                until=Until.CAUGHT_UP)


def run_demo(settings: PulseSettings, input_path: Path, symbol: str | None, speed: float | None,
             say: Callable[[str], None], live_view: bool = True, warnings: WarningCount | None = None,
             venue: VenueName = "binance-usdm", instruments: Path | None = None) -> RunSummary:
    plan = demo_plan(settings, input_path, symbol, speed, venue, instruments)
    source = plan.source
    assert source is not None
    observer = DashboardObserver(say, f"Pulse demo · {input_path.name} · {plan.label.split(' ', 2)[-1]}",
                                 live=False, symbols=source.symbols, warnings=warnings, show=live_view)
    outcome = run(plan, observer)
    return summary_of(outcome, "demo", input_path.name, plan.settings.data_dir)
