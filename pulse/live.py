"""`pulse live`: the whole pipeline on this machine against the real exchange, until Ctrl-C.

Kafka (the embedded broker unless settings name one) -> the live Binance source -> Spark job ->
ClickHouse (chDB unless settings say HTTP), all from `Pipeline`, with the terminal dashboard.
Ctrl-C stops the producer (it drains and flushes), lets Spark process what reached Kafka, then
stops Spark, the store and the broker; the windows stay for `pulse sql`. The symbols come
resolved (`pulse.source.binance.live.market_symbols`): this module only runs them.

A run that cannot start streaming ends at once instead of retrying forever as the service does:
Binance refusing the connection (HTTP 451 from restricted regions, 403, 429) before any connection
opened, or no connection opening at all.
"""

from __future__ import annotations

import contextlib
import threading
import time

from pulse.dashboard import Dashboard, WarningCount
from pulse.demo import RunSummary, Say, summary_of
from pulse.errors import Unavailable
from pulse.pipeline import Background, Pipeline
from pulse.settings import PulseSettings
from pulse.source.base import now_ms
from pulse.source.binance.live import BinanceSource
from pulse.storage.clickhouse import store_address

# Connection attempts that failed before any succeeded: then the network, not luck, is the problem.
_UNREACHABLE_AFTER = 3


class StreamRefused(Unavailable, RuntimeError):
    """Binance answered the handshake with a refusal before any connection opened."""


class StreamUnreachable(Unavailable, RuntimeError):
    """No connection to Binance's stream opened after several attempts."""


def _check_started(source: BinanceSource) -> None:
    if source.ever_connected():
        return
    problem = source.problem()
    if problem is not None:
        raise StreamRefused(problem)
    failures = sum(stream.stats.connect_failures for stream in source.streams)
    if failures >= _UNREACHABLE_AFTER:
        raise StreamUnreachable(
            f"no connection to Binance's stream at {source.streams[0].url.split('?')[0]} after {failures} attempts:"
            " check the network (or PULSE_PRODUCER__WS_BASE_URL)")


def _wait_anchored(run: Pipeline, timeout_s: float = 120.0) -> None:
    """Until each query fixed where a new checkpoint starts. With startingOffsets=latest that happens
    at its first trigger, seconds after start: trades published before it would be skipped."""
    queries = run.start_job()
    deadline = time.monotonic() + timeout_s
    pending = queries.all()
    while pending and time.monotonic() < deadline:
        queries.raise_if_failed()
        pending = [q for q in pending if q.lastProgress is None
                   and str(q.status["message"]).startswith(("Initializing", "Getting offsets"))]
        time.sleep(0.1)


def _watch(run: Pipeline, source: BinanceSource, producer: Background, stop: threading.Event) -> None:
    """Until `stop`: fail fast on what will not heal (Spark failed, the stream refused, the producer died)."""
    queries = run.start_job()
    while not stop.wait(0.25):
        queries.raise_if_failed()
        if producer.done:
            producer.result()  # raises what ended it
            return
        _check_started(source)


def run_live(settings: PulseSettings, say: Say, stop: threading.Event, dashboard: bool = True,
             warnings: WarningCount | None = None) -> RunSummary:
    """Stream `settings.producer.symbols` (already resolved) until `stop` is set; the run's summary."""
    started, started_ms = time.monotonic(), now_ms()
    # /metrics on any free port: a live run beside the docker stack must not collide with its producer.
    # Its stop waits for Spark to process the last trades, which shows at a batch end: short batches.
    settings = settings.override(producer={"metrics_port": 0}).short_batches()
    if not settings.kafka.bootstrap_servers:
        # The embedded broker's topic holds only this data directory's runs, and a new checkpoint
        # must not skip the trades published before Spark's first trigger ("latest" would).
        settings = settings.override(spark={"starting_offsets": "earliest"})
    source = BinanceSource(settings.producer)
    market = source.market
    symbols = len(source.symbols)
    with Pipeline(settings) as run:
        kafka = settings.kafka.bootstrap_servers
        say(f"[1/4] using Kafka at {kafka}" if kafka else
            f"[1/4] starting the Kafka broker (KRaft, single node) under {settings.data_dir / 'kafka'}")
        run.create_topics()
        ch = settings.clickhouse
        say(f"[2/4] opening ClickHouse ({ch.transport}) at {store_address(ch, settings.chdb_path)}")
        run.store()
        # Before the job writes anything: the view (and the summary) count this run's windows only.
        view = Dashboard(run, f"Pulse live · Binance {market.title} · {symbols} symbols", live=True,
                         symbols=source.symbols, warnings=warnings)
        say("[3/4] starting Spark (local mode) with the Kafka connector; first start takes ~20s")
        run.start_job()
        if settings.spark.starting_offsets == "latest":
            _wait_anchored(run)
        say(f"[4/4] streaming {symbols} symbol{'s' if symbols != 1 else ''} from Binance {market.title} over"
            f" {len(source.streams)} connection{'s' if len(source.streams) != 1 else ''}; Ctrl-C stops")
        with view.running() if dashboard else contextlib.nullcontext():
            producer = run.produce_in_background(source)
            _watch(run, source, producer, stop)
            service = producer.stop()
            say(f"stopped streaming after {service.router.trades} trades; letting Spark process the last ones"
                " (Ctrl-C again skips this)")
            try:
                run.wait_caught_up(timeout_s=60)
            except TimeoutError:
                say("Spark did not catch up within 60 s: the newest trades may be missing from the results")
        return summary_of(run, service, "live", f"Binance {market.title}", started, started_ms)
