"""What a running Pulse tells the outside: Prometheus `/metrics`, `/health`, JSON logs.

Telemetry by collection: every component (source, stream, REST client, sequencer, gap filler,
router, queue, publisher) keeps its counters as plain ints where the work happens and hands them
out as a `Telemetry` from its `telemetry()` method; `/metrics` collects them all at scrape time.
Hot paths therefore pay an integer increment, not a prometheus-client lock per trade, which
matters at 100k trades/s. Latencies go into
`LatencyHistogram`, a fixed-bucket histogram whose `observe` is one bisect.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from pythonjsonlogger.json import JsonFormatter

from pulse.errors import Unavailable

# Seconds: from sub-millisecond (publish at low rate) to a minute (broker outage, REST gap fill).
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                     30.0, 60.0)


@dataclass(slots=True)
class LatencyHistogram:
    """Cumulative-at-export histogram over `LATENCY_BUCKETS_S`; `counts[-1]` is the +Inf bucket."""

    bounds: tuple[float, ...] = LATENCY_BUCKETS_S
    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_S) + 1))
    total_s: float = 0.0
    samples: int = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total_s += seconds
        self.samples += 1

    def cumulative_buckets(self) -> list[tuple[str, float]]:
        running = 0
        buckets = []
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            buckets.append((bound, float(running)))
        return buckets


@dataclass(frozen=True, slots=True)
class Telemetry:
    """What one component exports at a scrape."""

    counters: Mapping[str, float] = field(default_factory=dict)  # name -> value (monotonic)
    # (name, label) -> {label value: value}
    labelled_counters: Mapping[tuple[str, str], Mapping[str, float]] = field(default_factory=dict)
    gauges: Mapping[str, float] = field(default_factory=dict)
    histograms: Mapping[str, LatencyHistogram] = field(default_factory=dict)


class Instrumented(Protocol):
    def telemetry(self) -> Telemetry: ...


def collect(components: Iterable[Instrumented]) -> Telemetry:
    """One scrape's worth of every component."""
    return merge(*(component.telemetry() for component in components))


def merge(*parts: Telemetry) -> Telemetry:
    """Parts of one scrape as one; a name exported twice is a bug, so it fails loudly."""
    counters: dict[str, float] = {}
    labelled: dict[tuple[str, str], Mapping[str, float]] = {}
    gauges: dict[str, float] = {}
    histograms: dict[str, LatencyHistogram] = {}
    for part in parts:
        names = [*part.counters, *part.labelled_counters, *part.gauges, *part.histograms]
        clash = set(names) & {*counters, *labelled, *gauges, *histograms}
        if clash:
            raise ValueError(f"metrics exported twice: {sorted(map(str, clash))}")
        counters.update(part.counters)
        labelled.update(part.labelled_counters)
        gauges.update(part.gauges)
        histograms.update(part.histograms)
    return Telemetry(counters, labelled, gauges, histograms)


_HELP = {
    "frames_received": "websocket/replay/synthetic frames handed to the parser",
    "frames_skipped": "well-formed frames of other streams (depth, bookTicker, kline...)",
    "trades_received": "valid trades the source emitted (before the queue)",
    "gap_events": "gap events routed to the gaps topic",
    "ws_connects": "websocket connections opened",
    "ws_connect_failures": "websocket connection attempts that failed",
    "ws_server_closes": "connections the server closed",
    "ws_stalls": "connections the watchdog dropped for lack of aggTrades",
    "ws_rotations": "planned rotations before Binance's 24 h cut",
    "ws_refusals": "connection attempts refused with an HTTP status, by status (451: restricted region)",
    "rest_calls": "REST aggTrades calls (gap filling)",
    "rest_rate_limited": "REST replies 429/418 (honoured with Retry-After)",
    "rest_failures": "REST calls that failed (network, 5xx, other status, bad payload)",
    "rest_weight_waited_seconds": "time spent waiting for request weight",
    "trades_published": "records acknowledged by the broker (trades, dead letters, gap events)",
    "frames_invalid": "frames sent to the dead-letter topic, by reason",
    "records_dropped": "records evicted from the full queue (oldest first), by symbol",
    "reconnects": "websocket reconnects, by reason (closed, stalled)",
    "duplicates": "trades dropped because their aggregate id was already published",
    "gaps_found": "aggregate-id gaps detected on the live stream",
    "gaps_filled": "gaps recovered completely from REST (or late frames)",
    "gaps_unfilled": "gaps published as gap events (some ids could not be recovered)",
    "trades_filled": "trades recovered from REST",
    "ids_lost": "aggregate ids published as missing in gap events",
    "failed_sends": "records whose send failed and went back to the queue",
    "queue_depth": "records waiting in the drop-oldest queue",
    "in_flight": "records handed to the broker and not yet acknowledged",
    "connected": "1 while the source is connected",
    "ready": "1 while /health reports ready",
    "publish_latency_seconds": "enqueue -> broker ack",
    "exchange_to_ack_seconds": "Binance trade time -> broker ack",
}


class TelemetryCollector(Collector):
    def __init__(self, snapshot: Callable[[], Telemetry], prefix: str) -> None:
        self._snapshot = snapshot
        self._prefix = prefix

    def collect(self) -> Iterable[Metric]:
        snap, prefix = self._snapshot(), self._prefix
        for name, value in snap.counters.items():
            yield CounterMetricFamily(f"{prefix}{name}", _HELP.get(name, name), value=value)
        for (name, label), values in snap.labelled_counters.items():
            family = CounterMetricFamily(f"{prefix}{name}", _HELP.get(name, name), labels=[label])
            for label_value, value in values.items():
                family.add_metric([label_value], value)
            yield family
        for name, value in snap.gauges.items():
            yield GaugeMetricFamily(f"{prefix}{name}", _HELP.get(name, name), value=value)
        for name, histogram in snap.histograms.items():
            yield HistogramMetricFamily(f"{prefix}{name}", _HELP.get(name, name),
                                        buckets=histogram.cumulative_buckets(), sum_value=histogram.total_s)


# Idle keep-alive connections close after this; a scrape every few seconds needs no more.
_KEEPALIVE_S = 5.0


class PortUnavailable(Unavailable):
    """The /health and /metrics port is taken (another Pulse process?) or not ours to bind."""


async def start_metrics_server(snapshot: Callable[[], Telemetry], ready: Callable[[], Mapping[str, Any]],
                               port: int, host: str, prefix: str = "pulse_producer_",
                               setting: str = "PULSE_PRODUCER__METRICS_PORT") -> tuple[web.AppRunner, int]:
    """`/metrics` (Prometheus text) and `/health` (200 when ready, else 503); returns the bound port.

    aiohttp serves each connection as a task of one loop: a slow or idle client holds no thread, idle
    connections close after `_KEEPALIVE_S`, other paths get 404 and other methods 405.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TelemetryCollector(snapshot, prefix))

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), content_type="text/plain", charset="utf-8")

    async def health(_: web.Request) -> web.Response:
        status = ready()
        return web.json_response(status, status=200 if status["ready"] else 503,
                                 dumps=lambda value: json.dumps(value, default=str))

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/health", health)
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=_KEEPALIVE_S)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as error:
        await runner.cleanup()
        raise PortUnavailable(f"cannot serve /health and /metrics on {host}:{port}: {error.strerror}; set"
                              f" {setting} to a free port (0 picks one)") from None
    bound: int = runner.addresses[0][1]
    return runner, bound


class HealthServer:
    """`start_metrics_server` for a process whose main thread is not an event loop (the Spark job, the
    store writer): on a loop and thread of its own, bound when constructed, ended by `close()`."""

    def __init__(self, snapshot: Callable[[], Telemetry], ready: Callable[[], Mapping[str, Any]], port: int,
                 host: str, prefix: str, setting: str) -> None:
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="pulse-health", daemon=True).start()
        started = asyncio.run_coroutine_threadsafe(start_metrics_server(snapshot, ready, port, host, prefix, setting),
                                                   self._loop)
        try:
            self._runner, self.port = started.result(timeout=30)
        except BaseException:
            self._loop.call_soon_threadsafe(self._loop.stop)
            raise

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)


class JsonLogFormatter(JsonFormatter):
    """One JSON object per line (python-json-logger): time (UTC ms), level, logger, message, any `extra`
    fields, and the traceback as `exc`."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s %(message)s",
                         rename_fields={"levelname": "level", "name": "logger", "message": "msg",
                                        "exc_info": "exc"},
                         json_default=str)

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        super().add_fields(log_data, record, message_dict)
        log_data["ts_ms"] = int(record.created * 1000)


def configure_json_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLogFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
