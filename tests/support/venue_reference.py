"""The trades of other venues' recordings, read independently of `pulse` (for the reference windows).

Each venue's rules, as its documentation and ../shared/data/venues/README.md state them, applied with
exact decimals: OKX `side` is the taker's and derivatives count contracts of `ctVal` `ctValCcy`
(inverse: quote currency, so base = sz·ctVal/px); Coinbase `side` is the MAKER's; Bybit `S` is the
taker's. A trade id repeated (a venue's snapshot on subscribe) counts once.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from tests.support.recordings import ROOT
from tests.support.reference import RefTrade, trades_from_recording

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
