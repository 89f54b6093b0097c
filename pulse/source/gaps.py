"""Filling the ids a live venue skipped, from its REST API, while the symbol's later trades wait.

Every venue with consecutive ids (Binance's markets, Binance.US, Coinbase, Kraken) sequences its
trades (`AggregateIdSequencer`); a skipped id opens a gap and holds the symbol's later trades back.
`GapFiller` then asks the venue's `GapFill` for the missing trades and feeds them through the same
sequencer, so the symbol's trades leave in id order. A venue without a fill (Kraken), or ids its
REST does not return in time, become a gap event, and the held trades are released after it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from pulse.errors import Unavailable
from pulse.model import Gap, GapEvent, Trade
from pulse.settings import ProducerSettings
from pulse.source.base import Output, now_ms
from pulse.source.binance.sequencer import AggregateIdSequencer
from pulse.telemetry import Telemetry

log = logging.getLogger(__name__)


class GapFill(Protocol):
    """A venue's REST recovery of the trades in a gap."""

    async def trades(self, gap: Gap, after_ms: int, before_ms: int) -> list[Trade]:
        """Trades of `gap`'s ids that REST returns (any order; others are ignored), knowing that they
        traded between `after_ms` and `before_ms`. Raises `Unavailable` when REST fails for good."""
        ...

    def telemetry(self) -> Telemetry: ...


@dataclass(slots=True)
class GapCounters:
    found: int = 0
    filled: int = 0
    unfilled: int = 0
    trades_filled: int = 0
    ids_lost: int = 0
    rest_errors: int = 0


class GapFiller:
    """One task per symbol with a gap: it waits `gap_grace_s` (during a rotation the other connection
    may still deliver the ids), then asks the venue's fill for the missing ids. Ids the fill does not
    return (or not before `gap_fill_timeout_s`) become a gap event saying why."""

    def __init__(self, settings: ProducerSettings, sequencer: AggregateIdSequencer, fill: GapFill | None,
                 out: Output, no_fill: str = "no REST source") -> None:
        self._settings = settings
        self._sequencer = sequencer
        self._fill = fill
        self._no_fill = no_fill
        self._out = out
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.counters = GapCounters()

    @property
    def pending(self) -> bool:
        return bool(self._tasks)

    def accept(self, trade: Trade) -> None:
        """A trade off the wire: out now with what it releases, or held behind its symbol's gap."""
        self._release(self._sequencer.accept(trade))
        if self._sequencer.held_count(trade.symbol):
            self._notice(trade.symbol)

    def _notice(self, symbol: str) -> None:
        if symbol not in self._tasks:
            self.counters.found += 1
            self._tasks[symbol] = asyncio.create_task(self._fill_gaps(symbol))

    def _release(self, trades: Sequence[Trade]) -> None:
        for trade in trades:
            self._out.trade(trade)

    async def _fetch(self, gap: Gap, deadline: float) -> tuple[list[Trade], str]:
        if self._fill is None:
            return [], self._no_fill
        after_ms, before_ms = self._sequencer.gap_times(gap.symbol)
        try:
            trades = await asyncio.wait_for(self._fill.trades(gap, after_ms, before_ms),
                                            timeout=max(0.0, deadline - time.monotonic()))
        except (Unavailable, TimeoutError) as error:
            self.counters.rest_errors += 1
            return [], f"REST failed: {error}" if str(error) else "REST timed out"
        wanted = {t.agg_trade_id: t for t in trades
                  if t.symbol == gap.symbol and gap.first_missing_id <= t.agg_trade_id <= gap.last_missing_id}
        return [wanted[i] for i in sorted(wanted)], "ids not returned by REST"

    async def _fill_gaps(self, symbol: str) -> None:
        lost_any = False
        try:
            await asyncio.sleep(self._settings.gap_grace_s)
            deadline = time.monotonic() + self._settings.gap_fill_timeout_s
            while (gap := self._sequencer.gap(symbol)) is not None:
                recovered, problem = await self._fetch(gap, deadline)
                # The wire may have closed part of the gap while REST was asked: start again from
                # what is still missing rather than act on a stale range.
                current = self._sequencer.gap(symbol)
                if current is None or current.first_missing_id != gap.first_missing_id:
                    continue
                if recovered and recovered[0].agg_trade_id == gap.first_missing_id:
                    for trade in recovered:
                        self._release(self._sequencer.accept(trade))
                    self.counters.trades_filled += len(recovered)
                    continue
                lost_to = recovered[0].agg_trade_id - 1 if recovered else gap.last_missing_id
                self._give_up(Gap(symbol, gap.first_missing_id, lost_to), problem)
                lost_any = True
        finally:
            del self._tasks[symbol]
        if lost_any:
            self.counters.unfilled += 1
        else:
            self.counters.filled += 1

    def _give_up(self, gap: Gap, reason: str) -> None:
        self.counters.ids_lost += gap.size
        log.warning("gap not fillable", extra={"event": "gap_unfilled", "symbol": gap.symbol,
                                                "first_missing_id": gap.first_missing_id,
                                                "last_missing_id": gap.last_missing_id, "reason": reason})
        self._out.gap(GapEvent(gap=gap, reason=reason, detected_ms=now_ms()))
        self._release(self._sequencer.give_up(gap.symbol, gap.last_missing_id))

    async def stop(self) -> None:
        """Shutting down: what is still missing is recorded as lost, held trades are released."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for symbol in self._sequencer.symbols():
            while (gap := self._sequencer.gap(symbol)) is not None:
                self._give_up(gap, "producer stopped before the gap was filled")
                self.counters.unfilled += 1



def gap_telemetry(filler: GapFiller | None) -> Telemetry:
    """The gap counters (zeros before the source runs: /metrics lists them from the start)."""
    c = filler.counters if filler is not None else GapCounters()
    return Telemetry(counters={"gaps_found": c.found, "gaps_filled": c.filled, "gaps_unfilled": c.unfilled,
                               "trades_filled": c.trades_filled, "ids_lost": c.ids_lost,
                               "gap_rest_errors": c.rest_errors})
