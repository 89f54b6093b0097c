"""Venues as data: how each one's trades are read, what its ids promise, where it lives.

One row per venue (docs/venues.md has the same table for people). A reader turns one frame of the
venue's websocket (live or recorded) into trades; everything after it sees the one `Trade`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, get_args

from pulse.errors import UsageError
from pulse.model import Trade
from pulse.settings import VenueName
from pulse.source.binance.wire import decode_frame, to_trade
from pulse.source.bybit.wire import BybitReader
from pulse.source.coinbase.wire import CoinbaseReader
from pulse.source.contract import InvalidFrame
from pulse.source.okx.wire import Instrument, OkxReader, parse_instruments

VENUE_NAMES: tuple[VenueName, ...] = get_args(VenueName)


class TradeReader(Protocol):
    venue: str

    def trades(self, raw: str | bytes, received_ms: int) -> list[Trade]:
        """The trades in one frame; raises NotATrade (skipped) or InvalidFrame (dead-lettered)."""
        ...


class BinanceReader:
    """Binance's aggTrade frames (every Binance market, and Binance.US, which speaks the same)."""

    def __init__(self, venue: str = "binance-usdm", default_symbol: str | None = None) -> None:
        self.venue = venue
        self._default_symbol = default_symbol

    def trades(self, raw: str | bytes, received_ms: int) -> list[Trade]:
        return [to_trade(decode_frame(raw, self._default_symbol), received_ms, self.venue)]


@dataclass(frozen=True, slots=True)
class Venue:
    name: VenueName
    title: str
    ws_url: str
    # What the venue promises of trade ids per symbol: "consecutive" ids let a gap be seen (and
    # filled over REST where `gap_fill`); "increasing" and "unordered" ids only deduplicate.
    ids: Literal["consecutive", "increasing", "unordered"]
    gap_fill: bool


VENUES: dict[VenueName, Venue] = {v.name: v for v in (
    Venue("binance-usdm", "Binance USD-M futures", "wss://fstream.binance.com/market/stream", "consecutive", True),
    Venue("binance-spot", "Binance spot", "wss://stream.binance.com:9443/stream", "consecutive", True),
    Venue("binance-coinm", "Binance COIN-M futures", "wss://dstream.binance.com/stream", "consecutive", True),
    Venue("binance-us", "Binance.US spot", "wss://stream.binance.us:9443/stream", "consecutive", True),
    Venue("okx", "OKX (spot, swaps, futures)", "wss://ws.okx.com:8443/ws/v5/public", "increasing", False),
    Venue("coinbase", "Coinbase", "wss://advanced-trade-ws.coinbase.com", "consecutive", False),
    Venue("bybit-linear", "Bybit linear contracts", "wss://stream.bybit.com/v5/public/linear", "unordered", False),
    Venue("bybit-spot", "Bybit spot", "wss://stream.bybit.com/v5/public/spot", "increasing", False),
)}


def reader_for(venue: VenueName, default_symbol: str | None = None, instruments: Path | None = None) -> TradeReader:
    """The reader of `venue`'s frames. `instruments`: a recorded instruments reply (OKX contracts)."""
    if instruments is not None and venue != "okx":
        raise UsageError(f"--instruments is read for okx only, not {venue}")
    if venue == "okx":
        return OkxReader(read_okx_instruments(instruments) if instruments is not None else None)
    if venue == "coinbase":
        return CoinbaseReader()
    if venue.startswith("bybit-"):
        return BybitReader(venue)
    return BinanceReader(venue, default_symbol)


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
