"""Replay source: recorded trades from a file, as websocket frames, at the recorded pace or flat out.

Accepted, line by line, in one file:
- websocket frames of one venue (`venue`, pulse.source.venues), optionally behind a recorder
  prefix `<unix seconds>: ` (cryptofeed's recordings): for Binance, aggTrade payloads bare or in
  the combined-stream envelope `{"stream": ..., "data": ...}`; for OKX, Coinbase and Bybit their
  trade messages (frames of other channels are skipped and counted);
- Binance public-data archive CSV (`agg_trade_id, price, quantity, first_trade_id, last_trade_id,
  transact_time, is_buyer_maker[, is_best_match]`), with or without a header row, with
  `transact_time` in ms or in µs (spot archives since 2025).

Lines that are neither (recorder configuration, connection URLs, subscriptions sent, REST
snapshots) are counted as skipped. Every CSV row becomes the aggTrade payload Binance would have
sent, so one decoder validates every source alike.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

from pulse.errors import UsageError
from pulse.model import Trade
from pulse.settings import VenueName
from pulse.source.base import FrameDecoder, LocalSource, Output
from pulse.source.venues import reader_for
from pulse.telemetry import Telemetry

_RECORDER_PREFIX = re.compile(r"^\d+(?:\.\d+)?: ")
_CSV_COLUMNS = ("agg_trade_id", "price", "quantity", "first_trade_id", "last_trade_id",
                "transact_time", "is_buyer_maker")
# Epoch ms stay below 1e13 until the year 2286; µs values are ~1e15 today.
_MICROSECONDS_ABOVE = 10**14


@dataclass(frozen=True, slots=True)
class RawFrame:
    text: str
    # Set when the line was recognised as a trade record but could not be turned into a frame.
    invalid_reason: str | None = None


@dataclass(slots=True)
class ReplayStats:
    lines: int = 0
    skipped_lines: int = 0


class ReplayFormatError(UsageError, ValueError):
    """A recording Pulse cannot read as given (its format, or a symbol it needs): exit 2."""


def _csv_row_to_frame(fields: list[str], symbol: str) -> RawFrame:
    line = ",".join(fields)
    if len(fields) < len(_CSV_COLUMNS):
        return RawFrame(line, f"archive CSV row has {len(fields)} columns, expected >= {len(_CSV_COLUMNS)}")
    agg_id, price, quantity, first_id, last_id, transact_time, maker = fields[: len(_CSV_COLUMNS)]
    try:
        trade_time = int(transact_time)
        ids = int(agg_id), int(first_id), int(last_id)
    except ValueError:
        return RawFrame(line, "archive CSV row has a non-integer id or time")
    if trade_time >= _MICROSECONDS_ABOVE:
        trade_time //= 1000
    maker_flag = maker.strip().lower()
    if maker_flag not in ("true", "false"):
        return RawFrame(line, f"archive CSV is_buyer_maker must be true/false, got {maker[:20]!r}")
    payload = {"e": "aggTrade", "E": trade_time, "s": symbol, "a": ids[0], "p": price.strip(),
               "q": quantity.strip(), "f": ids[1], "l": ids[2], "T": trade_time,
               "m": maker_flag == "true"}
    return RawFrame(orjson.dumps(payload).decode())


def read_replay_frames(path: Path, symbol: str | None, stats: ReplayStats | None = None
                       ) -> Iterator[RawFrame]:
    """Yield one frame per trade record of `path`, in file order."""
    stats = stats if stats is not None else ReplayStats()
    with path.open("rb") as lines:
        for raw_bytes in lines:
            stats.lines += 1
            try:
                raw_line = raw_bytes.decode("utf-8")
            except UnicodeDecodeError as error:
                # Dead-lettered with the line as it was (the reason says where), not a replaced copy.
                text = raw_bytes.decode("utf-8", "backslashreplace").strip()
                yield RawFrame(text, f"not UTF-8 text: {error.reason} at byte {error.start} of the line")
                continue
            line = _RECORDER_PREFIX.sub("", raw_line.strip(), count=1)
            if line.startswith("{"):
                yield RawFrame(line)
            elif line[:1].isdigit() and "," in line:
                if not symbol:
                    raise ReplayFormatError(
                        f"{path} holds archive CSV rows, which carry no symbol: pass --symbol (e.g. BTCUSDT)"
                    )
                yield _csv_row_to_frame(line.split(","), symbol.upper())
            else:
                # CSV header, recorder configuration, connection URLs, REST snapshots, blank lines.
                stats.skipped_lines += 1


class ReplaySource(LocalSource):
    """A recording as a source: pacing lives here, so every consumer of a replay gets the same one.

    `speed` is a multiple of the recorded pace (trade times); None replays as fast as the queue
    takes it. Unlike a live feed, a file can wait, so flat out it waits for room instead of
    letting the queue drop its oldest records.
    """

    def __init__(self, path: Path, symbol: str | None = None, speed: float | None = None,
                 venue: VenueName = "binance-usdm", instruments: Path | None = None) -> None:
        self.path = path
        self.symbol = symbol.upper() if symbol else None
        self.speed = speed
        self.venue = venue
        self.name = f"replay:{path.name}"
        self.symbols: list[str] = [self.symbol] if self.symbol else []
        self.stats = ReplayStats()
        self._decoder = FrameDecoder(self.name, reader_for(venue, self.symbol, instruments))
        self._ids = RecentIds()
        self.duplicates = 0

    async def setup(self) -> None:
        if not self.path.is_file():
            raise FileNotFoundError(f"no recording at {self.path}")
        with self.path.open("rb"):
            pass  # unreadable files fail here, before anything starts

    async def _emit_all(self, out: Output, stop: asyncio.Event) -> None:
        first_trade_ms: int | None = None
        started = time.monotonic()
        for count, frame in enumerate(read_replay_frames(self.path, self.symbol, self.stats), start=1):
            trades = self.emit(frame.text, out, frame.invalid_reason)
            if stop.is_set():
                return
            if self.speed is not None and trades:
                trade = trades[-1]
                if first_trade_ms is None:
                    first_trade_ms, started = trade.trade_time_ms, time.monotonic()
                delay = started + (trade.trade_time_ms - first_trade_ms) / 1000.0 / self.speed - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            elif count % 500 == 0:
                await out.room()

    def emit(self, raw: str | bytes, out: Output, invalid_reason: str | None = None) -> list[Trade]:
        """Each trade once per (symbol, trade id), as the live source's sequencer passes it: a recording
        that holds a frame twice (a reconnect's overlap, a concatenated file, the trades a venue
        repeats on subscribe) counts it once."""
        kept = []
        for trade in self._decoder.trades(raw, out, invalid_reason):
            if not self._ids.first(trade.symbol, trade.agg_trade_id):
                self.duplicates += 1
                continue
            out.trade(trade)
            kept.append(trade)
        return kept

    def telemetry(self) -> Telemetry:
        decoded = self._decoder.telemetry()
        return Telemetry(counters={**decoded.counters, "replay_lines": self.stats.lines,
                                   "replay_lines_skipped": self.stats.skipped_lines, "duplicates": self.duplicates})


class RecentIds:
    """Aggregate ids seen per symbol, within a window below the highest: ids are consecutive per symbol
    and recordings nearly in order, so a repeat lies close behind; memory stays bounded on any file."""

    def __init__(self, window: int = 100_000) -> None:
        self._window = window
        self._seen: dict[str, set[int]] = {}
        self._highest: dict[str, int] = {}

    def first(self, symbol: str, agg_id: int) -> bool:
        """True the first time (`symbol`, `agg_id`) comes; False for a repeat."""
        seen = self._seen.setdefault(symbol, set())
        if agg_id in seen:
            return False
        seen.add(agg_id)
        highest = self._highest[symbol] = max(agg_id, self._highest.get(symbol, agg_id))
        if len(seen) > 2 * self._window:
            self._seen[symbol] = {i for i in seen if i > highest - self._window}
        return True
