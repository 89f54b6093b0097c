"""What `notebooks/pulse.ipynb` runs, kept in the package so the notebook stays a thin script.

The notebook and `pulse process` run the same job (`pulse.compute.job.start_queries`); this module
adds what an interactive session needs: a broker (the embedded one unless settings name one),
a replay of a recording in the background, a live view of the newest windows as a table and a
chart, and one `stop()` that releases everything (so the chDB store can be read by others).
"""

from __future__ import annotations

import asyncio
import io
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pulse.broker.local_kafka import LocalKafkaBroker, ensure_topics
from pulse.compute.job import PulseQueries, start_queries
from pulse.compute.service import query_caught_up
from pulse.compute.spark_session import build_spark_session
from pulse.demo import reset_run_state
from pulse.producer import replay_to_kafka
from pulse.settings import PulseSettings
from pulse.storage.clickhouse import ClickHouseTransport, apply_schema, open_transport

if TYPE_CHECKING:
    from matplotlib.figure import Figure

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
class Replay:
    """A recording replayed into the trades topic on a background thread."""

    future: Future[int]

    @property
    def done(self) -> bool:
        return self.future.done()

    def published(self, timeout_s: float | None = None) -> int:
        """Trades published; raises what the replay raised."""
        return self.future.result(timeout=timeout_s)


@dataclass
class PulseSession:
    settings: PulseSettings
    bootstrap: str
    transport: ClickHouseTransport
    spark: Any
    queries: PulseQueries
    broker: LocalKafkaBroker | None = None
    replay: Replay | None = None

    def replay_recording(self, path: Path, symbol: str | None = None, speed: float | None = None) -> Replay:
        """Start replaying `path` (at `speed` x the recorded pace, None = as fast as possible)."""

        def run() -> int:
            router, _ = asyncio.run(replay_to_kafka(self.settings, self.bootstrap, path, symbol, speed))
            return router.counters.trades

        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pulse-replay")
        self.replay = Replay(executor.submit(run))
        executor.shutdown(wait=False)
        return self.replay

    def caught_up(self) -> bool:
        """The replay (if any) is over and both queries have processed everything."""
        if self.replay is not None:
            if not self.replay.done:
                return False
            self.replay.published()
        self.queries.raise_if_failed()
        return all(query_caught_up(q) for q in self.queries.all())

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
        """Stop the queries, Spark, the store and the embedded broker (if this session started it)."""
        try:
            self.queries.stop()
            if self.replay is not None:
                self.replay.future.cancel()
        finally:
            self.spark.stop()
            self.transport.close()
            if self.broker is not None:
                self.broker.stop()


def start_session(settings: PulseSettings, fresh: bool = True) -> PulseSession:
    """Broker (given or embedded), ClickHouse with the schema, Spark, and the running job.

    `fresh` starts from nothing: the embedded broker's log, the checkpoints and the chDB store of a
    previous run under the data directory go (a replay into old state would count trades twice).
    """
    if fresh:
        reset_run_state(settings)
    broker = None
    bootstrap = settings.kafka.bootstrap_servers
    if not bootstrap:
        broker = LocalKafkaBroker(settings.jars_dir, settings.data_dir)
        bootstrap = broker.start()
    topics = [settings.kafka.trades_topic, settings.kafka.dead_letter_topic]
    # A notebook kernel already runs an event loop on this thread: asyncio.run needs another one.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, ensure_topics(bootstrap, topics, settings.kafka.partitions)).result()
    transport = open_transport(settings.clickhouse, settings.chdb_path)
    if settings.clickhouse.transport == "chdb":
        apply_schema(transport, settings.schema_dir)
    spark = build_spark_session(settings)
    queries = start_queries(spark, settings, bootstrap, transport)
    return PulseSession(settings, bootstrap, transport, spark, queries, broker)


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
