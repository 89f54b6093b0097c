"""A run of Pulse: a `Plan` says what runs and until when; the `Runtime` lives it, start to teardown.

Every entry point (`pulse demo`, `live`, `process`, `store`, `produce`, the notebook, the
benchmarks) builds a plan and picks an observer; none of them starts a part, waits or tears down.
The runtime starts the parts a plan needs in one fixed order, waits for the plan's end, and
releases everything once, in the reverse order:

    forget the last run (fresh) -> broker -> topics -> store -> store writer -> Spark job
        -> /health servers -> producer  ...  wait until ...  producer drains -> job catches up
        -> queries -> writer -> results read -> Spark -> store -> broker

It tells an observer what happens as events (`Step`, `Running`, `SourceEnded`, `Draining`, `Tick`,
`Stopping`, `Finished`): the terminal dashboard, plain lines, the notebook's view and the
benchmarks are observers. A run's waits are written here and nowhere else.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import functools
import logging
import shutil
import signal
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pulse.broker.local_kafka import LocalKafkaBroker, end_offsets, ensure_topics, log_start_offsets
from pulse.compute.progress import IdleTracker, behind_retention, caught_up, checkpoint_offsets, reached, unread
from pulse.errors import PulseError
from pulse.producer import ProducerService
from pulse.settings import PulseSettings
from pulse.source.base import Source, now_ms
from pulse.storage.clickhouse import ChdbEngine, ClickHouseTransport, apply_schema, open_transport, store_address
from pulse.storage.results import Results, RunResults
from pulse.storage.sinks import PulseSinks
from pulse.telemetry import HealthServer, Telemetry
from pulse.writer import StoreWriter

if TYPE_CHECKING:
    from pulse.compute.job import PulseQueries

log = logging.getLogger(__name__)
_TICK_S = 0.25


class Until(enum.StrEnum):
    """When a run ends (a stop request, Ctrl-C or SIGTERM, ends any of them)."""

    SOURCE_ENDED = "the source ended"  # `pulse produce` of a replay or synthetic source
    CAUGHT_UP = "caught up"  # the source ended and the job stored all of it (demo, notebook, tests)
    IDLE = "idle"  # the job stored everything in the topic, and nothing new came for `idle_s`
    STOPPED = "stopped"  # only a stop request: live, process, store


class Unfinished(PulseError):
    """The job did not store what the source published within the plan's time."""


@dataclass(frozen=True)
class Plan:
    """A run, declared: where trades come from, what runs on them, and when it ends."""

    settings: PulseSettings
    source: Source | None = None  # feeds the trades topic; None: something else does
    label: str = ""  # the source in words, for the observer ("replaying x.raw at 10x")
    compute: bool = False  # the Spark job (in Real-Time Mode with chDB, the store writer with it)
    store_writer: bool = False  # the store writer alone (`pulse store`)
    serve_health: bool = False  # the job's or the writer's /health and /metrics
    fresh: bool = False  # forget the last run: checkpoints, the embedded broker's log, a local database
    until: Until = Until.STOPPED
    idle_s: float = 1.0  # Until.IDLE
    finish_s: float = 120.0  # after the source ended, how long the job may take to store the rest
    fail_fast: bool = False  # end at once when the source cannot start (refused, unreachable)
    # A test or benchmark may wrap what the job writes (to time it); the default is the store itself.
    sinks: Callable[[ClickHouseTransport], PulseSinks] = PulseSinks.clickhouse

    @property
    def writer_here(self) -> bool:
        settings = self.settings
        return self.store_writer or (self.compute and settings.realtime and settings.writer.in_process)


# -- what an observer hears ------------------------------------------------------------------------

@dataclass(frozen=True)
class Step:
    """A part is about to start (`number` of `total` steps of this plan)."""

    part: str
    text: str
    number: int
    total: int


@dataclass(frozen=True)
class Running:
    """Every part is up."""

    runtime: Runtime


@dataclass(frozen=True)
class SourceEnded:
    service: ProducerService


@dataclass(frozen=True)
class Draining:
    """The job is given time to store what waits: the source stopped, or a backlog is caught up."""

    text: str


@dataclass(frozen=True)
class Tick:
    """One round of a wait (about four a second)."""

    runtime: Runtime


@dataclass(frozen=True)
class Stopping:
    text: str


@dataclass(frozen=True)
class Finished:
    outcome: Outcome


Event = Step | Running | SourceEnded | Draining | Tick | Stopping | Finished


# What watches a run: the terminal dashboard, plain lines, the notebook's view, a benchmark.
Observer = Callable[[Event], None]


def quiet(_: Event) -> None:
    """The observer of runs nobody watches (tests, services that log)."""


@dataclass
class Lines:
    """Plain progress lines: `[n/N] step` and what the run waits for."""

    say: Callable[[str], None]
    numbered: bool = True

    def __call__(self, event: Event) -> None:
        if isinstance(event, Step):
            self.say(f"[{event.number}/{event.total}] {event.text}" if self.numbered else event.text)
        elif isinstance(event, SourceEnded):
            router = event.service.router
            self.say(f"      the source ended: {router.trades} trades, {router.invalid} invalid")
        elif isinstance(event, Draining | Stopping):
            self.say(event.text)


@dataclass(frozen=True)
class Outcome:
    """What a run did: why it ended, how long it took, its producer, and what the store holds of it."""

    ended: str
    elapsed_s: float
    producer: ProducerService | None
    results: RunResults | None
    caught_up: bool = True


# -- stopping from any thread -------------------------------------------------------------------------

class StopSignal:
    """A stop request from any thread (a signal handler, a notebook cell, a test) that wakes the run's
    event loops at once, through `call_soon_threadsafe`, instead of each loop polling a flag."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._loops: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    def set(self) -> None:
        self._event.set()
        for loop, event in list(self._loops):
            with contextlib.suppress(RuntimeError):  # that loop already ended
                loop.call_soon_threadsafe(event.set)

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout_s: float | None = None) -> bool:
        return self._event.wait(timeout_s)

    def bind(self) -> asyncio.Event:
        """An asyncio.Event of the running loop, set when this is."""
        event = asyncio.Event()
        self._loops.append((asyncio.get_running_loop(), event))
        if self._event.is_set():
            event.set()
        return event


def stop_on_signals(on_request: Callable[[str], None] | None = None) -> StopSignal:
    """SIGINT and SIGTERM request a stop; the runtime then drains, flushes and releases everything.

    A second Ctrl-C stops waiting: it interrupts whatever the main thread waits on, and the runtime
    still tears down in order on the way out.
    """
    stop = StopSignal()

    def request(signum: int, _frame: object) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if on_request is not None:
            on_request(f"received {signal.Signals(signum).name}: stopping")
        stop.set()

    signal.signal(signal.SIGINT, request)
    signal.signal(signal.SIGTERM, request)
    return stop


class _Task:
    """Async work on a thread and event loop of its own (the producer, the store writer)."""

    def __init__(self, name: str, work: Callable[[asyncio.Event], Coroutine[Any, Any, Any]]) -> None:
        self.stop = StopSignal()
        self.outcome: concurrent.futures.Future[Any] = concurrent.futures.Future()

        async def main() -> Any:
            return await work(self.stop.bind())

        def body() -> None:
            try:
                self.outcome.set_result(asyncio.run(main()))
            except BaseException as error:  # noqa: BLE001 - handed to whoever waits on the future
                self.outcome.set_exception(error)

        threading.Thread(target=body, name=name, daemon=True).start()

    @property
    def done(self) -> bool:
        return self.outcome.done()

    def raise_if_failed(self) -> None:
        if self.outcome.done() and self.outcome.exception() is not None:
            self.outcome.result()

    def end(self, timeout_s: float | None = 60) -> Any:
        self.stop.set()
        return self.outcome.result(timeout=timeout_s)


def call(make: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """A coroutine run to completion from synchronous code, also where a loop already runs (a notebook)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result()


# -- the runtime --------------------------------------------------------------------------------------

@dataclass
class _Parts:
    broker: LocalKafkaBroker | None = None
    bootstrap: str = ""
    store: ClickHouseTransport | None = None
    owns_store: bool = False
    spark: Any = None
    owns_spark: bool = False
    queries: PulseQueries | None = None
    writer: StoreWriter | None = None
    writer_task: _Task | None = None
    health: list[HealthServer] = field(default_factory=list)
    producer: ProducerService | None = None
    producer_task: _Task | None = None


class Runtime:
    """Starts a plan's parts in one order, waits for its end, tears down once (`with Runtime(...)`)."""

    def __init__(self, plan: Plan, observer: Observer = quiet) -> None:
        self.plan = plan
        self.settings = plan.settings.jit_for(bounded=plan.until is not Until.STOPPED)
        self._observer = observer
        self._parts = _Parts()
        self._started_at = time.monotonic()
        self._started_ms = now_ms()
        self._stopped = False
        self.health_port: int | None = None

    # What observers and callers may read once the part runs.
    @property
    def bootstrap(self) -> str:
        return self._parts.bootstrap

    @property
    def store(self) -> ClickHouseTransport:
        if self._parts.store is None:
            raise RuntimeError("this plan opens no store")
        return self._parts.store

    @property
    def spark(self) -> Any:
        return self._parts.spark

    @property
    def queries(self) -> PulseQueries | None:
        return self._parts.queries

    @property
    def writer(self) -> StoreWriter | None:
        return self._parts.writer

    @property
    def producer(self) -> ProducerService | None:
        return self._parts.producer

    @property
    def started_ms(self) -> int:
        return self._started_ms

    def _emit(self, event: Event, extra: Observer | None = None) -> None:
        self._observer(event)
        if extra is not None:
            extra(event)

    # -- start ---------------------------------------------------------------------------------

    def _steps(self) -> list[str]:
        plan = self.plan
        steps = ["broker"]
        if plan.compute or plan.store_writer:
            steps.append("store")
        if plan.compute:
            steps.append("spark")
        elif plan.store_writer:
            steps.append("writer")
        if plan.source is not None:
            steps.append("source")
        if plan.until is not Until.STOPPED:  # a run that ends by itself counts its stop as a step
            steps.append("stop")
        return steps

    def _step(self, part: str, text: str) -> None:
        steps = self._steps()
        self._emit(Step(part, text, steps.index(part) + 1, len(steps)))

    def start(self) -> Runtime:
        """Every part the plan needs, in the one order; on failure, what started is released."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        plan, settings, parts = self.plan, self.settings, self._parts
        step = self._step

        if plan.fresh:
            self._forget_last_run()
        kafka = settings.kafka
        if kafka.bootstrap_servers:
            step("broker", f"using Kafka at {kafka.bootstrap_servers}")
            parts.bootstrap = kafka.bootstrap_servers
        else:
            step("broker", f"starting the Kafka broker (KRaft, single node) under {settings.data_dir / 'kafka'}")
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            parts.broker = LocalKafkaBroker(settings.jars_dir, settings.data_dir,
                                            class_archives=settings.class_archives, quick_jit=settings.quick_jit)
            with _sigint_ignored_by_children():
                parts.bootstrap = parts.broker.start()
        call(lambda: ensure_topics(
            parts.bootstrap, [kafka.trades_topic, kafka.dead_letter_topic, kafka.gaps_topic, kafka.metrics_topic,
                              kafka.rejects_topic], kafka.partitions, replication_factor=kafka.replication_factor,
            configs=kafka.topic_configs()))
        if plan.compute or plan.store_writer:
            ch = settings.clickhouse
            step("store", f"opening ClickHouse ({ch.transport}) at {store_address(ch, settings.chdb_path)},"
                          f" database {ch.database}")
            was_open = ChdbEngine.is_open(settings.chdb_path)
            parts.store = open_transport(ch, settings.chdb_path, fresh=plan.fresh)
            parts.owns_store = parts.store.local and not was_open
            if parts.store.local or ch.apply_schema:
                apply_schema(parts.store, settings.schema_dir)
            sinks = plan.sinks(parts.store)
        if plan.store_writer and not plan.compute:
            step("writer", f"storing {kafka.metrics_topic} and {kafka.rejects_topic} into ClickHouse")
        if plan.writer_here:
            self._start_writer(sinks)
        if plan.compute:
            engine = (f"Real-Time Mode, {settings.spark.realtime_batch_s:g} s batches" if settings.realtime
                      else f"micro-batches every {settings.spark.trigger_ms} ms")
            step("spark", f"starting Spark ({settings.spark_master}, {engine}) with the Kafka connector;"
                          " its start takes several seconds")
            self._start_job(sinks)
        if plan.serve_health:
            self._serve_health()
        if plan.compute and plan.source is not None and settings.spark.starting_offsets == "latest":
            self._wait_anchored()
        if plan.source is not None:
            step("source", plan.label or f"producing from {plan.source.name}")
            service = parts.producer = ProducerService(settings, plan.source)
            bootstrap = parts.bootstrap
            parts.producer_task = _Task(f"pulse-producer-{plan.source.name}",
                                        lambda stop: service.serve(bootstrap, stop))
        self._emit(Running(self))

    def _forget_last_run(self) -> None:
        """A replay into old state would count its trades twice. Shared infrastructure is never wiped:
        a named broker keeps its topics, a server its tables; in a chDB store only this run's database
        goes (open_transport(fresh=True))."""
        settings = self.settings
        folders = [settings.checkpoint_dir]
        if not settings.kafka.bootstrap_servers:
            folders.append(settings.data_dir / "kafka")
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)

    def _start_writer(self, sinks: PulseSinks) -> None:
        parts = self._parts
        writer = parts.writer = StoreWriter(self.settings, sinks)
        bootstrap = parts.bootstrap
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()

        async def run(stop: asyncio.Event) -> StoreWriter:
            started = asyncio.Event()
            signal_ready = asyncio.create_task(started.wait())
            signal_ready.add_done_callback(lambda _: None if ready.done() else ready.set_result(None))
            try:
                await writer.run(bootstrap, stop, started)
            finally:
                signal_ready.cancel()
            return writer

        task = parts.writer_task = _Task("pulse-store-writer", run)
        concurrent.futures.wait([ready, task.outcome], return_when=concurrent.futures.FIRST_COMPLETED)
        task.raise_if_failed()  # what stopped the writer before it was ready

    def _start_job(self, sinks: PulseSinks) -> None:
        from pyspark import SparkContext  # noqa: PLC0415 - Spark only for runs that compute

        from pulse.compute.job import start_queries  # noqa: PLC0415
        from pulse.compute.spark_session import build_spark_session  # noqa: PLC0415

        parts, settings = self._parts, self.settings
        # A session that was already running (tests, a notebook kernel) is shared, not ours to stop.
        parts.owns_spark = SparkContext._active_spark_context is None
        parts.spark = build_spark_session(settings)
        catch_up = self._catch_up() if settings.realtime else None
        if catch_up is not None:
            self._emit(Draining(catch_up))
        parts.queries = start_queries(parts.spark, settings, parts.bootstrap, sinks, catch_up is not None)

    def _catch_up(self) -> str | None:
        """Why a Real-Time Mode job first reads what waits in the topic as micro-batches, if it must.

        Real-Time Mode reads each partition at its own pace, but its watermark is one for the query:
        the newest trade of the partition read furthest. Over a backlog (a restart after downtime, a
        topic filled before the job) a partition reached later would fall behind it, and its trades
        would be dropped as late. A micro-batch plans every partition's end at once and keeps one
        watermark for the whole batch. Retention deleting unread offsets needs micro-batches too."""
        topic = self.settings.kafka.trades_topic
        queries = ("pulse_metrics", "pulse_rejects")  # the job's query names, each with its checkpoint folder
        resume = [checkpoint_offsets(self.settings.checkpoint_dir / query) for query in queries]
        log_start: dict[int, int] = call(functools.partial(log_start_offsets, self.bootstrap, topic))
        if any(behind_retention(offsets, log_start, topic) for offsets in resume):
            return ("retention deleted trades the checkpoint had yet to read: catching up in micro-batches"
                    " (the loss is counted in pulse_health), then Real-Time Mode")
        ends: dict[int, int] = call(functools.partial(end_offsets, self.bootstrap, topic))
        fresh = log_start if self.settings.spark.starting_offsets == "earliest" else ends
        waiting = max(unread(offsets, fresh, ends, topic) for offsets in resume)
        if not waiting:
            return None
        return (f"{waiting:,} trades wait in {topic}: reading them in micro-batches first (one watermark for"
                " every partition, so none falls behind it), then Real-Time Mode")

    def _serve_health(self) -> None:
        """The job's /health and /metrics (with the writer's, when it runs here), or the writer's alone."""
        parts, settings = self._parts, self.settings
        writer = parts.writer
        if parts.queries is None:
            assert writer is not None
            server = HealthServer(writer.telemetry, writer.health, settings.writer.health_port,
                                  settings.writer.health_host, "pulse_writer_", "PULSE_WRITER__HEALTH_PORT")
        else:
            queries = parts.queries

            def health() -> dict[str, Any]:
                state = queries.health(settings.health_stale_after_s)
                if writer is not None:  # Real-Time Mode with the writer in this process: red when it stalls
                    state["writer"] = writer.health()
                    state["ready"] = state["ready"] and state["writer"]["ready"]
                return state

            def snapshot() -> Telemetry:
                gauges = {"ready": float(health()["ready"]),
                          "last_batch_duration_ms": float(queries.listener.last_batch_ms)}
                if writer is None:
                    return Telemetry(gauges=gauges)
                own = writer.telemetry()
                return Telemetry(counters={f"writer_{k}": v for k, v in own.counters.items()},
                                 gauges={**{f"writer_{k}": v for k, v in own.gauges.items()}, **gauges},
                                 histograms={f"writer_{k}": v for k, v in own.histograms.items()})

            server = HealthServer(snapshot, health, settings.spark.health_port, settings.spark.health_host,
                                  "pulse_processor_", "PULSE_SPARK__HEALTH_PORT")
        parts.health.append(server)
        self.health_port = server.port

    def _wait_anchored(self, timeout_s: float = 120.0) -> None:
        """Until each query fixed where a new checkpoint starts: with startingOffsets=latest that happens
        at its first trigger, seconds after start, and trades published before it would be skipped."""
        queries = self._parts.queries
        assert queries is not None
        deadline = time.monotonic() + timeout_s
        pending = queries.all()
        while pending and time.monotonic() < deadline:
            queries.raise_if_failed()
            pending = [q for q in pending if q.lastProgress is None
                       and str(q.status["message"]).startswith(("Initializing", "Getting offsets"))]
            time.sleep(0.1)

    # -- wait ----------------------------------------------------------------------------------

    def raise_if_failed(self) -> None:
        """What will not heal ends the run: a failed query, a dead writer or producer, a refused source."""
        parts = self._parts
        if parts.queries is not None:
            parts.queries.raise_if_failed()
            parts.queries.raise_if_stalled(self.settings.stall_exit_after_s)
        if parts.writer_task is not None and parts.writer_task.done:
            parts.writer_task.raise_if_failed()
            raise RuntimeError("the store writer stopped")
        if parts.producer_task is not None:
            parts.producer_task.raise_if_failed()
        if self.plan.fail_fast and self.plan.source is not None:
            fatal = self.plan.source.fatal()
            if fatal is not None:
                raise fatal

    @property
    def source_ended(self) -> bool:
        """The producer ended (or the plan has none)."""
        task = self._parts.producer_task
        return task is None or task.done

    def _topic_end(self) -> dict[str, dict[int, int]]:
        topic = self.settings.kafka.trades_topic
        return {topic: call(functools.partial(end_offsets, self.bootstrap, topic))}

    def _output_ends(self) -> dict[tuple[str, int], int]:
        kafka = self.settings.kafka
        ends: dict[tuple[str, int], int] = {}
        for topic in (kafka.metrics_topic, kafka.rejects_topic):
            offsets: dict[int, int] = call(functools.partial(end_offsets, self.bootstrap, topic))
            ends.update({(topic, partition): offset for partition, offset in offsets.items()})
        return ends

    def _stored(self, end: dict[str, dict[int, int]] | None) -> bool:
        """The job read up to `end` (None: all Kafka has and Spark sees nothing newer), and the writer
        inserted all the job wrote. A Real-Time Mode query is always in its long-running batch: it has
        read up to an offset once the last batch it finished ended there."""
        queries, writer = self._parts.queries, self._parts.writer
        if queries is None:
            return writer is None or writer.caught_up(self._output_ends())
        if end is None and not self.settings.realtime:
            read = all(caught_up(q.lastProgress, q.status) for q in queries.all())
        else:
            target = end or self._topic_end()  # one look at the topic for both queries
            read = all(reached(q.lastProgress, target) for q in queries.all())
        # No writer here (another process, `pulse store`, inserts): what Spark wrote is all there is to wait for.
        return read and (writer is None or writer.caught_up(self._output_ends()))

    def caught_up(self) -> bool:
        """The source (if any) ended and the job stored everything; raises what failed."""
        self.raise_if_failed()
        return self.source_ended and self._stored(None)

    def wait(self, until: Until | Callable[[], bool] | None = None, stop: StopSignal | None = None,
             timeout_s: float | None = None, observer: Observer | None = None, idle_s: float | None = None) -> str:
        """Until the plan's end (or `until`: one of `Until`, or a condition of the caller's, such as a
        benchmark's "every trade visible"), a stop request or `timeout_s`; why it ended, in words.
        Raises what failed on the way."""
        until = until or self.plan.until
        stop = stop or StopSignal()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        idle = IdleTracker(self.plan.idle_s if idle_s is None else idle_s)
        end: dict[str, dict[int, int]] | None = None  # the topic's end once the source ended
        announced = False
        while True:
            self.raise_if_failed()
            self._emit(Tick(self), observer)
            ended = self.source_ended
            if ended and not announced and self._parts.producer is not None:
                announced = True
                self._emit(SourceEnded(self._parts.producer), observer)
            if not isinstance(until, Until) and until():
                return "condition met"
            if until is Until.SOURCE_ENDED and ended:
                return str(until.value)
            if until is Until.CAUGHT_UP and ended:
                if end is None:  # the job gets `finish_s` from here to store what the source published
                    end = self._topic_end() if self._parts.queries is not None else {}
                    finish_by = time.monotonic() + self.plan.finish_s
                    deadline = finish_by if deadline is None else min(deadline, finish_by)
                if self._stored(end or None):
                    return str(until.value)
            if until is Until.IDLE and idle.observe(ended and self._stored(None), time.monotonic()):
                return str(until.value)
            if deadline is not None and time.monotonic() > deadline:
                return "timed out"
            if stop.wait(_TICK_S):
                return str(Until.STOPPED.value)

    # -- finish and stop -----------------------------------------------------------------------

    def finish(self, ended: str) -> Outcome:
        """The producer drains and flushes, the job stores what it published, the queries and the
        writer stop, and the store is read for the run's results: the run's `Outcome`."""
        parts, plan = self._parts, self.plan
        service = self._end_producer()
        stored = True
        if plan.compute and service is not None and ended != Until.CAUGHT_UP.value:
            self._emit(Draining(f"stopped after {service.router.trades} trades; letting Spark store the last ones"
                                " (Ctrl-C again skips this)"))
            stored = self.wait(Until.CAUGHT_UP) == Until.CAUGHT_UP.value
            if not stored:
                self._emit(Draining(f"Spark did not catch up within {plan.finish_s:g} s: the newest trades may"
                                    " be missing from the results"))
        stopping = "stopping Spark and the broker" if plan.compute else "stopping"
        if "stop" in self._steps():
            self._step("stop", stopping)
        else:
            self._emit(Stopping(stopping))
        self._stop_job()
        results = None
        if plan.compute and plan.source is not None and parts.store is not None:  # a run with a summary
            reader = Results(parts.store)
            if parts.store.local:  # a server merges in its own time; a local store is read right after the run
                reader.merge_versions()
            results = reader.run(self._started_ms)
        outcome = Outcome(ended, time.monotonic() - self._started_at, service, results, stored)
        self._emit(Finished(outcome))
        return outcome

    def run(self, stop: StopSignal | None = None) -> Outcome:
        """The whole life: start, wait for the plan's end, finish, tear down."""
        with self:
            self.start()
            ended = self.wait(stop=stop)
            if ended == "timed out":
                raise Unfinished(f"Spark did not store what the source published within {self.plan.finish_s:g} s"
                                 f" of its end; see {self.settings.data_dir / 'logs'}")
            return self.finish(ended)

    def _end_producer(self) -> ProducerService | None:
        parts = self._parts
        if parts.producer_task is not None:
            task, parts.producer_task = parts.producer_task, None
            try:
                task.end(timeout_s=self.settings.producer.shutdown_timeout_s + 60)
            except Exception as error:
                if not self._stopped:
                    raise
                log.warning("producer ended with an error", extra={"error": repr(error)})
        return parts.producer

    def _stop_job(self) -> None:
        """The queries (the checkpoint stays consistent), then the writer once it inserted what they wrote."""
        parts = self._parts
        for server in parts.health:
            server.close()
        parts.health.clear()
        if parts.queries is not None:
            parts.queries.stop()
        if parts.writer_task is not None:
            task, parts.writer_task = parts.writer_task, None
            task.end()

    def stop(self) -> None:
        """Release everything still running, once, in the reverse order of start."""
        if self._stopped:
            return
        self._stopped = True
        parts = self._parts
        try:
            self._end_producer()
            self._stop_job()
        finally:
            try:
                if parts.spark is not None and parts.owns_spark:
                    parts.spark.stop()
                parts.spark = None
            finally:
                try:
                    if parts.store is not None and parts.owns_store:
                        parts.store.close()
                    parts.store = None
                finally:
                    if parts.broker is not None:
                        parts.broker.stop()
                        parts.broker = None

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def run(plan: Plan, observer: Observer = quiet, stop: StopSignal | None = None) -> Outcome:
    """`plan`, lived start to teardown."""
    return Runtime(plan, observer).run(stop)


@contextlib.contextmanager
def _sigint_ignored_by_children() -> Iterator[None]:
    """Children started meanwhile inherit an ignored SIGINT (a Python handler is reset at exec).

    A terminal's Ctrl-C signals the whole foreground process group, the broker JVM included, and
    a JVM does not install its shutdown handler for a signal it inherited as ignored (pyspark
    starts Spark's JVM the same way). So Ctrl-C reaches only Pulse, and the runtime ends the broker
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
