"""Local doubles of OKX v5, Coinbase Advanced Trade, Bybit v5 and Kraken v2 public websockets, each
speaking its protocol as documented: subscribe by message and get the venue's acknowledgement (Kraken:
one per symbol, after its `status` greeting), pings answered (OKX's text "ping" -> "pong", Bybit's
`{"op":"ping"}`, Kraken's `{"method":"ping"}`), Coinbase's heartbeats channel and Kraken's heartbeat,
a snapshot of recent trades on subscribe (Coinbase; Kraken when asked), handshakes refused with an
HTTP status on request. REST: OKX's instruments, and Coinbase Advanced Trade's public market trades
(by product and time span, newest first, the trades played so far, the websocket's withheld ones too).

The trades are a tape of (symbol, trade) in time order, played at `frames_per_s` to the connections
subscribed to their symbol, each as the venue frames it. Imports nothing from `pulse`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any, Literal

from aiohttp import web
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

VenueKind = Literal["okx", "coinbase", "bybit-linear", "bybit-spot", "kraken"]


@dataclass(frozen=True)
class TapeTrade:
    symbol: str
    trade_id: str
    price: str
    size: str
    taker_buys: bool
    time_ms: int


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}456Z"


def _coinbase_trade(t: TapeTrade) -> dict[str, str]:
    # `side` is the maker's: a taker buy hits a resting sell.
    return {"trade_id": t.trade_id, "product_id": t.symbol, "price": t.price, "size": t.size,
            "side": "SELL" if t.taker_buys else "BUY", "time": _iso(t.time_ms)}


def venue_frame(venue: VenueKind, trades: list[TapeTrade], snapshot: bool = False, sequence: int = 0) -> str:
    """`trades` (of one symbol) in one frame, as `venue` sends them."""
    if venue == "okx":
        symbol = trades[0].symbol
        return json.dumps({"arg": {"channel": "trades", "instId": symbol}, "data": [
            {"instId": t.symbol, "tradeId": t.trade_id, "px": t.price, "sz": t.size,
             "side": "buy" if t.taker_buys else "sell", "ts": str(t.time_ms), "count": "1"} for t in trades]})
    if venue == "coinbase":
        return json.dumps({"channel": "market_trades", "client_id": "", "timestamp": _iso(trades[-1].time_ms),
                           "sequence_num": sequence, "events": [{"type": "snapshot" if snapshot else "update",
                                                                 "trades": [_coinbase_trade(t) for t in trades]}]})
    if venue == "kraken":
        # Numbers, not strings; `side` is the taker's.
        return json.dumps({"channel": "trade", "type": "snapshot" if snapshot else "update", "data": [
            {"symbol": t.symbol, "side": "buy" if t.taker_buys else "sell", "price": float(t.price),
             "qty": float(t.size), "ord_type": "market" if t.taker_buys else "limit", "trade_id": int(t.trade_id),
             "timestamp": _iso(t.time_ms)} for t in trades]})
    symbol = trades[0].symbol
    return json.dumps({"topic": f"publicTrade.{symbol}", "type": "snapshot", "ts": trades[-1].time_ms + 3,
                       "data": [{"T": t.time_ms, "s": t.symbol, "S": "Buy" if t.taker_buys else "Sell",
                                 "v": t.size, "p": t.price, "L": "PlusTick", "i": t.trade_id, "BT": False}
                                for t in trades]})


def write_recording(venue: VenueKind, tape: list[TapeTrade], path: Path, per_frame: int = 4) -> None:
    """The tape as a recorder would have saved the double's frames (`<unix seconds>: <frame>`): the
    venue's subscription answer, a Coinbase snapshot of the first trades (sent again as updates, so
    they must count once), then frames of up to `per_frame` trades of one symbol each."""
    ack = ({"success": True, "ret_msg": "", "conn_id": "double", "req_id": "", "op": "subscribe"}
           if venue.startswith("bybit") else _kraken_ack(tape[0].symbol, False) if venue == "kraken"
           else {"channel": "subscriptions", "client_id": "", "timestamp": _iso(0), "sequence_num": 0, "events": []})
    lines = [f"{tape[0].time_ms / 1000:.3f}: {json.dumps(ack)}"]
    if venue in ("coinbase", "kraken"):
        lines.append(f"{tape[0].time_ms / 1000:.3f}: {venue_frame(venue, tape[:1], snapshot=True)}")
    if venue == "kraken":
        lines.append(f"{tape[0].time_ms / 1000:.3f}: {json.dumps(KRAKEN_HEARTBEAT)}")
    pending: list[TapeTrade] = []
    for trade in tape:
        if pending and (trade.symbol != pending[0].symbol or len(pending) == per_frame):
            lines.append(f"{pending[-1].time_ms / 1000 + 0.004:.3f}: {venue_frame(venue, pending, False, len(lines))}")
            pending = []
        pending.append(trade)
    lines.append(f"{pending[-1].time_ms / 1000 + 0.004:.3f}: {venue_frame(venue, pending, False, len(lines))}")
    path.write_text("\n".join(lines) + "\n")


KRAKEN_HEARTBEAT = {"channel": "heartbeat"}
KRAKEN_STATUS = {"channel": "status", "type": "update", "data": [
    {"api_version": "v2", "connection_id": 12345678901234567890, "system": "online", "version": "2.0.0"}]}


def _kraken_ack(symbol: str, snapshot: bool) -> dict[str, Any]:
    return {"method": "subscribe", "result": {"channel": "trade", "snapshot": snapshot, "symbol": symbol},
            "success": True, "time_in": _iso(0), "time_out": _iso(0)}


class VenueDouble:
    def __init__(self, venue: VenueKind, tape: list[TapeTrade], frames_per_s: float = 500.0,
                 snapshot: int = 3, instruments: dict[str, str] | None = None) -> None:
        self.venue = venue
        # OKX's REST instruments replies by instType, served at /api/v5/public/instruments.
        self.instruments = instruments or {}
        self.rest_calls = 0
        self._rest: web.AppRunner | None = None
        self.rest_port = 0
        self.tape = tape
        self.frames_per_s = frames_per_s
        self.snapshot = snapshot  # Coinbase (Kraken when asked): recent trades sent on subscribe
        self.refuse_ws_with: int | None = None
        self.withheld: set[tuple[str, str]] = set()  # (symbol, trade id) the websocket skips
        self.rest_withheld: set[tuple[str, str]] = set()  # ... and REST lacks too
        self.subscribed: dict[ServerConnection, set[str]] = {}
        self.subscribe_messages: list[dict[str, Any]] = []
        self.pings = 0
        self.heartbeats = 0
        self.connections = 0
        self.cursor = 0
        self.first_subscription = asyncio.Event()
        self.finished = asyncio.Event()
        self._server: Server | None = None
        self._ticker: asyncio.Task[None] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    async def _instruments(self, request: web.Request) -> web.Response:
        self.rest_calls += 1
        body = self.instruments.get(request.query.get("instType", ""))
        if body is None:
            return web.json_response({"code": "51000", "msg": "Parameter instType error", "data": []}, status=400)
        return web.Response(text=body, content_type="application/json")

    async def _market_trades(self, request: web.Request) -> web.Response:
        """Coinbase's `GET /api/v3/brokerage/market/products/{product_id}/ticker?limit=&start=&end=`."""
        self.rest_calls += 1
        product, query = request.match_info["product"], request.query
        start_ms, end_ms, limit = int(query["start"]) * 1000, int(query["end"]) * 1000, int(query["limit"])
        played = [t for t in self.tape[: self.cursor] if t.symbol == product and start_ms <= t.time_ms < end_ms
                  and (t.symbol, t.trade_id) not in self.rest_withheld]
        page = [{**_coinbase_trade(t), "bid": "", "ask": ""} for t in reversed(played)][:limit]
        return web.json_response({"trades": page, "best_bid": "", "best_ask": ""})

    async def __aenter__(self) -> VenueDouble:
        self._server = await serve(self._serve, "127.0.0.1", 0, process_request=self._handshake, max_queue=None)
        self.port = next(iter(self._server.sockets)).getsockname()[1]
        app = web.Application()
        app.router.add_get("/api/v5/public/instruments", self._instruments)
        app.router.add_get("/api/v3/brokerage/market/products/{product}/ticker", self._market_trades)
        self._rest = web.AppRunner(app, access_log=None)
        await self._rest.setup()
        await web.TCPSite(self._rest, "127.0.0.1", 0).start()
        self.rest_port = self._rest.addresses[0][1]
        self._ticker = asyncio.create_task(self._play())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._rest is not None:
            await self._rest.cleanup()

    def _handshake(self, connection: ServerConnection, request: Request) -> Response | None:
        if self.refuse_ws_with is not None:
            return connection.respond(HTTPStatus(self.refuse_ws_with), "double: refused\n")
        return None

    def _frame(self, trades: list[TapeTrade], snapshot: bool = False) -> str:
        return venue_frame(self.venue, trades, snapshot, self.cursor)

    async def _on_message(self, connection: ServerConnection, text: str) -> None:
        if self.venue == "okx" and text == "ping":
            self.pings += 1
            await connection.send("pong")
            return
        message = json.loads(text)
        if self.venue == "kraken" and message.get("method") == "ping":
            self.pings += 1
            await connection.send(json.dumps({"method": "pong", "time_in": _iso(0), "time_out": _iso(0)}))
            return
        if self.venue.startswith("bybit") and message.get("op") == "ping":
            self.pings += 1
            await connection.send(json.dumps({"success": True, "ret_msg": "pong", "conn_id": "double",
                                              "op": "ping"}))
            return
        self.subscribe_messages.append(message)
        symbols = self.subscribed.setdefault(connection, set())
        if self.venue == "okx":
            for arg in message["args"]:
                symbols.add(arg["instId"])
                await connection.send(json.dumps({"event": "subscribe", "arg": arg, "connId": "double"}))
        elif self.venue == "coinbase":
            channel = message["channel"]
            if channel == "market_trades":
                symbols.update(message["product_ids"])
                recent = [t for t in self.tape[: self.cursor] if t.symbol in symbols][-self.snapshot:]
                if recent:
                    await connection.send(self._frame(recent, snapshot=True))
            await connection.send(json.dumps({"channel": "subscriptions", "client_id": "", "timestamp": _iso(0),
                                              "sequence_num": 0, "events": [{"subscriptions": {
                                                  channel: message.get("product_ids", [])}}]}))
        elif self.venue == "kraken":
            params = message["params"]
            for symbol in params["symbol"]:
                symbols.add(symbol)
                await connection.send(json.dumps(_kraken_ack(symbol, params.get("snapshot", False))))
                recent = [t for t in self.tape[: self.cursor] if t.symbol == symbol][-self.snapshot:]
                if params.get("snapshot", False) and recent:
                    await connection.send(self._frame(recent, snapshot=True))
        else:
            symbols.update(topic.removeprefix("publicTrade.") for topic in message["args"])
            await connection.send(json.dumps({"success": True, "ret_msg": "", "conn_id": "double", "req_id": "",
                                              "op": "subscribe"}))
        self.first_subscription.set()

    async def _serve(self, connection: ServerConnection) -> None:
        self.connections += 1
        try:
            if self.venue == "kraken":  # Kraken greets every connection with its status
                await connection.send(json.dumps(KRAKEN_STATUS))
            async for text in connection:
                await self._on_message(connection, str(text))
        except ConnectionClosed:
            pass
        finally:
            self.subscribed.pop(connection, None)

    async def _play(self) -> None:
        await self.first_subscription.wait()
        tick_s = 0.01
        per_tick = max(1, round(self.frames_per_s * tick_s))
        beat = 0
        while self.cursor < len(self.tape):
            batch = self.tape[self.cursor: self.cursor + per_tick]
            self.cursor += len(batch)
            by_symbol: dict[str, list[TapeTrade]] = defaultdict(list)
            for trade in batch:
                if (trade.symbol, trade.trade_id) not in self.withheld:
                    by_symbol[trade.symbol].append(trade)
            for connection, symbols in list(self.subscribed.items()):
                for symbol, trades in by_symbol.items():
                    if symbol in symbols:
                        with contextlib.suppress(ConnectionClosed):
                            await connection.send(self._frame(trades))
            beat += 1
            if self.venue in ("coinbase", "kraken") and beat % 50 == 0:
                await self._heartbeat()
            await asyncio.sleep(tick_s)
        self.finished.set()
        while self.venue in ("coinbase", "kraken"):
            await self._heartbeat()
            await asyncio.sleep(0.5)

    async def _heartbeat(self) -> None:
        self.heartbeats += 1
        for connection in list(self.subscribed):
            with contextlib.suppress(ConnectionClosed):
                if self.venue == "kraken":
                    await connection.send(json.dumps(KRAKEN_HEARTBEAT))
                    continue
                beat = {"current_time": _iso(0), "heartbeat_counter": self.heartbeats}
                await connection.send(json.dumps({"channel": "heartbeats", "client_id": "", "timestamp": _iso(0),
                                                  "sequence_num": self.heartbeats, "events": [beat]}))


@contextlib.contextmanager
def venue_double_in_thread(venue: VenueKind, tape: list[TapeTrade], **options: Any) -> Iterator[VenueDouble]:
    """The double on an event loop of its own thread, for a `pulse` run in another process."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name=f"{venue}-double", daemon=True)
    thread.start()
    double = VenueDouble(venue, tape, **options)
    try:
        asyncio.run_coroutine_threadsafe(double.__aenter__(), loop).result(timeout=30)
        yield double
    finally:
        asyncio.run_coroutine_threadsafe(double.__aexit__(None, None, None), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()
