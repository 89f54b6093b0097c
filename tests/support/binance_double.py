"""A local stand-in for Binance: a real websocket server and a real REST server on 127.0.0.1.

It plays real recorded aggTrades in Binance's documented formats, as one market does:

| market | combined streams | REST aggTrades | REST exchangeInfo |
|---|---|---|---|
| usdm | `/market/stream?streams=...` | `/fapi/v1/aggTrades` | `/fapi/v1/exchangeInfo` (`status`) |
| spot | `/stream?streams=...` | `/api/v3/aggTrades` | `/api/v3/exchangeInfo` (`status`) |
| coinm | `/stream?streams=...` | `/dapi/v1/aggTrades` | `/dapi/v1/exchangeInfo` (`contractStatus`) |

Frames are combined-stream envelopes `{"stream": "<symbol>@aggTrade", "data": {...}}`; aggTrades
answers `GET ?symbol=&fromId=&limit=` with a JSON array of `{a, p, q, f, l, T, m}`. Like the
exchange, its tape runs on whether or not anyone listens: trades that pass while a client is away
are gone from the wire but still on REST. On USD-M the old `/ws` and `/stream` paths accept
connections and then stay silent, as Binance's do now; the other markets refuse unknown paths (404),
and serve only their own REST paths, so a client using another market's path fails loudly.
exchangeInfo lists the tape's symbols and any `listed` ones (quiet: no trades), each with a status.

Controls for failure tests: close every connection, stall (connections open, nothing sent),
withhold chosen trades from the wire (REST still has them), make chosen trades unfillable (REST
leaves them out too), inject raw frames, answer REST calls with 429 + Retry-After, and refuse
handshakes or REST calls with an HTTP status (451 as for restricted regions, 403, 429).
It imports nothing from `pulse`: it stands in for the exchange only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from aiohttp import web
from websockets.asyncio.server import Server, ServerConnection, broadcast, serve
from websockets.http11 import Request, Response

from tests.support.recordings import recorded_payloads

_REST_KEYS = ("a", "p", "q", "f", "l", "T", "m")
Market = Literal["usdm", "spot", "coinm", "us"]
# market -> (live stream path, REST prefix)
_PATHS: dict[str, tuple[str, str]] = {"usdm": ("/market/stream", "/fapi/v1"), "spot": ("/stream", "/api/v3"),
                                      "coinm": ("/stream", "/dapi/v1"), "us": ("/stream", "/api/v3")}


def agg_trades_from_recording(path: Path) -> list[dict[str, Any]]:
    """The aggTrade payloads of a recording, in file order, as Binance sent them."""
    return list(recorded_payloads(path))


# COIN-M names for the USD-M recording's symbols (no COIN-M recording is at hand): perpetuals and a
# delivery contract.
COINM_NAMES = {"NEOUSDT": "NEOUSD_PERP", "SANDUSDT": "SANDUSD_PERP", "CTKUSDT": "CTKUSD_PERP",
               "BATUSDT": "BATUSD_260327", "CHRUSDT": "CHRUSD_PERP"}


def coinm_contract_usd(symbol: str) -> int:
    """COIN-M's contract size as Binance lists it: 100 USD for BTC's contracts, 10 USD for the others."""
    return 100 if symbol.startswith("BTCUSD_") else 10


def relabel(tape: list[dict[str, Any]], names: dict[str, str]) -> list[dict[str, Any]]:
    """The same recorded trades under other symbols (COIN-M and delivery names, which no recording has)."""
    return [{**payload, "s": names.get(payload["s"], payload["s"])} for payload in tape]


@dataclass(frozen=True)
class Subscription:
    connection: ServerConnection
    symbols: frozenset[str]  # upper case; empty: a silent legacy path


class BinanceDouble:
    def __init__(self, tape: list[dict[str, Any]], frames_per_s: float = 1000.0, market: Market = "usdm",
                 listed: dict[str, str] | None = None) -> None:
        self.tape = tape
        self.frames_per_s = frames_per_s
        self.market = market
        self.stream_path, self.rest_prefix = _PATHS[market]
        self.by_symbol: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for payload in tape:
            self.by_symbol[payload["s"]].append(payload)
        # exchangeInfo: symbol -> status, the tape's symbols trading, then `listed` (quiet or not trading).
        self.listed: dict[str, str] = {symbol: "TRADING" for symbol in self.by_symbol} | (listed or {})
        self.refuse_ws_with: int | None = None
        self.refuse_rest_with: int | None = None
        self.refused_handshakes = 0
        self.exchange_info_calls = 0
        self.connection_symbols: list[frozenset[str]] = []
        self.cursor = 0  # trades before the cursor have happened
        self.withheld: set[tuple[str, int]] = set()
        self.unfillable: set[tuple[str, int]] = set()
        self.stalled = False
        self.rate_limit_next = 0
        self.retry_after_s = 1
        self.subscriptions: dict[ServerConnection, Subscription] = {}
        self.connections_seen = 0
        self.most_symbols_on_one_connection = 0
        self.rest_calls = 0
        self.rest_rate_limited = 0
        self.sent_frames = 0
        self.first_connection = asyncio.Event()
        self.finished = asyncio.Event()
        self._injected: list[str] = []
        self._ws_server: Server | None = None
        self._rest_runner: web.AppRunner | None = None
        self._ticker: asyncio.Task[None] | None = None
        self.ws_port = 0
        self.rest_port = 0

    # -- addresses ------------------------------------------------------------------------------

    @property
    def ws_base_url(self) -> str:
        """The market's combined-stream URL on the double."""
        return f"ws://127.0.0.1:{self.ws_port}{self.stream_path}"

    @property
    def ws_host_url(self) -> str:
        """Only scheme, host and port: the client adds its market's path."""
        return f"ws://127.0.0.1:{self.ws_port}"

    @property
    def rest_base_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    # -- controls -------------------------------------------------------------------------------

    async def close_connections(self) -> None:
        """The server drops every connection (as Binance does at 24 h or on maintenance)."""
        for connection in list(self.subscriptions):
            await connection.close(code=1001, reason="double: going away")

    def inject(self, raw_frames: list[str]) -> None:
        """Send these frames verbatim, in order, on the next tick, to every connection."""
        self._injected.extend(raw_frames)

    def withhold(self, symbol: str, ids: range) -> None:
        self.withheld.update((symbol, trade_id) for trade_id in ids)

    def make_unfillable(self, symbol: str, ids: range) -> None:
        """These trades are neither sent nor returned by REST: a gap nobody can fill."""
        self.withhold(symbol, ids)
        self.unfillable.update((symbol, trade_id) for trade_id in ids)

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> BinanceDouble:
        self._ws_server = await serve(self._serve_ws, "127.0.0.1", 0, max_queue=None,
                                      process_request=self._handshake)
        self.ws_port = next(iter(self._ws_server.sockets)).getsockname()[1]
        app = web.Application()
        app.router.add_get(f"{self.rest_prefix}/aggTrades", self._agg_trades)
        app.router.add_get(f"{self.rest_prefix}/exchangeInfo", self._exchange_info)
        self._rest_runner = web.AppRunner(app, access_log=None)
        await self._rest_runner.setup()
        site = web.TCPSite(self._rest_runner, "127.0.0.1", 0)
        await site.start()
        self.rest_port = self._rest_runner.addresses[0][1]
        self._ticker = asyncio.create_task(self._play())
        return self

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if self._ws_server is not None:
            self._ws_server.close()
            await self._ws_server.wait_closed()
        if self._rest_runner is not None:
            await self._rest_runner.cleanup()

    async def __aenter__(self) -> BinanceDouble:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- websocket ------------------------------------------------------------------------------

    def _handshake(self, connection: ServerConnection, request: Request) -> Response | None:
        if self.refuse_ws_with is not None:
            self.refused_handshakes += 1
            return connection.respond(HTTPStatus(self.refuse_ws_with), "double: refused\n")
        if self.market != "usdm" and urlsplit(request.path).path != self.stream_path:
            return connection.respond(HTTPStatus.NOT_FOUND, "double: no such path\n")
        return None

    async def _serve_ws(self, connection: ServerConnection) -> None:
        request = connection.request
        url = urlsplit(request.path if request is not None else "/")
        streams = parse_qs(url.query).get("streams", [""])[0].split("/")
        # Binance stream names are lower case; "BTCUSDT@aggTrade" subscribes to nothing.
        names = [stream.removesuffix("@aggTrade") for stream in streams if stream.endswith("@aggTrade")]
        symbols = frozenset(name.upper() for name in names if name and name == name.lower()
                            ) if url.path == self.stream_path else frozenset()
        self.subscriptions[connection] = Subscription(connection, symbols)
        self.connection_symbols.append(symbols)
        self.most_symbols_on_one_connection = max(self.most_symbols_on_one_connection, len(symbols))
        self.connections_seen += 1
        self.first_connection.set()
        try:
            await connection.wait_closed()
        finally:
            self.subscriptions.pop(connection, None)

    def _frame(self, payload: dict[str, Any]) -> str:
        return json.dumps({"stream": f"{payload['s'].lower()}@aggTrade", "data": payload}, separators=(",", ":"))

    async def _play(self) -> None:
        """Advance the tape at `frames_per_s` from the first connection on, sending to subscribers."""
        await self.first_connection.wait()
        tick_s = 0.01
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            due = min(len(self.tape), int((loop.time() - started) * self.frames_per_s) + 1)
            for payload in self.tape[self.cursor:due]:
                if self.stalled or (payload["s"], payload["a"]) in self.withheld:
                    continue
                listeners = [s.connection for s in self.subscriptions.values() if payload["s"] in s.symbols]
                if listeners:
                    broadcast(listeners, self._frame(payload))
                    self.sent_frames += 1
            self.cursor = max(self.cursor, due)
            if self._injected and not self.stalled:
                live = [s.connection for s in self.subscriptions.values() if s.symbols]
                for raw in self._injected:
                    broadcast(live, raw)
                self._injected.clear()
            if self.cursor >= len(self.tape):
                self.finished.set()
            await asyncio.sleep(tick_s)

    # -- REST -----------------------------------------------------------------------------------

    def _refused(self) -> web.Response | None:
        if self.refuse_rest_with is None:
            return None
        return web.json_response({"code": 0, "msg": "double: refused"}, status=self.refuse_rest_with,
                                 headers={"Retry-After": str(self.retry_after_s)})

    async def _exchange_info(self, request: web.Request) -> web.Response:
        self.exchange_info_calls += 1
        if (refused := self._refused()) is not None:
            return refused
        status_key = "contractStatus" if self.market == "coinm" else "status"
        symbols = [{"symbol": symbol, status_key: status, "baseAsset": symbol[:3], "filters": []}
                   | ({"contractSize": coinm_contract_usd(symbol)} if self.market == "coinm" else {})
                   for symbol, status in self.listed.items()]
        return web.json_response({"timezone": "UTC", "serverTime": 0, "rateLimits": [], "symbols": symbols})

    async def _agg_trades(self, request: web.Request) -> web.Response:
        self.rest_calls += 1
        if (refused := self._refused()) is not None:
            return refused
        if self.rate_limit_next > 0:
            self.rate_limit_next -= 1
            self.rest_rate_limited += 1
            return web.json_response({"code": -1003, "msg": "Too many requests"}, status=429,
                                     headers={"Retry-After": str(self.retry_after_s)})
        try:
            symbol = request.query["symbol"]
            from_id = int(request.query["fromId"])
            limit = min(int(request.query.get("limit", "500")), 1000)
        except (KeyError, ValueError):
            return web.json_response({"code": -1100, "msg": "Illegal characters found in a parameter."},
                                     status=400)
        happened = {(p["s"], p["a"]) for p in self.tape[: self.cursor]}
        rows = [
            {key: payload[key] for key in _REST_KEYS}
            for payload in self.by_symbol.get(symbol, [])
            if payload["a"] >= from_id and (symbol, payload["a"]) in happened
            and (symbol, payload["a"]) not in self.unfillable
        ][:limit]
        return web.json_response(rows, headers={"X-MBX-USED-WEIGHT-1M": str(20 * self.rest_calls)})


@contextlib.contextmanager
def double_in_thread(tape: list[dict[str, Any]], **options: Any) -> Iterator[BinanceDouble]:
    """The double on an event loop of its own thread, for a `pulse` run in another process.
    Its controls are plain attributes, set from the test's thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="binance-double", daemon=True)
    thread.start()
    double = BinanceDouble(tape, **options)
    try:
        asyncio.run_coroutine_threadsafe(double.start(), loop).result(timeout=30)
        yield double
    finally:
        asyncio.run_coroutine_threadsafe(double.stop(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()
