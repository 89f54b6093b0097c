"""What `notebooks/pulse.ipynb` runs, kept in the package so the notebook stays a thin script.

The notebook runs a plan through the same runtime as `pulse demo` and `pulse process`: the job,
and a replay of a recording when there is one, until `stop()` releases everything (so the chDB
store can be read by others). This module adds what an interactive session needs: a live view of
the newest windows as a table and a chart, redrawn as the runtime waits, and the signal studies.
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pulse.resources import bundled_recording
from pulse.runtime import Event, Plan, Runtime, Tick, Until
from pulse.settings import PulseSettings, SignalSettings
from pulse.source.replay import ReplaySource
from pulse.storage.clickhouse import ClickHouseTransport
from pulse.storage.results import Results

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from pulse.compute.job import PulseQueries

# pandas ships no annotations; frames are passed through as Any.
DataFrame = Any

# Dead bands to sweep: relative to the price (avg vs VWAP) and to the window's volume (buy vs sell).
DEADBANDS = [(0.0, 0.0), (1e-5, 0.0), (5e-5, 0.0), (0.0, 0.1), (1e-5, 0.1), (5e-5, 0.1), (1e-4, 0.3)]

SIGNAL_COLOURS = {"STRONG BUY": "#1a9850", "ACCUMULATING": "#91cf60", "NEUTRAL": "#999999",
                  "DISTRIBUTING": "#fc8d59", "STRONG SELL": "#d73027"}


@dataclass
class PulseSession:
    """A running Pulse (the runtime of the notebook's plan), with what an interactive session adds: live views."""

    runtime: Runtime

    @property
    def settings(self) -> PulseSettings:
        return self.runtime.settings

    @property
    def bootstrap(self) -> str:
        return self.runtime.bootstrap

    @property
    def transport(self) -> ClickHouseTransport:
        return self.runtime.store

    @property
    def queries(self) -> PulseQueries | None:
        return self.runtime.queries

    def caught_up(self) -> bool:
        """The replay (if any) is over and the job stored everything."""
        return self.runtime.caught_up()

    def symbols(self) -> list[str]:
        return Results(self.transport).symbols_by_trades()

    def newest_windows(self, symbol: str | None = None, limit: int = 30) -> DataFrame:
        """The newest `limit` one-second windows of `symbol` (default: the busiest), oldest first."""
        symbol = symbol or next(iter(self.symbols()), "")
        frame: DataFrame = Results(self.transport).newest_windows(symbol, limit).to_pandas()
        return frame.sort_values("window_start").reset_index(drop=True)

    def live_view(self, seconds: float, refresh_s: float = 1.0, symbol: str | None = None, limit: int = 30,
                  stop_when_caught_up: bool = True) -> DataFrame:
        """Redraw the newest windows (table + chart) every `refresh_s` for up to `seconds` (or until the
        replay is stored, `stop_when_caught_up`)."""
        view = _WindowView(self, symbol, limit, refresh_s)
        self.runtime.wait(Until.CAUGHT_UP if stop_when_caught_up else Until.STOPPED, timeout_s=seconds,
                          observer=view)
        return view.draw()

    def signal_quality(self) -> DataFrame:
        """Hit rate and mean forward return per signal and horizon over this run (pulse_signal_quality)."""
        frame: DataFrame = Results(self.transport).signal_quality().to_pandas()
        return frame

    def deadband_sweep(self, bands: list[tuple[float, float]] = DEADBANDS) -> DataFrame:
        """Signal count and hit rate per dead-band setting, over this run's windows and outcomes.

        Each setting re-classifies the windows with the job's own signal rule (the Spark column
        builder); the forward prices come from pulse_signal_outcomes, which do not depend on it.
        """
        from pyspark.sql import functions as F  # noqa: PLC0415 - Spark only where a notebook sweeps

        from pulse.compute.columns import signal_column  # noqa: PLC0415

        outcomes = Results(self.transport).outcomes().to_pandas()
        spark = self.runtime.spark
        if outcomes.empty:
            return outcomes
        windows = spark.createDataFrame(outcomes)
        rows = []
        for price_band, delta_band in bands:
            signal = signal_column(F.col("avg_price"), F.col("vwap"), F.col("buy_volume"), F.col("sell_volume"),
                                   SignalSettings(price_deadband_rel=price_band, delta_deadband_rel=delta_band))
            up = signal.isin("STRONG BUY", "ACCUMULATING")
            down = signal.isin("STRONG SELL", "DISTRIBUTING")
            hit = (up & (F.col("forward_price") > F.col("close"))) | (down & (F.col("forward_price") < F.col("close")))
            for row in windows.groupBy("horizon_s").agg(
                    F.sum((up | down).cast("int")).alias("signals"), F.sum(hit.cast("int")).alias("hits")).collect():
                rows.append({"price_deadband_rel": price_band, "delta_deadband_rel": delta_band,
                             "horizon_s": row["horizon_s"], "signals": row["signals"],
                             "hit_rate_pct": round(100 * row["hits"] / row["signals"], 1) if row["signals"] else None})
        import pyarrow as pa  # noqa: PLC0415

        table: DataFrame = pa.Table.from_pylist(rows).to_pandas()
        return table.sort_values(["horizon_s", "price_deadband_rel", "delta_deadband_rel"]).reset_index(drop=True)

    def stop(self) -> None:
        """Stop the replay, the queries, Spark, the store and the embedded broker (if started here)."""
        self.runtime.stop()


class _WindowView:
    """The notebook's observer while a cell waits: the newest windows as a table and a chart."""

    def __init__(self, session: PulseSession, symbol: str | None, limit: int, refresh_s: float) -> None:
        self._session, self._symbol, self._limit, self._refresh_s = session, symbol, limit, refresh_s
        self._drawn_at = -math.inf

    def __call__(self, event: Event) -> None:
        if isinstance(event, Tick) and time.monotonic() - self._drawn_at >= self._refresh_s:
            self.draw()

    def draw(self) -> DataFrame:
        from IPython import display as ipython_display  # noqa: PLC0415 - only inside a notebook

        # IPython's display helpers are unannotated.
        display: Any = ipython_display.display
        clear_output: Any = ipython_display.clear_output
        image: Any = ipython_display.Image
        self._drawn_at = time.monotonic()
        frame = self._session.newest_windows(self._symbol, self._limit)
        clear_output(wait=True)
        if frame.empty:
            display("waiting for the first windows ...")
        else:
            display(frame.tail(10))
            # As PNG bytes: renders the same in JupyterLab and in headless runs, with no backend set up.
            display(image(data=png(window_chart(frame))))
        return frame


NOTEBOOK_DATABASE = "pulse_notebook"


def notebook_settings(settings: PulseSettings, recording: Path | None = None) -> tuple[PulseSettings, Path | None]:
    """What a notebook runs against, and the recording it replays (None: none).

    Without a broker in the settings, everything is embedded and the notebook replays `recording`
    (default: the bundled one) from the start. With one (the docker stack), it never touches what the
    processor owns: it writes into its own database and watches the live topic from `latest`; a
    recording is replayed only when asked for, into a topic of its own, never into the live one.
    """
    # A notebook waits for what it started to be processed, which shows at a batch end: short batches.
    settings = settings.short_batches()
    if not settings.kafka.bootstrap_servers:
        return settings.override(spark={"starting_offsets": "earliest"}), recording or bundled_recording()
    changes: dict[str, Any] = {"clickhouse": {"database": NOTEBOOK_DATABASE, "apply_schema": True}}
    if recording is None:
        changes["spark"] = {"starting_offsets": "latest"}
        return settings.override(**changes), None
    topic = f"pulse.notebook.replay.{time.strftime('%Y%m%d%H%M%S')}"
    changes["kafka"] = {"trades_topic": topic, "dead_letter_topic": f"{topic}.dlq", "gaps_topic": f"{topic}.gaps"}
    changes["spark"] = {"starting_offsets": "earliest"}
    return settings.override(**changes), recording


def start_session(settings: PulseSettings, recording: Path | None = None, symbol: str | None = None,
                  speed: float | None = None, fresh: bool = True) -> PulseSession:
    """Broker (given or embedded), ClickHouse with the schema, Spark with the running job, and the
    replay of `recording` (None: none), running until `PulseSession.stop()`.

    `fresh` starts from nothing: the embedded broker's log, the checkpoints and the chDB store of a
    previous run under the data directory go (a replay into old state would count trades twice).
    """
    source = ReplaySource(recording, symbol, speed) if recording is not None else None
    plan = Plan(settings, source, compute=True, fresh=fresh, until=Until.STOPPED)
    return PulseSession(Runtime(plan).start())


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


def sweep_chart(sweep: DataFrame) -> Figure:
    """Hit rate (bars) and signal count (line) per dead-band setting, one panel per horizon."""
    from matplotlib.figure import Figure  # noqa: PLC0415

    horizons = sorted(sweep["horizon_s"].unique())
    figure = Figure(figsize=(10, 3 * max(1, len(horizons))), constrained_layout=True)
    for axes, horizon in zip(figure.subplots(len(horizons), 1, squeeze=False)[:, 0], horizons, strict=True):
        rows = sweep[sweep["horizon_s"] == horizon]
        labels = [f"{p:g} / {d:g}" for p, d in zip(rows["price_deadband_rel"], rows["delta_deadband_rel"],
                                                     strict=True)]
        axes.bar(labels, rows["hit_rate_pct"].fillna(0), color="#4575b4")
        axes.axhline(50, color="#999999", linestyle=":")
        axes.set_ylabel(f"hit rate % ({horizon} s)")
        counts = axes.twinx()
        counts.plot(labels, rows["signals"], color="#d73027", marker="o")
        counts.set_ylabel("signals")
    figure.suptitle("Dead bands (price / volume): hit rate and signal count")
    return figure
