"""Binance REST: `aggTrades` to fill gaps of the live stream, `exchangeInfo` to list a market's symbols.

`GET /fapi/v1/aggTrades?symbol=..&fromId=..&limit=1000` costs 20 weight of USD-M's 2,400-per-minute
IP budget (spot: `/api/v3/aggTrades`, 4 of 6,000; the market presets carry these numbers).
`WeightBudget` spends that budget evenly (aiolimiter's leaky bucket), and a 429
(rate limited) or 418 (IP banned for ignoring 429s) stops every call until `Retry-After` has
passed: hammering on would turn a minute's pause into a ban of hours. `exchangeInfo` (weight 1 on
the futures markets, 20 on spot) is asked once, when a run wants every trading symbol (`--symbols all`)
or checks the ones it was given.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import aiohttp
from aiolimiter import AsyncLimiter
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

from pulse.errors import Unavailable, first_line
from pulse.source.binance.markets import Market
from pulse.source.binance.wire import (
    BinanceAggTrade,
    ExchangeSymbol,
    InvalidFrame,
    contract_sizes,
    decode_rest_page,
    exchange_symbols,
)
from pulse.source.binance.ws import REFUSAL_HINTS
from pulse.telemetry import Telemetry

AGG_TRADES_LIMIT = 1000
_RATE_LIMITED = (429, 418)
_MAX_ATTEMPTS = 4


class RestError(Unavailable, RuntimeError):
    """A REST call failed for good (HTTP status, bad payload, attempts exhausted)."""

    def line(self, logs: Path) -> str:
        return (f"Binance's REST API did not answer as expected ({first_line(str(self))}): check the network"
                " (or PULSE_PRODUCER__REST_BASE_URL)")


class BinanceRefused(RestError):
    """Binance turned the request away for who asks (451: restricted region, 403), or kept rate-limiting
    it (429/418) through every attempt: retrying now cannot help."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.hint = REFUSAL_HINTS.get(status, f"Binance refused the request (HTTP {status})")
        super().__init__(self.hint)

    def line(self, logs: Path) -> str:
        return self.hint


_REFUSED = (451, 403)


class _Transient(Exception):
    """An attempt that may succeed if tried again (network, 5xx, 429/418)."""

    def __init__(self, problem: str, rate_limited: int | None = None) -> None:
        super().__init__(problem)
        self.rate_limited = rate_limited


def _rate_limited(state: RetryCallState) -> bool:
    error = state.outcome.exception() if state.outcome is not None else None
    return isinstance(error, _Transient) and error.rate_limited is not None


def symbol_states(body: bytes) -> dict[str, str]:
    """exchangeInfo as symbol -> status."""
    return {entry.symbol: entry.status or entry.contractStatus or "UNKNOWN" for entry in _symbols(body)}


def _symbols(body: bytes) -> list[ExchangeSymbol]:
    try:
        return exchange_symbols(body)
    except InvalidFrame as error:
        raise RestError(error.reason) from None


class WeightBudget:
    """Binance's request weight per minute, spent through aiolimiter's leaky bucket (one per process,
    shared by every REST call), with a pause on top for Retry-After: aiolimiter has no "nobody until T"."""

    def __init__(self, weight_per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._limiter = AsyncLimiter(weight_per_minute, 60.0)
        self._clock = clock
        self._paused_until = 0.0
        self.waited_s = 0.0

    def pause(self, seconds: float) -> None:
        self._paused_until = max(self._paused_until, self._clock() + seconds)

    def paused_for(self) -> float:
        """Seconds until a Retry-After has passed (0: none is pending)."""
        return max(0.0, self._paused_until - self._clock())

    def has_capacity(self, weight: int) -> bool:
        """`weight` can be spent now (call from the loop that spends it)."""
        return self.paused_for() == 0 and self._limiter.has_capacity(weight)

    async def acquire(self, weight: int) -> None:
        started = self._clock()
        while (pause := self.paused_for()) > 0:  # noqa: ASYNC110 - sleeps the pause itself; a 429 meanwhile extends it
            await asyncio.sleep(pause)
        await self._limiter.acquire(weight)
        self.waited_s += self._clock() - started


def _retry_after_s(headers: Mapping[str, str], default: float) -> float:
    value = headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else default
    except ValueError:
        return default


class BinanceRest:
    def __init__(self, session: aiohttp.ClientSession, market: Market, base_url: str, budget: WeightBudget,
                 server_error_pause_s: float = 1.0) -> None:
        self._session = session
        self._market = market
        self._url = base_url.rstrip("/") + market.agg_trades_path
        self._exchange_info_url = base_url.rstrip("/") + market.exchange_info_path
        self._weight = market.agg_trades_weight
        self._budget = budget
        self._server_error_pause_s = server_error_pause_s
        self.calls = 0
        self.rate_limited = 0
        self.failures = 0

    def telemetry(self) -> Telemetry:
        return Telemetry(counters={"rest_calls": self.calls, "rest_rate_limited": self.rate_limited,
                                   "rest_failures": self.failures,
                                   "rest_weight_waited_seconds": self._budget.waited_s})

    async def agg_trades(self, symbol: str, from_id: int, limit: int = AGG_TRADES_LIMIT) -> list[BinanceAggTrade]:
        """Up to `limit` aggTrades of `symbol` from id `from_id` on, in id order."""
        params = {"symbol": symbol, "fromId": str(from_id), "limit": str(min(limit, AGG_TRADES_LIMIT))}
        body = await self._get(self._url, params, self._weight, f"aggTrades {symbol} fromId={from_id}")
        return self._parse(body, symbol)

    async def symbol_states(self) -> dict[str, str]:
        """Every symbol of the market with its status (TRADING, BREAK, SETTLING...)."""
        return symbol_states(await self._get(self._exchange_info_url, {}, self._market.exchange_info_weight,
                                             "exchangeInfo"))

    async def contract_sizes(self) -> dict[str, float]:
        """COIN-M: every symbol's USD per contract."""
        body = await self._get(self._exchange_info_url, {}, self._market.exchange_info_weight, "exchangeInfo")
        return contract_sizes(_symbols(body))

    async def _get(self, url: str, params: dict[str, str], weight: int, what: str) -> bytes:
        """Up to `_MAX_ATTEMPTS` tries: a network error or 5xx after a pause, a 429/418 once its Retry-After
        has passed (the budget waits), a refusal (451, 403) or another status never."""
        retrying = AsyncRetrying(stop=stop_after_attempt(_MAX_ATTEMPTS), retry=retry_if_exception_type(_Transient),
                                 wait=lambda state: 0.0 if _rate_limited(state) else self._server_error_pause_s,
                                 reraise=True)
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._get_once(url, params, weight, what)
        except _Transient as last:
            if last.rate_limited is not None:
                raise BinanceRefused(last.rate_limited) from None  # still rate-limited after honouring Retry-After
            raise RestError(f"{what}: {last} after {_MAX_ATTEMPTS} attempts") from None
        raise AssertionError("unreachable: tenacity returns or raises")

    async def _get_once(self, url: str, params: dict[str, str], weight: int, what: str) -> bytes:
        await self._budget.acquire(weight)
        self.calls += 1
        try:
            async with self._session.get(url, params=params) as response:
                body = await response.read()
                status, headers = response.status, response.headers
        except (aiohttp.ClientError, TimeoutError) as error:
            self.failures += 1
            raise _Transient(f"request failed: {error!r}") from None
        if status in _RATE_LIMITED:
            self.rate_limited += 1
            self._budget.pause(_retry_after_s(headers, default=60.0))
            raise _Transient(f"HTTP {status}", rate_limited=status)
        if status >= 500:
            self.failures += 1
            raise _Transient(f"HTTP {status}")
        if status in _REFUSED:
            self.failures += 1
            raise BinanceRefused(status)
        if status != 200:
            self.failures += 1
            raise RestError(f"{what}: HTTP {status} {body[:200]!r}")
        return body

    def _parse(self, body: bytes, symbol: str) -> list[BinanceAggTrade]:
        try:
            return decode_rest_page(body, symbol)
        except InvalidFrame as invalid:
            self.failures += 1
            raise RestError(invalid.reason) from None
