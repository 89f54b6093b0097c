"""The websocket's pure parts: reconnect backoff and the combined-stream URL."""

from __future__ import annotations

import pytest

from pulse.source.binance.ws import backoff_delay, combined_stream_url


def test_backoff_grows_exponentially_is_capped_and_jittered():
    assert backoff_delay(0, 0.5, 30, rand=lambda: 0.0) == 0.25
    assert backoff_delay(0, 0.5, 30, rand=lambda: 1.0) == 0.5
    assert backoff_delay(3, 0.5, 30, rand=lambda: 1.0) == 4.0
    assert backoff_delay(20, 0.5, 30, rand=lambda: 1.0) == 30.0
    assert backoff_delay(1000, 0.5, 30, rand=lambda: 0.0) == 15.0


def test_combined_stream_url_lower_cases_and_takes_many_symbols():
    symbols = [f"SYM{i}USDT" for i in range(60)]
    url = combined_stream_url("wss://fstream.binance.com/market/stream", ["BTCUSDT", *symbols])
    assert url.startswith("wss://fstream.binance.com/market/stream?streams=btcusdt@aggTrade/sym0usdt@aggTrade/")
    assert url.count("@aggTrade") == 61
    with pytest.raises(ValueError):
        combined_stream_url("wss://x/market/stream", [])
