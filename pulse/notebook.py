"""What `notebooks/pulse.ipynb` runs, kept in the package so the notebook stays a thin script.

The notebook runs Pulse through the same `Pipeline` as `pulse demo` and `pulse process`; this
module adds what an interactive session needs: a replay of a recording in the background, a live
view of the newest windows as a table and a chart, and one `stop()` that releases everything (so
the chDB store can be read by others).
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pulse.pipeline import Background, Pipeline
from pulse.settings import PulseSettings
from pulse.source.replay import ReplaySource
from pulse.storage.clickhouse import ClickHouseTransport

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from pulse.compute.job import PulseQueries

# pandas ships no annotations; frames are passed through as Any.
DataFrame = Any

NEWEST_WINDOWS_SQL = """
SELECT symbol, window_start, trade_count, expected_trade_count, avg_price_1_sec, vwap, net_delta,
       buy_pressure_pct, signal, open, high, low, close, max_write_latency_ms
FROM pulse_metrics_latest
WHERE symbol = {symbol}
ORDER BY window_start DESC
LIMIT {limit}
"""

SIGNAL_COLOURS = {"STRONG BUY": "#1a9850", "ACCUMULATING": "#91cf60", "NEUTRAL": "#999999",
                  "DISTRIBUTING": "#fc8d59", "STRONG SELL": "#d73027"}


@dataclass
class PulseSession:
    """A running pipeline, with what an interactive session adds: a background replay and live views."""

    pipeline: Pipeline
    replay: Background | None = None

    @property
    def settings(self) -> PulseSettings:
        return self.pipeline.settings

    @property
    def bootstrap(self) -> str:
        return self.pipeline.bootstrap

    @property
    def transport(self) -> ClickHouseTransport:
        return self.pipeline.store()

    @property
    def queries(self) -> PulseQueries:
        return self.pipeline.start_job()

    def replay_recording(self, path: Path, symbol: str | None = None, speed: float | None = None) -> Background:
        """Start replaying `path` (at `speed` x the recorded pace, None = as fast as possible)."""
        self.replay = self.pipeline.produce_in_background(ReplaySource(path, symbol, speed))
        return self.replay

    def caught_up(self) -> bool:
        """The replay (if any) is over and both queries have processed everything."""
        if self.replay is not None:
            if not self.replay.done:
                return False
            self.replay.result()  # raises what the replay raised
        return self.pipeline.caught_up()

    def symbols(self) -> list[str]:
        rows = self.transport.query_arrow(
            "SELECT symbol, sum(trade_count) AS trades FROM pulse_metrics_latest GROUP BY symbol ORDER BY trades DESC"
        ).to_pylist()
        return [str(row["symbol"]) for row in rows]

    def newest_windows(self, symbol: str | None = None, limit: int = 30) -> DataFrame:
        """The newest `limit` one-second windows of `symbol` (default: the busiest), oldest first."""
        symbol = symbol or next(iter(self.symbols()), "")
        sql = NEWEST_WINDOWS_SQL.format(symbol="'" + symbol.replace("'", "''") + "'", limit=int(limit))
        frame: DataFrame = self.transport.query_arrow(sql).to_pandas()
        return frame.sort_values("window_start").reset_index(drop=True)

    def live_view(self, seconds: float, refresh_s: float = 1.0, symbol: str | None = None, limit: int = 30,
                  stop_when_caught_up: bool = True) -> DataFrame:
        """Redraw the newest windows (table + chart) every `refresh_s` for up to `seconds`."""
        from IPython import display as ipython_display  # noqa: PLC0415 - only inside a notebook

        # IPython's display helpers are unannotated.
        display: Any = ipython_display.display
        clear_output: Any = ipython_display.clear_output
        image: Any = ipython_display.Image

        deadline = time.monotonic() + seconds
        frame = self.newest_windows(symbol, limit)
        while True:
            caught_up = stop_when_caught_up and self.caught_up()
            frame = self.newest_windows(symbol, limit)
            clear_output(wait=True)
            if frame.empty:
                display("waiting for the first windows ...")
            else:
                display(frame.tail(10))
                # As PNG bytes: renders the same in JupyterLab and in headless runs, with no backend set up.
                display(image(data=png(window_chart(frame))))
            if caught_up or time.monotonic() >= deadline:
                return frame
            time.sleep(refresh_s)

    def stop(self) -> None:
        """Stop the replay, the queries, Spark, the store and the embedded broker (if started here)."""
        self.pipeline.stop()


def start_session(settings: PulseSettings, fresh: bool = True) -> PulseSession:
    """Broker (given or embedded), ClickHouse with the schema, Spark, and the running job.

    `fresh` starts from nothing: the embedded broker's log, the checkpoints and the chDB store of a
    previous run under the data directory go (a replay into old state would count trades twice).
    """
    pipeline = Pipeline(settings)
    if fresh:
        pipeline.reset()
    try:
        pipeline.create_topics()
        pipeline.start_job()
    except BaseException:
        pipeline.stop()
        raise
    return PulseSession(pipeline)


def png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    return buffer.getvalue()


def window_chart(frame: DataFrame) -> Figure:
    """Price vs VWAP with each window's signal, and net delta, for consecutive windows of one symbol."""
    from matplotlib.figure import Figure  # noqa: PLC0415 - no pyplot state: safe in a loop

    figure = Figure(figsize=(10, 5), constrained_layout=True)
    price_axes, delta_axes = figure.subplots(2, 1, sharex=True, height_ratios=[2, 1])
    times = frame["window_start"]
    price_axes.plot(times, frame["avg_price_1_sec"], label="average price", color="#4575b4")
    price_axes.plot(times, frame["vwap"], label="VWAP", color="#fdae61", linestyle="--")
    for signal, colour in SIGNAL_COLOURS.items():
        rows = frame[frame["signal"] == signal]
        if not rows.empty:
            price_axes.scatter(rows["window_start"], rows["avg_price_1_sec"], color=colour, label=signal, zorder=3)
    symbol = frame["symbol"].iloc[0] if not frame.empty else ""
    price_axes.set_title(f"{symbol}: one-second windows")
    price_axes.legend(loc="upper left", fontsize="small", ncols=3)
    colours = ["#1a9850" if value >= 0 else "#d73027" for value in frame["net_delta"]]
    delta_axes.bar(times, frame["net_delta"], width=1 / 86_400 * 0.8, color=colours)
    delta_axes.set_ylabel("net delta")
    return figure
