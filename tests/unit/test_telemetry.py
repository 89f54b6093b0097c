"""Telemetry: histograms, and collection of every component's counters."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

import pytest

from pulse.telemetry import HealthServer, LatencyHistogram, PortUnavailable, Telemetry


def test_latency_histogram_buckets_are_cumulative():
    histogram = LatencyHistogram()
    for seconds in (0.0001, 0.003, 0.003, 100.0):
        histogram.observe(seconds)
    buckets = dict(histogram.cumulative_buckets())
    assert buckets["0.0005"] == 1 and buckets["0.005"] == 3 and buckets["60.0"] == 3 and buckets["+Inf"] == 4
    assert histogram.samples == 4


def test_every_component_counter_reaches_the_scrape():
    """Counters of the live source (websocket, REST, sequencer, gaps), router, queue and publisher."""
    import asyncio

    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from pulse.producer import ProducerService
    from pulse.settings import PulseSettings
    from pulse.source.binance.live import BinanceSource
    from pulse.telemetry import TelemetryCollector

    async def scrape() -> set[str]:
        settings = PulseSettings(_env_file=None).override(producer={"symbols": ["BTCUSDT"]})  # type: ignore[call-arg]
        source = BinanceSource(settings.producer)
        await source.setup()
        try:
            service = ProducerService(settings, source)
            registry = CollectorRegistry(auto_describe=False)
            registry.register(TelemetryCollector(service.snapshot, "pulse_producer_"))
            text = generate_latest(registry).decode()
        finally:
            await source.stop()
        return {family.name for family in text_string_to_metric_families(text)}

    names = asyncio.run(scrape())
    for counter in ("frames_received", "frames_skipped", "trades_received", "trades_published", "failed_sends",
                    "frames_invalid", "records_dropped", "duplicates", "gaps_found", "gaps_filled", "gaps_unfilled",
                    "trades_filled", "ids_lost", "rest_calls", "rest_rate_limited", "rest_failures",
                    "ws_connects", "ws_reconnects", "ws_connect_failures", "ws_server_closes", "ws_stalls",
                    "ws_rotations", "ws_refusals", "reconnects", "gap_events"):
        assert f"pulse_producer_{counter}" in names, counter
    for gauge in ("queue_depth", "in_flight", "connected", "ready", "ws_connections"):
        assert f"pulse_producer_{gauge}" in names, gauge


def test_the_health_server_survives_slow_clients_floods_404s_and_other_methods():
    """The job's and the writer's server (HealthServer), and the producer's, are one aiohttp server
    (start_metrics_server): a client that sends half a request is dropped after the keep-alive
    timeout, hundreds of idle connections hold no thread, other paths get 404, other methods 405."""
    server = HealthServer(lambda: Telemetry(counters={"frames_received": 1}), lambda: {"ready": True}, 0,
                          "127.0.0.1", "pulse_test_", "PULSE_TEST_PORT")
    url = f"http://127.0.0.1:{server.port}"
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as slow:
            slow.sendall(b"GET /metrics HTTP/1.1\r\nHost: pulse\r\n")  # and never the blank line
            assert slow.recv(100) == b"", "a half-sent request is closed, not answered or held forever"
        idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(300)]
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                assert response.status == 200
            with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
                assert b"pulse_test_frames_received_total 1.0" in response.read()
        finally:
            for connection in idle:
                connection.close()
        for request, status in [(urllib.request.Request(f"{url}/nothing-here"), 404),
                                (urllib.request.Request(f"{url}/health", method="POST", data=b"x"), 405),
                                (urllib.request.Request(f"{url}/metrics", method="DELETE"), 405)]:
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=5)
            assert refused.value.code == status
    finally:
        server.close()


def test_a_taken_port_is_one_line_naming_the_setting():
    first = HealthServer(Telemetry, lambda: {"ready": True}, 0, "127.0.0.1", "a_", "PULSE_A")
    try:
        with pytest.raises(PortUnavailable) as taken:
            HealthServer(Telemetry, lambda: {"ready": True}, first.port, "127.0.0.1", "b_",
                         "PULSE_SPARK__HEALTH_PORT")
        assert f"127.0.0.1:{first.port}" in str(taken.value) and "set PULSE_SPARK__HEALTH_PORT" in str(taken.value)
    finally:
        first.close()
