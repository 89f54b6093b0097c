"""One run of Pulse, assembled in one place: broker, topics, store, Spark job, producer, waits, stop.

Every entry point (`pulse demo`, `live`, `process`, `produce`, the notebook, the benchmarks) and
the integration tests run Pulse through a `Pipeline`. It starts each part on first use, from the
settings alone: the broker (the embedded KRaft node unless `kafka.bootstrap_servers` names one),
the topics, the ClickHouse store with its schema, the Spark session with the Pulse queries, and
the producer with any source. `stop()` releases what this pipeline started, in the one order that
leaves nothing behind: producer, queries, Spark, store, broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from pulse.broker.local_kafka import LocalKafkaBroker, end_offsets, ensure_topics, log_start_offsets
from pulse.compute.progress import IdleTracker, caught_up, reached
from pulse.producer import ProducerService
from pulse.settings import PulseSettings
from pulse.source.base import Source
from pulse.storage.clickhouse import ChdbEngine, ClickHouseTransport, apply_schema, open_transport, store_address
from pulse.storage.sinks import PulseSinks
from pulse.telemetry import Telemetry, serve_in_thread, start_metrics_server
from pulse.writer import StoreWriter

if TYPE_CHECKING:
    from pulse.compute.job import PulseQueries

log = logging.getLogger(__name__)
Say = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass
class Background:
    """A producer running on a thread of its own (the notebook's replay, the live view's feed)."""

    service: Future[ProducerService]
    stop_event: threading.Event

    @property
    def done(self) -> bool:
        return self.service.done()

    def stop(self, timeout_s: float | None = 60) -> ProducerService:
        self.stop_event.set()
        return self.service.result(timeout=timeout_s)

    def result(self, timeout_s: float | None = None) -> ProducerService:
        """The finished producer; raises what it raised."""
        return self.service.result(timeout=timeout_s)


class Pipeline:
    def __init__(self, settings: PulseSettings, say: Say = _quiet,
                 sinks: Callable[[ClickHouseTransport], PulseSinks] = PulseSinks.clickhouse) -> None:
        self.settings = settings
        self._make_sinks = sinks
        self._say = say
        self._broker: LocalKafkaBroker | None = None
        self._bootstrap: str | None = settings.kafka.bootstrap_servers
        self._topics_ready = False
        self._transport: ClickHouseTransport | None = None
        self._owns_engine = False
        self._drop_database = False
        self._spark: Any = None
        self._owns_spark = False
        self.queries: PulseQueries | None = None
        self.producers: list[ProducerService] = []
        self._background: list[Background] = []
        self._health_server: ThreadingHTTPServer | None = None
        self.writer: StoreWriter | None = None
        self._writer_health: ThreadingHTTPServer | None = None
        self._writer_run: Background | None = None

    # -- the parts, each started once, on first use -------------------------------------------

    def reset(self) -> None:
        """Forget the previous run: its checkpoints, the embedded broker's log, its chDB database.

        A replay into old state would count its trades twice. Shared infrastructure is never wiped:
        a broker named in settings keeps its topics, a ClickHouse server its tables, and in the
        chDB store only this run's database goes (other databases in it stay).
        """
        settings = self.settings
        folders = [settings.checkpoint_dir]
        if not settings.kafka.bootstrap_servers:
            folders.append(settings.data_dir / "kafka")
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
        self._drop_database = True  # a local store only: open_transport never drops a server's

    @property
    def bootstrap(self) -> str:
        """The Kafka to talk to: the settings' brokers, or the embedded one, started now."""
        if self._bootstrap is None:
            self.settings.data_dir.mkdir(parents=True, exist_ok=True)
            self._say(f"starting the Kafka broker (KRaft, single node) under {self.settings.data_dir / 'kafka'}")
            self._broker = LocalKafkaBroker(self.settings.jars_dir, self.settings.data_dir)
            with _sigint_ignored_by_children():
                self._bootstrap = self._broker.start()
        return self._bootstrap

    @property
    def broker(self) -> LocalKafkaBroker | None:
        return self._broker

    def create_topics(self) -> None:
        _run_async(self.ensure_topics)

    async def ensure_topics(self) -> None:
        if self._topics_ready:
            return
        kafka = self.settings.kafka
        await ensure_topics(self.bootstrap, [kafka.trades_topic, kafka.dead_letter_topic, kafka.gaps_topic,
                                             kafka.metrics_topic, kafka.rejects_topic],
                            kafka.partitions, replication_factor=kafka.replication_factor,
                            configs=kafka.topic_configs())
        self._topics_ready = True

    def store(self) -> ClickHouseTransport:
        """ClickHouse: the in-process chDB store under the data directory, or a server over HTTP."""
        if self._transport is None:
            ch = self.settings.clickhouse
            was_open = ChdbEngine.is_open(self.settings.chdb_path)
            self._say(f"opening ClickHouse ({ch.transport}) at {store_address(ch, self.settings.chdb_path)},"
                      f" database {ch.database}")
            self._transport = open_transport(ch, self.settings.chdb_path, fresh=self._drop_database)
            self._owns_engine = self._transport.local and not was_open
            if self._transport.local or ch.apply_schema:
                apply_schema(self._transport, self.settings.schema_dir)
        return self._transport

    def spark_session(self) -> Any:
        """The Spark session with the Kafka connector (a `pyspark.sql.SparkSession`)."""
        if self._spark is None:
            from pyspark import SparkContext  # noqa: PLC0415 - Spark only for runs that compute

            from pulse.compute.spark_session import build_spark_session  # noqa: PLC0415

            self._say(f"starting Spark ({self.settings.spark_master}) with the Kafka connector")
            # A session that was already running (tests, a notebook kernel) is shared, not ours to stop.
            self._owns_spark = SparkContext._active_spark_context is None
            self._spark = build_spark_session(self.settings)
        return self._spark

    def start_job(self) -> PulseQueries:
        """The Spark session and the Pulse queries, writing into `store()`."""
        if self.queries is None:
            from pulse.compute.job import start_queries  # noqa: PLC0415 - Spark only for runs that compute

            sinks = self._make_sinks(self.store())
            catch_up = False
            if self.settings.realtime:
                self.create_topics()
                if self.settings.writer.in_process:
                    self.start_writer(sinks)
                catch_up = self._checkpoint_behind_retention()
                if catch_up:
                    self._say("retention deleted trades the checkpoint had yet to read: catching up in"
                              " micro-batches (the loss is counted in pulse_health), then Real-Time Mode")
            self.queries = start_queries(self.spark_session(), self.settings, self.bootstrap, sinks, catch_up)
        return self.queries

    def _checkpoint_behind_retention(self) -> bool:
        from pulse.compute.progress import behind_retention, checkpoint_offsets  # noqa: PLC0415

        topic = self.settings.kafka.trades_topic
        queries = ("pulse_metrics", "pulse_rejects")  # the job's query names, each with its checkpoint folder
        resume = [checkpoint_offsets(self.settings.checkpoint_dir / query) for query in queries]
        if not any(resume):
            return False
        log_start: dict[int, int] = _run_async(functools.partial(log_start_offsets, self.bootstrap, topic))
        return any(behind_retention(offsets, log_start, topic) for offsets in resume)

    def start_writer(self, sinks: PulseSinks | None = None) -> StoreWriter:
        """The store writer (Real-Time Mode's job output -> ClickHouse) on a thread of its own."""
        if self.writer is None:
            self.create_topics()
            writer = self.writer = StoreWriter(self.settings, sinks or self._make_sinks(self.store()))
            bootstrap = self.bootstrap
            stop_event = threading.Event()
            outcome: Future[Any] = Future()
            ready = threading.Event()

            async def run() -> StoreWriter:
                stopping, started = asyncio.Event(), asyncio.Event()
                watcher = asyncio.create_task(_forward(stop_event, stopping))
                signal_ready = asyncio.create_task(_signal(started, ready))
                try:
                    await writer.run(bootstrap, stopping, started)
                finally:
                    watcher.cancel()
                    signal_ready.cancel()
                return writer

            threading.Thread(target=lambda: _settle(outcome, lambda: asyncio.run(run())), name="pulse-store-writer",
                             daemon=True).start()
            self._writer_run = Background(outcome, stop_event)
            while not ready.wait(0.05):
                if outcome.done():
                    outcome.result()  # raises what stopped the writer before it was ready
        return self.writer

    def stop_writer(self) -> None:
        """Stop the writer after it inserted what the job wrote (call once the job stopped)."""
        if self._writer_run is not None:
            run, self._writer_run = self._writer_run, None
            run.stop()

    def serve_job_health(self) -> int:
        """The job's `/health` and `/metrics` (port from settings, 0 = any); returns the bound port."""
        queries = self.start_job()
        spark = self.settings.spark

        writer = self.writer

        def health() -> dict[str, Any]:
            state = queries.health(self.settings.health_stale_after_s)
            if writer is not None:  # Real-Time Mode with the writer in this process: red when it stalls
                state["writer"] = writer.health()
                state["ready"] = state["ready"] and state["writer"]["ready"]
            return state

        def snapshot() -> Telemetry:
            gauges = Telemetry(gauges={"ready": float(health()["ready"]),
                                       "last_batch_duration_ms": float(queries.listener.last_batch_ms)})
            if writer is None:
                return gauges
            own = writer.telemetry()
            return Telemetry(counters={f"writer_{k}": v for k, v in own.counters.items()},
                             gauges={**{f"writer_{k}": v for k, v in own.gauges.items()}, **gauges.gauges},
                             histograms={f"writer_{k}": v for k, v in own.histograms.items()})

        self._health_server = serve_in_thread(snapshot, health, spark.health_port, spark.health_host,
                                              "pulse_processor_")
        port: int = self._health_server.server_address[1]
        return port

    def serve_writer_health(self) -> int:
        """The store writer's own `/health` and `/metrics` (`pulse store`); returns the bound port."""
        writer, settings = self.start_writer(), self.settings.writer
        self._writer_health = serve_in_thread(writer.telemetry, writer.health, settings.health_port,
                                              settings.health_host, "pulse_writer_")
        port: int = self._writer_health.server_address[1]
        return port

    def stop_job(self) -> None:
        """Stop the queries (the checkpoint stays consistent); the store stays open for reading."""
        if self.queries is not None:
            self.queries.stop()
        self.stop_writer()

    # -- the producer ------------------------------------------------------------------------------

    async def produce_async(self, source: Source, stop: asyncio.Event) -> ProducerService:
        """Run `source` through the producer (with /metrics and /health) until it ends or `stop` is set."""
        await self.ensure_topics()
        service = ProducerService(self.settings, source)
        self.producers.append(service)
        producer = self.settings.producer
        runner, service_port = await start_metrics_server(service.snapshot, service.health, producer.metrics_port,
                                                          producer.metrics_host)
        service.metrics_port = service_port
        try:
            await service.run(self.bootstrap, stop)
        finally:
            await runner.cleanup()
        return service

    def produce(self, source: Source, stop: threading.Event | None = None) -> ProducerService:
        """`produce_async` from synchronous code; `stop` may be set from any thread (a signal handler)."""
        _ = self.bootstrap  # the embedded broker starts on this thread, before any event loop

        async def run() -> ProducerService:
            stopping = asyncio.Event()
            watcher = asyncio.create_task(_forward(stop, stopping)) if stop is not None else None
            try:
                return await self.produce_async(source, stopping)
            finally:
                if watcher is not None:
                    watcher.cancel()

        if _loop_running():  # a notebook kernel: the producer gets a loop on a thread of its own
            result: ProducerService = _in_thread(lambda: asyncio.run(run()))
            return result
        return asyncio.run(run())

    def produce_in_background(self, source: Source) -> Background:
        """Start `source` on a thread of its own; the pipeline's `stop()` stops it too."""
        _ = self.bootstrap
        stop_event = threading.Event()
        outcome: Future[ProducerService] = Future()
        thread = threading.Thread(target=lambda: _settle(outcome, lambda: self.produce(source, stop_event)),
                                  name=f"pulse-producer-{source.name}", daemon=True)
        thread.start()
        background = Background(outcome, stop_event)
        self._background.append(background)
        return background

    # -- waiting for the job -----------------------------------------------------------------------

    def wait_caught_up(self, timeout_s: float, poll_s: float = 0.25) -> None:
        """Block until both queries have processed everything the trades topic holds now, and (Real-Time
        Mode) the store writer inserted everything they wrote."""
        queries = self.start_job()
        topic = self.settings.kafka.trades_topic
        end = {topic: _run_async(lambda: end_offsets(self.bootstrap, topic))}
        deadline = time.monotonic() + timeout_s
        pending = queries.all()
        while pending:
            queries.raise_if_failed()
            pending = [q for q in pending if not reached(q.lastProgress, end)]
            if not pending:
                break
            if time.monotonic() > deadline:
                names = ", ".join(q.name for q in pending)
                raise TimeoutError(f"Spark queries {names} did not catch up within {timeout_s:.0f}s")
            time.sleep(poll_s)
        outputs = self._output_ends()
        while self.writer is not None and not self.writer.caught_up(outputs):
            self.raise_if_writer_failed()
            if time.monotonic() > deadline:
                raise TimeoutError(f"the store writer did not insert the job's output within {timeout_s:.0f}s")
            time.sleep(0.02)

    def _output_ends(self) -> dict[tuple[str, int], int]:
        if self.writer is None:
            return {}
        kafka = self.settings.kafka
        ends: dict[tuple[str, int], int] = {}
        for topic in (kafka.metrics_topic, kafka.rejects_topic):
            offsets: dict[int, int] = _run_async(functools.partial(end_offsets, self.bootstrap, topic))
            ends.update({(topic, partition): offset for partition, offset in offsets.items()})
        return ends

    def raise_if_writer_failed(self) -> None:
        if self._writer_run is not None and self._writer_run.done:
            self._writer_run.result()
            raise RuntimeError("the store writer stopped")

    def caught_up(self) -> bool:
        """Both queries read everything Kafka had, Spark sees nothing newer, and the writer inserted it all.

        A Real-Time Mode query is always in its (long-running) batch: it has caught up once the last
        batch it finished ended at the topic's end."""
        queries = self.start_job()
        queries.raise_if_failed()
        self.raise_if_writer_failed()
        if self.settings.realtime:
            topic = self.settings.kafka.trades_topic
            end = {topic: _run_async(lambda: end_offsets(self.bootstrap, topic))}
            return (all(reached(q.lastProgress, end) for q in queries.all())
                    # No writer here: another process (`pulse store`) inserts.
                    and (self.writer is None or self.writer.caught_up(self._output_ends())))
        return all(caught_up(q.lastProgress, q.status) for q in queries.all())

    def wait_idle(self, idle_s: float, stop: threading.Event | None = None, timeout_s: float | None = None,
                  poll_s: float = 0.25) -> bool:
        """Block until the job is caught up and stayed so for `idle_s` (True), or `stop` is set (False)."""
        tracker = IdleTracker(idle_s)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        stop = stop or threading.Event()
        while not stop.wait(poll_s):
            if tracker.observe(self.caught_up(), time.monotonic()):
                return True
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"Spark queries did not go idle within {timeout_s:.0f}s")
        return False

    # -- the end -----------------------------------------------------------------------------------

    def stop(self) -> None:
        """Release what this pipeline started: producers, queries, Spark, the store, the broker."""
        try:
            for background in self._background:
                background.stop_event.set()
            for background in self._background:
                try:
                    background.service.result(timeout=60)
                except Exception as error:  # noqa: BLE001 - stopping: report, release the rest
                    log.warning("producer ended with an error", extra={"error": repr(error)})
            self._background.clear()
            for server in (self._health_server, self._writer_health):
                if server is not None:
                    server.shutdown()
                    server.server_close()
            if self.queries is not None:
                self.queries.stop()
            self.stop_writer()
        finally:
            try:
                if self._spark is not None and self._owns_spark:
                    self._spark.stop()
                self._spark = None
            finally:
                try:
                    if self._transport is not None and self._owns_engine:
                        self._transport.close()
                    self._transport = None
                finally:
                    if self._broker is not None:
                        self._broker.stop()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


@contextlib.contextmanager
def _sigint_ignored_by_children() -> Iterator[None]:
    """Children started meanwhile inherit an ignored SIGINT (a Python handler is reset at exec).

    A terminal's Ctrl-C signals the whole foreground process group, the broker JVM included, and
    a JVM does not install its shutdown handler for a signal it inherited as ignored (pyspark
    starts Spark's JVM the same way). So Ctrl-C reaches only Pulse, and `stop()` ends the broker
    last, after the producer flushed. A Ctrl-C while the broker starts is ignored too.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)


async def _signal(flag: asyncio.Event, to: threading.Event) -> None:
    await flag.wait()
    to.set()


async def _forward(flag: threading.Event, stop: asyncio.Event) -> None:
    while not flag.is_set():  # noqa: ASYNC110 - a threading.Event set by a signal handler or another thread
        await asyncio.sleep(0.05)
    stop.set()


def _settle(outcome: Future[Any], work: Callable[[], Any]) -> None:
    try:
        outcome.set_result(work())
    except BaseException as error:  # noqa: BLE001 - handed to whoever waits on the future
        outcome.set_exception(error)


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _in_thread(work: Callable[[], Any]) -> Any:
    outcome: Future[Any] = Future()
    threading.Thread(target=lambda: _settle(outcome, work), daemon=True).start()
    return outcome.result()


def _run_async(make: Callable[[], Any]) -> Any:
    """Run a coroutine to completion from synchronous code, also where a loop already runs."""
    if _loop_running():
        return _in_thread(lambda: asyncio.run(make()))
    return asyncio.run(make())
