"""What a run of `pulse demo` or `pulse live` did, as the summary printed at its end.

Built from the runtime's `Outcome` (the producer's counters and what the store holds of the run);
a run in which nothing became a trade, or no trade became a window, is a failure it names
(`RunSummary.problem`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pulse.runtime import Outcome

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


def summary_of(outcome: Outcome, kind: str, source: str, data_dir: Path) -> RunSummary:
    """The summary of a run that had a source and a job."""
    service, results = outcome.producer, outcome.results
    assert service is not None and results is not None, "a summary needs a run with a source and a job"
    router = service.router
    snapshot = service.snapshot()
    counters, labelled = snapshot.counters, snapshot.labelled_counters
    return RunSummary(
        trades_in=router.trades, published=service.published, dead_lettered=router.invalid,
        skipped_lines=int(counters.get("replay_lines_skipped", 0) + counters.get("frames_skipped", 0)),
        windows_out=results.windows, windows_by_symbol=results.windows_by_symbol, signals=results.signals,
        rejects=results.rejects, elapsed_s=outcome.elapsed_s, data_dir=data_dir,
        dead_letter_reasons=dict(router.invalid_reasons), dead_letter_examples=dict(router.invalid_examples),
        kind=kind, source=source, frames=int(counters.get("frames_received", 0)),
        gaps=int(counters.get("gaps_found", counters.get("gap_events", 0))),
        dropped=int(sum(labelled.get(("records_dropped", "symbol"), {}).values())),
    )
