"""`pulse demo`: the whole pipeline on this machine, end to end, on a recording.

Embedded Kafka broker -> replay producer -> Spark job -> chDB, with a live view of the newest
windows per symbol, a summary at the end, and everything stopped cleanly (also on Ctrl-C).
The results stay in `<data_dir>/chdb` for `pulse sql`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pulse.pipeline import Pipeline
from pulse.resources import bundled_recording
from pulse.settings import PulseSettings
from pulse.source.replay import ReplaySource
from pulse.storage.clickhouse import ClickHouseTransport

BUNDLED_RECORDING = bundled_recording()

Say = Callable[[str], None]


@dataclass
class DemoSummary:
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

    def render(self) -> str:
        lines = [
            "",
            "== Pulse demo summary",
            f"trades in:        {self.trades_in} (published {self.published}, dead-lettered {self.dead_lettered},"
            f" skipped non-trade lines {self.skipped_lines})",
        ]
        lines += [f"  dead letters:   {count} x {reason}" for reason, count in
                  sorted(self.dead_letter_reasons.items(), key=lambda kv: -kv[1])]
        lines.append(f"windows out:      {self.windows_out} one-second windows in pulse_metrics")
        lines += [f"  {symbol:<12} {count} windows" for symbol, count in sorted(self.windows_by_symbol.items())]
        lines.append("signals:")
        lines += [f"  {kind:<14} {count}" for kind, count in sorted(self.signals.items(), key=lambda kv: -kv[1])]
        lines.append(f"rejected by the processor: {self.rejects}")
        lines.append(f"took {self.elapsed_s:.1f}s; results in {self.data_dir / 'chdb'}")
        lines.append(f'next: pulse sql "SELECT symbol, count() FROM pulse_metrics GROUP BY symbol"'
                     f" --data-dir {self.data_dir}")
        return "\n".join(lines)


LIVE_VIEW_SQL = """
SELECT symbol, window_start, trade_count AS trades, round(vwap, 6) AS vwap,
       round(avg_price_1_sec, 6) AS avg_price, round(net_delta, 4) AS net_delta,
       round(buy_pressure_pct, 1) AS buy_pct, signal
FROM pulse_metrics FINAL
ORDER BY window_start DESC LIMIT 1 BY symbol
"""


class LiveView:
    """Prints the newest window per symbol every `period_s` while the pipeline runs."""

    def __init__(self, transport: ClickHouseTransport, say: Say, period_s: float = 2.0) -> None:
        self._transport = transport
        self._say = say
        self._period_s = period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pulse-live-view", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self._period_s):
            text = self._transport.query_text(LIVE_VIEW_SQL)
            if text.strip():
                self._say(f"-- newest windows ({time.strftime('%H:%M:%S')})\n{text.rstrip()}")

    def __enter__(self) -> LiveView:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def summarize(transport: ClickHouseTransport) -> tuple[dict[str, int], dict[str, int], int]:
    by_symbol = transport.query_arrow(
        "SELECT symbol, count() AS windows FROM pulse_metrics FINAL GROUP BY symbol").to_pylist()
    signals = transport.query_arrow(
        "SELECT signal, count() AS windows FROM pulse_metrics FINAL GROUP BY signal").to_pylist()
    rejects = transport.query_arrow("SELECT count() AS n FROM pulse_rejects FINAL").to_pylist()[0]["n"]
    return ({r["symbol"]: r["windows"] for r in by_symbol}, {r["signal"]: r["windows"] for r in signals},
            int(rejects))


def run_demo(settings: PulseSettings, input_path: Path, symbol: str | None, speed: float | None,
             say: Say, live_view: bool = True) -> DemoSummary:
    started = time.monotonic()
    # A demo replays its recording from the start, and its /metrics never collides with a running producer.
    settings = settings.override(spark={"starting_offsets": "earliest"}, producer={"metrics_port": 0})
    source = ReplaySource(input_path, symbol, speed)
    with Pipeline(settings) as run:
        run.reset()
        say(f"[1/5] starting the Kafka broker (KRaft, single node) under {settings.data_dir / 'kafka'}")
        run.create_topics()
        say(f"[2/5] opening ClickHouse (chDB) at {settings.chdb_path} and creating the schema")
        transport = run.store()
        say("[3/5] starting Spark (local mode) with the Kafka connector; first start takes ~20s")
        run.start_job()
        pace = "as fast as possible" if speed is None else f"{speed:g}x the recorded pace"
        say(f"[4/5] replaying {input_path.name} {pace}")
        with LiveView(transport, say) if live_view else contextlib.nullcontext():
            service = run.produce(source)
            router = service.router
            say(f"      replay done: {router.trades} trades, {router.invalid} invalid;"
                " waiting for Spark to process the last offsets")
            run.wait_caught_up(timeout_s=120)
        say("[5/5] stopping Spark and the broker")
        run.stop_job()
        # Merge every window's versions now, so the table itself holds one row per window.
        transport.command("OPTIMIZE TABLE pulse_metrics FINAL")
        by_symbol, signals, rejects = summarize(transport)
        counters = service.snapshot().counters
        return DemoSummary(
            trades_in=router.trades, published=service.published, dead_lettered=router.invalid,
            skipped_lines=int(counters["replay_lines_skipped"] + counters["frames_skipped"]),
            windows_out=sum(by_symbol.values()), windows_by_symbol=by_symbol, signals=signals,
            rejects=rejects, elapsed_s=time.monotonic() - started, data_dir=settings.data_dir,
            dead_letter_reasons=dict(router.invalid_reasons), dead_letter_examples=dict(router.invalid_examples),
        )
