"""Venues as data: how each one's trades are read, what its ids promise, where it lives.

One row per venue (docs/venues.md has the same table for people). A reader turns one frame of the
venue's websocket (live or recorded) into trades; everything after it sees the one `Trade`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args
from urllib.parse import urlsplit

from pulse.errors import UsageError
from pulse.settings import VenueName
from pulse.source.binance.wire import BinanceReader, contract_sizes, exchange_symbols
from pulse.source.bybit import wire as bybit
from pulse.source.bybit.wire import BybitReader
from pulse.source.coinbase import wire as coinbase
from pulse.source.coinbase.wire import CoinbaseReader
from pulse.source.contract import InvalidFrame, TradeReader
from pulse.source.kraken import wire as kraken
from pulse.source.kraken.wire import KrakenReader
from pulse.source.okx import wire as okx
from pulse.source.okx.wire import Instrument, OkxReader, parse_instruments

VENUE_NAMES: tuple[VenueName, ...] = get_args(VenueName)


@dataclass(frozen=True, slots=True)
class Venue:
    name: VenueName
    title: str
    ws_url: str
    # What the venue promises of trade ids per symbol: "consecutive" ids let a gap be seen (and
    # filled over REST where `gap_fill`); "increasing" and "unordered" ids only deduplicate.
    ids: Literal["consecutive", "increasing", "unordered"]
    gap_fill: bool
    # Venues that subscribe by message after connecting (Binance's take the streams in the URL):
    # the messages for some symbols, and what to send how often to keep the connection.
    subscribe: Callable[[list[str]], list[str]] | None = None
    keepalive: tuple[float, str] | None = None

    def url(self, override: str | None) -> str:
        """The venue's websocket URL, or `override`'s host with the venue's path unless it brings one."""
        if not override:
            return self.ws_url
        if urlsplit(override).path.strip("/"):
            return override
        return override.rstrip("/") + urlsplit(self.ws_url).path


VENUES: dict[VenueName, Venue] = {v.name: v for v in (
    Venue("binance-usdm", "Binance USD-M futures", "wss://fstream.binance.com/market/stream", "consecutive", True),
    Venue("binance-spot", "Binance spot", "wss://stream.binance.com:9443/stream", "consecutive", True),
    Venue("binance-coinm", "Binance COIN-M futures", "wss://dstream.binance.com/stream", "consecutive", True),
    Venue("binance-us", "Binance.US spot", "wss://stream.binance.us:9443/stream", "consecutive", True),
    Venue("okx", "OKX", "wss://ws.okx.com:8443/ws/v5/public", "increasing", False, okx.subscriptions,
          okx.KEEPALIVE),
    Venue("coinbase", "Coinbase", "wss://advanced-trade-ws.coinbase.com", "consecutive", True,
          coinbase.subscriptions, coinbase.KEEPALIVE),
    Venue("bybit-linear", "Bybit linear contracts", "wss://stream.bybit.com/v5/public/linear", "unordered", False,
          bybit.subscriptions, bybit.KEEPALIVE),
    Venue("bybit-spot", "Bybit spot", "wss://stream.bybit.com/v5/public/spot", "increasing", False,
          bybit.subscriptions, bybit.KEEPALIVE),
    Venue("kraken", "Kraken", "wss://ws.kraken.com/v2", "consecutive", False, kraken.subscriptions,
          kraken.KEEPALIVE),
)}


def reader_for(venue: VenueName, default_symbol: str | None = None, instruments: Path | None = None) -> TradeReader:
    """The reader of `venue`'s frames. `instruments`: a recorded instruments reply (OKX contracts) or
    exchangeInfo (Binance COIN-M), whose contract sizes turn contracts into base units."""
    if instruments is not None and venue not in ("okx", "binance-coinm"):
        raise UsageError(f"--instruments is read for okx and binance-coinm only, not {venue}")
    if venue == "binance-coinm":
        if instruments is None:
            raise UsageError("binance-coinm counts contracts: give --instruments FILE, a saved reply of"
                             " GET /dapi/v1/exchangeInfo, for their sizes")
        return BinanceReader(venue, default_symbol, read_coinm_contract_sizes(instruments))
    if venue == "okx":
        return OkxReader(read_okx_instruments(instruments) if instruments is not None else None)
    if venue == "coinbase":
        return CoinbaseReader()
    if venue.startswith("bybit-"):
        return BybitReader(venue)
    if venue == "kraken":
        return KrakenReader()
    return BinanceReader(venue, default_symbol)


def read_coinm_contract_sizes(path: Path) -> dict[str, float]:
    """Binance COIN-M's contract sizes from a saved exchangeInfo reply (bare JSON, as curl saves it)."""
    try:
        sizes = contract_sizes(exchange_symbols(path.read_bytes()))
    except OSError as error:
        raise UsageError(f"cannot read the exchangeInfo file {path}: {error.strerror}") from None
    except InvalidFrame:
        raise UsageError(f"{path} is not a Binance exchangeInfo reply") from None
    if not sizes:
        raise UsageError(f"{path} lists no COIN-M contract size (contractSize)")
    return sizes


def read_okx_instruments(path: Path) -> dict[str, Instrument]:
    """OKX instruments from a file of replies: one JSON body per line, bare or behind the recorder's
    `<URL> -> <unix s>: ` prefix:

        https://www.okx.com/api/v5/public/instruments?instType=SWAP -> 1652459223.59: {"code":"0","data":[...]}
    """
    try:
        lines = path.read_text().splitlines()
    except OSError as error:
        raise UsageError(f"cannot read the instruments file {path}: {error.strerror}") from None
    # The recorder's own `configuration: {...}` line is not a reply.
    bodies = [line[line.index("{"):] for line in lines
              if "{" in line and (not line[:line.index("{")].strip() or " -> " in line[:line.index("{")])]
    try:
        found = parse_instruments(bodies)
    except InvalidFrame as error:
        raise UsageError(f"{path} is not a list of OKX instruments replies: {error.reason}") from None
    if not found:
        raise UsageError(f"{path} holds no OKX instruments")
    return found
