"""Coinbase Advanced Trade REST, only what the live source needs: the trades of a gap.

"Get Public Market Trades", `GET /api/v3/brokerage/market/products/{product_id}/ticker?limit=&start=&end=`
(https://docs.cdp.coinbase.com/api-reference/advanced-trade-api/rest-api/public/get-public-market-trades):
public, no key, `start` and `end` in UNIX seconds, public endpoints limited to 10 requests a second
per IP (https://docs.cdp.coinbase.com/advanced-trade/docs/rest-api-rate-limits). A reply carries the
trades of the websocket's `market_trades` (same fields, same `trade_id`, same side rule):

    {"trades": [{"trade_id": "633982452", "product_id": "BTC-USD", "price": "43269.72", "size": "0.0001",
     "time": "2024-01-11T09:03:07.512284Z", "side": "SELL", "bid": "", "ask": ""}],
     "best_bid": "43269.71", "best_ask": "43269.72"}

It pages by time, not by id: a gap is asked over the span between its neighbours' trade times, and
the page is moved in time (at whole seconds) while ids are still missing and a page came back full.
"""

from __future__ import annotations

import aiohttp
from aiolimiter import AsyncLimiter
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_fixed

from pulse.errors import Unavailable
from pulse.model import Gap, Trade
from pulse.source.base import now_ms
from pulse.source.coinbase.wire import CoinbaseReader, ticker_trades
from pulse.source.contract import InvalidFrame
from pulse.telemetry import Telemetry

REST_URL = "https://api.coinbase.com"
TRADES_PATH = "/api/v3/brokerage/market/products/{product}/ticker"
PAGE_LIMIT = 1000
_MAX_PAGES = 20
_MAX_ATTEMPTS = 3
_REQUESTS_PER_S = 10


class CoinbaseRestError(Unavailable, RuntimeError):
    """Coinbase's REST API did not answer as expected, for good."""


class _Transient(Exception):
    """An attempt that may succeed if tried again (network, 5xx, 429)."""


class CoinbaseGapFill:
    """The trades of a product's gap, from Advanced Trade's public market trades."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str | None, reader: CoinbaseReader,
                 retry_pause_s: float = 1.0, page_limit: int = PAGE_LIMIT) -> None:
        self._session = session
        self._base_url = (base_url or REST_URL).rstrip("/")
        self._reader = reader
        self._limiter = AsyncLimiter(_REQUESTS_PER_S, 1.0)
        self._retry_pause_s = retry_pause_s
        self._page_limit = page_limit
        self.calls = 0
        self.rate_limited = 0
        self.failures = 0

    async def trades(self, gap: Gap, after_ms: int, before_ms: int) -> list[Trade]:
        start_s, end_s = after_ms // 1000, before_ms // 1000 + 1
        found: dict[int, Trade] = {}
        for _ in range(_MAX_PAGES):
            page = await self._page(gap.symbol, start_s, end_s)
            found.update((t.agg_trade_id, t) for t in page)
            ids = range(gap.first_missing_id, gap.last_missing_id + 1)
            lowest = next((i for i in ids if i not in found), None)
            if lowest is None or len(page) < self._page_limit:
                break
            # A full page: the rest of the gap lies before or after it in time (the order a page is
            # listed in is not documented, so look at which side of it the missing ids are).
            oldest = min(page, key=lambda t: t.agg_trade_id)
            newest = max(page, key=lambda t: t.agg_trade_id)
            if lowest < oldest.agg_trade_id:
                moved = (start_s, oldest.trade_time_ms // 1000 + 1)
            else:
                moved = (newest.trade_time_ms // 1000, end_s)
            if moved[1] - moved[0] >= end_s - start_s:
                break  # a full page within one second: it cannot be asked finer
            start_s, end_s = moved
        return list(found.values())

    async def _page(self, product: str, start_s: int, end_s: int) -> list[Trade]:
        url = self._base_url + TRADES_PATH.format(product=product)
        params = {"limit": str(self._page_limit), "start": str(start_s), "end": str(end_s)}
        retrying = AsyncRetrying(stop=stop_after_attempt(_MAX_ATTEMPTS), retry=retry_if_exception_type(_Transient),
                                 wait=wait_fixed(self._retry_pause_s), reraise=True)
        try:
            async for attempt in retrying:
                with attempt:
                    body = await self._get_once(url, params)
        except _Transient as last:
            raise CoinbaseRestError(f"market trades of {product}: {last} after {_MAX_ATTEMPTS} attempts") from None
        try:
            return self._reader.market_trades(ticker_trades(body), now_ms())
        except InvalidFrame as invalid:
            self.failures += 1
            raise CoinbaseRestError(f"market trades of {product}: {invalid.reason}") from None

    async def _get_once(self, url: str, params: dict[str, str]) -> bytes:
        await self._limiter.acquire()
        self.calls += 1
        try:
            async with self._session.get(url, params=params) as response:
                body, status = await response.read(), response.status
        except (aiohttp.ClientError, TimeoutError) as error:
            self.failures += 1
            raise _Transient(f"request failed: {error!r}") from None
        if status == 429:
            self.rate_limited += 1
            raise _Transient("HTTP 429")
        if status >= 500:
            self.failures += 1
            raise _Transient(f"HTTP {status}")
        if status != 200:
            self.failures += 1
            raise CoinbaseRestError(f"HTTP {status} {body[:200]!r}")
        return body

    def telemetry(self) -> Telemetry:
        return Telemetry(counters={"rest_calls": self.calls, "rest_rate_limited": self.rate_limited,
                                   "rest_failures": self.failures})
