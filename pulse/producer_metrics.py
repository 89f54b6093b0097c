"""What the producer tells the outside: Prometheus metrics, `/health`, JSON logs.

Counters live where the work happens (plain ints in the router, queue, publisher, stream, gap
filler); a collector reads them at scrape time. Hot paths therefore pay an integer increment,
not a prometheus-client lock per trade, which matters at 100k trades/s. Latencies go into
`LatencyHistogram`, a fixed-bucket histogram whose `observe` is one bisect.
"""

from __future__ import annotations

import bisect
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

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
class MetricsSnapshot:
    """Everything one scrape exports, gathered by the producer service."""

    counters: Mapping[str, float]  # name -> value (monotonic)
    labelled_counters: Mapping[tuple[str, str], Mapping[str, float]]  # (name, label) -> {label value: value}
    gauges: Mapping[str, float]
    histograms: Mapping[str, LatencyHistogram]


_HELP = {
    "frames_received": "websocket/replay/synthetic frames handed to the parser",
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


class ProducerCollector(Collector):
    def __init__(self, snapshot: Callable[[], MetricsSnapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        snap = self._snapshot()
        for name, value in snap.counters.items():
            yield CounterMetricFamily(f"pulse_producer_{name}", _HELP.get(name, name), value=value)
        for (name, label), values in snap.labelled_counters.items():
            family = CounterMetricFamily(f"pulse_producer_{name}", _HELP.get(name, name), labels=[label])
            for label_value, value in values.items():
                family.add_metric([label_value], value)
            yield family
        for name, value in snap.gauges.items():
            yield GaugeMetricFamily(f"pulse_producer_{name}", _HELP.get(name, name), value=value)
        for name, histogram in snap.histograms.items():
            yield HistogramMetricFamily(f"pulse_producer_{name}", _HELP.get(name, name),
                                        buckets=histogram.cumulative_buckets(), sum_value=histogram.total_s)


async def start_metrics_server(snapshot: Callable[[], MetricsSnapshot], ready: Callable[[], Mapping[str, Any]],
                               port: int, host: str) -> tuple[web.AppRunner, int]:
    """`/metrics` (Prometheus text) and `/health` (200 when ready, else 503); returns the bound port."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ProducerCollector(snapshot))

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), content_type="text/plain", charset="utf-8")

    async def health(_: web.Request) -> web.Response:
        status = ready()
        return web.json_response(status, status=200 if status["ready"] else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/health", health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound: int = runner.addresses[0][1]
    return runner, bound


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time (UTC ms), level, logger, message and any `extra` fields."""

    _STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {"ts_ms": int(record.created * 1000), "level": record.levelname,
                                 "logger": record.name, "msg": record.getMessage()}
        entry.update((key, value) for key, value in vars(record).items() if key not in self._STANDARD)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_json_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLogFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
