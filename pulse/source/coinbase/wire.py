"""Coinbase trades: the Advanced Trade `market_trades` channel, and the Exchange feed's `match`.

Advanced Trade (`wss://advanced-trade-ws.coinbase.com`, subscribed with the `heartbeats` channel
beside it; https://docs.cdp.coinbase.com/advanced-trade/docs/ws-channels#market-trades-channel):

    {"channel": "market_trades", "client_id": "", "timestamp": "2023-02-09T20:19:35.39625135Z",
     "sequence_num": 0, "events": [{"type": "snapshot", "trades": [{"trade_id": "000000000",
     "product_id": "ETH-USD", "price": "1260.01", "size": "0.3", "side": "BUY",
     "time": "2019-08-14T20:42:27.265Z"}]}]}

The Exchange feed (`wss://ws-feed.exchange.coinbase.com`, the `matches` channel; recordings;
https://docs.cdp.coinbase.com/exchange/docs/websocket-channels#match-message):

    {"type": "match", "trade_id": 881613, "maker_order_id": "27ff...", "taker_order_id": "1da6...",
     "side": "sell", "size": "0.04", "price": "14.7775", "product_id": "BAND-GBP",
     "sequence": 333938798, "time": "2021-04-17T16:43:30.244075Z"}

- `side` is the MAKER's order side: a `sell` match is a taker BUY (an up-tick). Pulse applies the
  same rule to `market_trades` and to Advanced Trade's REST market trades (pulse.source.coinbase.rest),
  which carry the same matches (nautilus_trader's Coinbase adapter reads them so too:
  "Coinbase reports the maker side on public market trades").
- `last_match` (Exchange) and a `snapshot` event (Advanced Trade) repeat recent trades on
  subscribe: they count once, by `trade_id`, which runs without gaps per product.
- Times are ISO 8601 with up to nanoseconds; Pulse keeps milliseconds (truncated).
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from pulse.model import FIRST_TRADE_MS, SYMBOL_PATTERN, Trade
from pulse.source.contract import (
    InvalidFrame,
    NotATrade,
    PositiveDecimal,
    check_not_ahead,
    guarded,
    iso_ms,
    numeric_id,
    positive_double,
    split_dashed,
    validation_reason,
)

ProductId = Annotated[str, msgspec.Meta(pattern=SYMBOL_PATTERN)]
TradeIdText = Annotated[str, msgspec.Meta(pattern=r"^[0-9]{1,18}$")]
TradeIdNumber = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]


class ExchangeMatch(msgspec.Struct, frozen=True, tag_field="type", tag="match"):
    trade_id: TradeIdNumber
    side: Literal["buy", "sell"]  # the maker's side
    size: PositiveDecimal
    price: PositiveDecimal
    product_id: ProductId
    time: str


class ExchangeLastMatch(ExchangeMatch, frozen=True, tag="last_match"):
    """The product's latest match, sent once on subscribe."""


class MarketTrade(msgspec.Struct, frozen=True):
    trade_id: TradeIdText
    product_id: ProductId
    price: PositiveDecimal
    size: PositiveDecimal
    side: Literal["BUY", "SELL"]  # the maker's side
    time: str


class _TickerReply(msgspec.Struct, frozen=True):
    """Advanced Trade's REST market trades (bid, ask and best prices beside them are not read)."""

    trades: list[MarketTrade]


class _MarketTradesEvent(msgspec.Struct, frozen=True):
    type: Literal["snapshot", "update"]
    trades: list[MarketTrade]


class _Channel(msgspec.Struct, frozen=True):
    channel: str
    timestamp: str = ""
    # Raw: decoded below only for market_trades (heartbeats carry other events).
    events: msgspec.Raw = msgspec.Raw(b"null")


class _Typed(msgspec.Struct, frozen=True):
    type: str


_match = msgspec.json.Decoder(ExchangeMatch | ExchangeLastMatch)
_channel = msgspec.json.Decoder(_Channel)
_events = msgspec.json.Decoder(list[_MarketTradesEvent])
_typed = msgspec.json.Decoder(_Typed)
_ticker = msgspec.json.Decoder(_TickerReply)


def ticker_trades(body: bytes) -> list[MarketTrade]:
    """The trades of a REST market-trades reply; `InvalidFrame` when it is not one."""
    try:
        return _ticker.decode(body).trades
    except msgspec.ValidationError as error:
        raise InvalidFrame(validation_reason(error)) from None
    except msgspec.DecodeError as error:
        raise InvalidFrame(f"not JSON: {error}") from None


class CoinbaseReader:
    """Coinbase frames (Advanced Trade or Exchange) -> trades."""

    venue = "coinbase"

    def trades(self, raw: str | bytes, received_ms: int) -> list[Trade]:
        return guarded(lambda frame: self._trades(frame, received_ms), raw)

    def _trades(self, raw: str | bytes, received_ms: int) -> list[Trade]:
        try:
            channel = _channel.decode(raw)
        except msgspec.ValidationError:
            return [self._exchange(raw, received_ms)]
        except msgspec.DecodeError as error:
            raise InvalidFrame(f"not JSON: {error}") from None
        if channel.channel != "market_trades":
            raise NotATrade(channel.channel)  # heartbeats, subscriptions
        try:
            events = _events.decode(channel.events)
        except msgspec.ValidationError as error:
            raise InvalidFrame(f"events: {validation_reason(error)}") from None
        return self.market_trades([t for event in events for t in event.trades], received_ms)

    def market_trades(self, trades: list[MarketTrade], received_ms: int) -> list[Trade]:
        """Advanced Trade's trades (websocket or REST) as the contract's."""
        return [self._convert(t.trade_id, t.product_id, t.price, t.size, t.side == "SELL", t.time, received_ms)
                for t in trades]

    def _exchange(self, raw: str | bytes, received_ms: int) -> Trade:
        try:
            kind = _typed.decode(raw).type
        except msgspec.ValidationError as error:
            raise InvalidFrame(f"not a Coinbase message: {validation_reason(error)}") from None
        if kind not in ("match", "last_match"):
            raise NotATrade(kind)  # l2update, ticker, subscriptions, heartbeat
        try:
            match = _match.decode(raw)
        except msgspec.ValidationError as error:
            raise InvalidFrame(validation_reason(error)) from None
        return self._convert(str(match.trade_id), match.product_id, match.price, match.size, match.side == "sell",
                             match.time, received_ms)

    def _convert(self, trade_id: str, product: str, price: str, size: str, taker_buys: bool, time: str,
                 received_ms: int) -> Trade:
        trade_ms = iso_ms("time", time)
        if trade_ms < FIRST_TRADE_MS:
            raise InvalidFrame("field 'time': trade time before 2017-01-01, earlier than Pulse reads")
        check_not_ahead("time", trade_ms, trade_ms, received_ms)
        ident = numeric_id("trade_id", trade_id)
        base, quote = split_dashed(product)
        return Trade(symbol=product, agg_trade_id=ident, price=positive_double("price", price),
                     quantity=positive_double("size", size), first_trade_id=ident, last_trade_id=ident,
                     trade_time_ms=trade_ms, event_time_ms=trade_ms, buyer_is_maker=not taker_buys,
                     ingest_time_ms=received_ms, venue=self.venue, base=base, quote=quote)


def subscriptions(symbols: list[str]) -> list[str]:
    """`market_trades` for the products, and `heartbeats`, which keeps subscriptions open when trades
    are sparse (Coinbase closes a connection idle for over 60-90 s)."""
    return [msgspec.json.encode({"type": "subscribe", "product_ids": symbols, "channel": "market_trades"}).decode(),
            msgspec.json.encode({"type": "subscribe", "channel": "heartbeats"}).decode()]


KEEPALIVE = None  # the heartbeats channel is the keep-alive
