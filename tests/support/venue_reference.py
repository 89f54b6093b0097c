"""The trades of other venues' recordings, read independently of `pulse` (for the reference windows).

Each venue's rules, as its documentation and ../shared/data/venues/README.md state them, applied with
exact decimals: OKX `side` is the taker's and derivatives count contracts of `ctVal` `ctValCcy`
(inverse: quote currency, so base = sz·ctVal/px); Coinbase `side` is the MAKER's; Bybit `S` is the
taker's. A trade id repeated (a venue's snapshot on subscribe) counts once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from tests.support.recordings import ROOT
from tests.support.reference import RefTrade, trades_from_recording
from tests.support.venue_double import TapeTrade

VENUES_DIR = ROOT.parent / "shared" / "data" / "venues"
BINANCE_US = "BINANCE_US.ws.1.0"
OKX = "OKX.ws.1.0"
OKX_INSTRUMENTS = "OKX.instruments.0"
COINBASE = "COINBASE.ws.28.0"

_PREFIX = re.compile(r"^\d+(?:\.\d+)?: ")


def venue_recording(name: str) -> Path:
    return VENUES_DIR / name


def _frames(path: Path) -> Iterator[dict[str, Any]]:
    for raw_line in path.read_text().splitlines():
        line = _PREFIX.sub("", raw_line.strip(), count=1)
        if line.startswith("{"):
            yield json.loads(line)


def okx_contracts(path: Path) -> dict[str, tuple[Decimal, str, str]]:
    """instId -> (contract value, its currency, the base currency) for every SWAP and FUTURES."""
    found = {}
    for line in path.read_text().splitlines():
        if " -> " not in line:
            continue  # the recorder's configuration line
        for item in json.loads(line[line.index("{"):])["data"]:
            if item.get("ctVal"):
                value = Decimal(item["ctVal"]) * Decimal(item.get("ctMult") or "1")
                found[item["instId"]] = (value, item["ctValCcy"], item["uly"].split("-")[0])
    return found


def _once(trades: Iterator[RefTrade]) -> list[RefTrade]:
    seen: set[tuple[str, int]] = set()
    kept = []
    for trade in trades:
        if (trade.symbol, trade.agg_id) not in seen:
            seen.add((trade.symbol, trade.agg_id))
            kept.append(trade)
    return kept


def okx_trades(path: Path, instruments: Path) -> list[RefTrade]:
    contracts = okx_contracts(instruments)

    def read() -> Iterator[RefTrade]:
        for frame in _frames(path):
            if frame.get("arg", {}).get("channel") != "trades" or "data" not in frame:
                continue
            for t in frame["data"]:
                price, size = Decimal(t["px"]), Decimal(t["sz"])
                if t["instId"] in contracts:
                    value, currency, base = contracts[t["instId"]]
                    size = size * value if currency == base else size * value / price
                yield RefTrade(t["instId"], int(t["tradeId"]), price, size, int(t["ts"]), t["side"] == "sell")
    return _once(read())


def _iso_ms(text: str) -> int:
    whole, _, fraction = text.rstrip("Z").partition(".")
    seconds = int(datetime.fromisoformat(whole).replace(tzinfo=UTC).timestamp())
    return seconds * 1000 + int((fraction or "0").ljust(3, "0")[:3])


def coinbase_trades(path: Path) -> list[RefTrade]:
    def read() -> Iterator[RefTrade]:
        for frame in _frames(path):
            if frame.get("type") in ("match", "last_match"):
                # The maker sold: the taker bought, so the buyer was not the maker.
                yield RefTrade(frame["product_id"], int(frame["trade_id"]), Decimal(frame["price"]),
                               Decimal(frame["size"]), _iso_ms(frame["time"]), frame["side"] == "buy")
    return _once(read())


def binance_us_trades(path: Path) -> list[RefTrade]:
    return _once(iter(trades_from_recording(path)))


# -- tapes for the live doubles (tests/support/venue_double.py), from the same recordings -----------

def okx_tape(path: Path, spot_only: bool = False) -> list[TapeTrade]:
    """The recording's trades, once each (sizes in contracts for swaps and futures, as OKX sends them)."""
    seen: set[tuple[str, str]] = set()
    tape = []
    for frame in _frames(path):
        if frame.get("arg", {}).get("channel") != "trades" or "data" not in frame:
            continue
        for t in frame["data"]:
            if (t["instId"], t["tradeId"]) in seen or (spot_only and t["instId"].count("-") > 1):
                continue
            seen.add((t["instId"], t["tradeId"]))
            tape.append(TapeTrade(t["instId"], t["tradeId"], t["px"], t["sz"], t["side"] == "buy", int(t["ts"])))
    return sorted(tape, key=lambda t: t.time_ms)


def okx_instruments_replies(path: Path) -> dict[str, str]:
    """The recorded instruments replies by instType (SPOT, SWAP, FUTURES; options left out)."""
    replies = {}
    for line in path.read_text().splitlines():
        if " -> " in line and "instType=" in line and "uly=" not in line:
            inst_type = line.split("instType=", 1)[1].split(" ", 1)[0]
            replies[inst_type] = line[line.index("{"):]
    return replies


def coinbase_tape(path: Path) -> list[TapeTrade]:
    """The recording's matches, once each, in time order; a `sell` match (the maker sold) is a taker buy."""
    seen: set[tuple[str, int]] = set()
    tape = []
    for frame in _frames(path):
        if frame.get("type") in ("match", "last_match") and (frame["product_id"], frame["trade_id"]) not in seen:
            seen.add((frame["product_id"], frame["trade_id"]))
            tape.append(TapeTrade(frame["product_id"], str(frame["trade_id"]), frame["price"], frame["size"],
                                  frame["side"] == "sell", _iso_ms(frame["time"])))
    return sorted(tape, key=lambda t: (t.time_ms, t.symbol, int(t.trade_id)))


def kraken_tape(path: Path) -> list[TapeTrade]:
    """No Kraken recording is at hand: the Coinbase recording's matches under Kraken's names (`BAND/GBP`);
    their ids run without gaps per product, as Kraken's do per book."""
    return [dataclasses.replace(t, symbol=t.symbol.replace("-", "/")) for t in coinbase_tape(path)]


def bybit_tape(path: Path, symbols: set[str], uuids: bool = False) -> list[TapeTrade]:
    """No Bybit recording is at hand: real Binance spot trades of `symbols`, framed as Bybit frames them,
    with spot's digit trade ids, or linear contracts' UUIDs."""
    return [TapeTrade(t.symbol, str(uuid.uuid5(uuid.NAMESPACE_OID, f"{t.symbol}:{t.agg_id}")) if uuids
                      else str(t.agg_id), str(t.price), str(t.qty), not t.buyer_maker, t.time_ms)
            for t in trades_from_recording(path) if t.symbol in symbols]


def tape_trades(tape: list[TapeTrade]) -> list[RefTrade]:
    """The tape as the reference's trades. Ids that are not numbers (Bybit's UUIDs) stand as the 63-bit
    BLAKE2b digest docs/venues.md names; they only break ties within a millisecond."""
    return [RefTrade(t.symbol, int(t.trade_id) if t.trade_id.isdigit() else _digest(t.trade_id), Decimal(t.price),
                     Decimal(t.size), t.time_ms, not t.taker_buys) for t in tape]


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") >> 1
