"""`pulse demo`: the whole pipeline on this machine, end to end, on a recording.

Embedded Kafka broker -> replay producer -> Spark job -> chDB, with the terminal dashboard
(`pulse.dashboard`) while it runs, a summary at the end, and everything stopped cleanly (also on
Ctrl-C). The results stay in `<data_dir>/chdb` for `pulse sql`. The summary (`RunSummary`) is
`pulse live`'s too; a run in which nothing became a trade, or no trade became a window, is a
failure it names (`RunSummary.problem`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pulse.dashboard import Dashboard, WarningCount
from pulse.pipeline import Pipeline
from pulse.producer import ProducerService
from pulse.resources import bundled_recording
from pulse.settings import PulseSettings
from pulse.source.replay import ReplaySource
from pulse.storage.clickhouse import ClickHouseTransport, store_address
from pulse.storage.results import Results

BUNDLED_RECORDING = bundled_recording()

Say = Callable[[str], None]
_SUMMARY_SYMBOLS = 20


@dataclass
class RunSummary:
    trades_in: int
    published: int
    dead_lettered: int
    skipped_lines: int
    windows_out: int
    windows_by_symbol: dict[str, int]
    signals: dict[str, int]
    rejects: int
    elapsed_s: float
    data_dir: Path
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    dead_letter_examples: dict[str, str] = field(default_factory=dict)
    kind: str = "demo"
    # What was replayed or streamed, for the verdict ("binance-usdm-ws-2021-04-05.raw").
    source: str = ""
    frames: int = 0
    gaps: int = 0
    dropped: int = 0

    def render(self) -> str:
        lines = [
            "",
            f"== Pulse {self.kind} summary",
            f"trades in:        {self.trades_in} (published {self.published}, dead-lettered {self.dead_lettered},"
            f" skipped non-trade lines {self.skipped_lines})",
        ]
        if self.kind == "live":
            lines.append(f"frames received:  {self.frames}; gaps {self.gaps}; dropped by the queue {self.dropped}")
        if not self.dead_letter_reasons:
            lines.append("dead letters:     none")
        else:
            lines.append("dead letters by reason:")
            for reason, count in sorted(self.dead_letter_reasons.items(), key=lambda kv: -kv[1]):
                lines.append(f"  {count} x {reason}")
                if reason in self.dead_letter_examples:
                    lines.append(f"      e.g. {self.dead_letter_examples[reason]}")
        lines.append(f"windows out:      {self.windows_out} one-second windows in pulse_metrics")
        # `--symbols all` streams hundreds: the busiest are named, the rest counted.
        busiest = sorted(self.windows_by_symbol.items(), key=lambda kv: -kv[1])[:_SUMMARY_SYMBOLS]
        lines += [f"  {symbol:<14} {count} windows" for symbol, count in sorted(busiest)]
        if len(self.windows_by_symbol) > len(busiest):
            lines.append(f"  ... and {len(self.windows_by_symbol) - len(busiest)} more symbols")
        lines.append("signals:")
        lines += [f"  {kind:<14} {count}" for kind, count in sorted(self.signals.items(), key=lambda kv: -kv[1])]
        lines.append(f"rejected by the processor: {self.rejects}")
        lines.append(f"took {self.elapsed_s:.1f}s; results in {self.data_dir / 'chdb'}")
        lines.append(f'next: pulse sql "SELECT symbol, count() FROM pulse_metrics GROUP BY symbol"'
                     f" --data-dir {self.data_dir}")
        return "\n".join(lines)

    @property
    def problem(self) -> str | None:
        """Why this run produced nothing, in one line (None: it did)."""
        what = self.source or "the input"
        if self.trades_in == 0:
            if self.dead_letter_reasons:
                reason, count = max(self.dead_letter_reasons.items(), key=lambda kv: kv[1])
                return (f"no trade came out of {what}: {self.dead_lettered} records dead-lettered"
                        f" ({count} x {reason}), {self.skipped_lines} non-trade lines skipped;"
                        " the summary above shows an example of each reason")
            return (f"no trade came out of {what}: {self.skipped_lines} non-trade lines skipped and nothing"
                    " else in it; is it an aggTrade recording (JSON frames or Binance archive CSV)?")
        if self.windows_out == 0:
            return (f"{self.trades_in} trades made no window: {self.rejects} rejected by the processor;"
                    f" see pulse_rejects (pulse sql) and {self.data_dir / 'logs'}")
        return None


# The name the demo's callers know.
DemoSummary = RunSummary


def summarize(transport: ClickHouseTransport, since_ms: int = 0) -> tuple[dict[str, int], dict[str, int], int]:
    """Windows by symbol and by signal, and rejects, written after `since_ms` (this run's)."""
    results = Results(transport)
    return results.windows_by_symbol(since_ms), results.windows_by_signal(since_ms), results.rejects(since_ms)


def summary_of(run: Pipeline, service: ProducerService, kind: str, source: str, started: float,
               since_ms: int = 0) -> RunSummary:
    """Stop the queries and sum up what the run did, producer and store alike."""
    transport = run.store()
    run.stop_job()
    if transport.local:  # a server merges in its own time; a local store is read right after the run
        Results(transport).merge_versions()
    by_symbol, signals, rejects = summarize(transport, since_ms)
    router = service.router
    snapshot = service.snapshot()
    counters, labelled = snapshot.counters, snapshot.labelled_counters
    return RunSummary(
        trades_in=router.trades, published=service.published, dead_lettered=router.invalid,
        skipped_lines=int(counters.get("replay_lines_skipped", 0) + counters.get("frames_skipped", 0)),
        windows_out=sum(by_symbol.values()), windows_by_symbol=by_symbol, signals=signals,
        rejects=rejects, elapsed_s=time.monotonic() - started, data_dir=run.settings.data_dir,
        dead_letter_reasons=dict(router.invalid_reasons), dead_letter_examples=dict(router.invalid_examples),
        kind=kind, source=source, frames=int(counters.get("frames_received", 0)),
        gaps=int(counters.get("gaps_found", counters.get("gap_events", 0))),
        dropped=int(sum(labelled.get(("records_dropped", "symbol"), {}).values())),
    )


def run_demo(settings: PulseSettings, input_path: Path, symbol: str | None, speed: float | None,
             say: Say, live_view: bool = True, warnings: WarningCount | None = None) -> RunSummary:
    started = time.monotonic()
    # A demo replays its recording from the start, and its /metrics never collides with a running producer.
    # Its end waits for the rejects query too: a short trigger there, since a replay is not live.
    settings = settings.override(spark={"starting_offsets": "earliest", "rejects_trigger_ms": 1000},
                                 producer={"metrics_port": 0}).short_batches()
    source = ReplaySource(input_path, symbol, speed)
    pace = "as fast as possible" if speed is None else f"{speed:g}x the recorded pace"
    with Pipeline(settings) as run:
        run.reset()
        kafka = settings.kafka.bootstrap_servers
        say(f"[1/5] using Kafka at {kafka}" if kafka else
            f"[1/5] starting the Kafka broker (KRaft, single node) under {settings.data_dir / 'kafka'}")
        run.create_topics()
        ch = settings.clickhouse
        say(f"[2/5] opening ClickHouse ({ch.transport}) at {store_address(ch, settings.chdb_path)}")
        run.store()
        say("[3/5] starting Spark (local mode) with the Kafka connector; first start takes ~20s")
        run.start_job()
        say(f"[4/5] replaying {input_path.name} {pace}")
        view = Dashboard(run, f"Pulse demo · {input_path.name} · {pace}", live=False, symbols=source.symbols,
                         warnings=warnings).running() if live_view else contextlib.nullcontext()
        with view:
            service = run.produce(source)
            router = service.router
            say(f"      replay done: {router.trades} trades, {router.invalid} invalid;"
                " waiting for Spark to process the last offsets")
            run.wait_caught_up(timeout_s=120)
        say("[5/5] stopping Spark and the broker")
        return summary_of(run, service, "demo", input_path.name, started)
