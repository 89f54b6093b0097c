"""Per-symbol ordering of consecutive trade ids: de-duplication, gap detection, in-order release.

Binance numbers the aggTrades of a symbol consecutively (`a`), as Coinbase does its `trade_id` per
product and Kraken per book: every venue whose ids are "consecutive" (pulse.source.venues) goes
through here. A trade whose id is already published is a duplicate (two connections overlap during
rotation, a snapshot repeats trades, or REST and the wire both deliver it). A trade beyond the next
expected id reveals a gap: it is held back, not published, until the gap is filled (REST, or late
frames of the other connection) or given up, so every symbol reaches Kafka in id order. Pure
bookkeeping: no I/O, no clock.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from pulse.model import Gap, Trade


@dataclass(slots=True)
class _SymbolSequence:
    next_id: int
    # The trade time of the last trade released: with the first held trade's, it bounds when the
    # missing ids traded (a venue whose REST pages by time asks for that span).
    last_time_ms: int
    held: dict[int, Trade] = field(default_factory=dict)


class AggregateIdSequencer:
    def __init__(self) -> None:
        self._symbols: dict[str, _SymbolSequence] = {}
        self.duplicates: Counter[str] = Counter()

    def accept(self, trade: Trade) -> list[Trade]:
        """Take one trade; return the trades now publishable, in id order (often just `trade`)."""
        sequence = self._symbols.get(trade.symbol)
        trade_id = trade.agg_trade_id
        if sequence is None:
            # The first trade of a symbol starts its sequence: what came before is not ours to fetch.
            self._symbols[trade.symbol] = _SymbolSequence(next_id=trade_id + 1, last_time_ms=trade.trade_time_ms)
            return [trade]
        if trade_id < sequence.next_id or trade_id in sequence.held:
            self.duplicates[trade.symbol] += 1
            return []
        if trade_id > sequence.next_id:
            sequence.held[trade_id] = trade
            return []
        sequence.next_id += 1
        sequence.last_time_ms = trade.trade_time_ms
        return [trade, *self._release(sequence)]

    @staticmethod
    def _release(sequence: _SymbolSequence) -> list[Trade]:
        released = []
        while (following := sequence.held.pop(sequence.next_id, None)) is not None:
            released.append(following)
            sequence.next_id += 1
            sequence.last_time_ms = following.trade_time_ms
        return released

    def gap(self, symbol: str) -> Gap | None:
        """The first missing id range of `symbol` (before its lowest held trade), if any."""
        sequence = self._symbols.get(symbol)
        if sequence is None or not sequence.held:
            return None
        return Gap(symbol, sequence.next_id, min(sequence.held) - 1)

    def gap_times(self, symbol: str) -> tuple[int, int]:
        """When `symbol`'s first gap traded, at most: from the last released trade's time to the first
        held trade's (ms)."""
        sequence = self._symbols[symbol]
        return sequence.last_time_ms, sequence.held[min(sequence.held)].trade_time_ms

    def held_count(self, symbol: str) -> int:
        sequence = self._symbols.get(symbol)
        return len(sequence.held) if sequence is not None else 0

    def give_up(self, symbol: str, up_to_id: int) -> list[Trade]:
        """Declare ids up to `up_to_id` lost; return the held trades that become publishable."""
        sequence = self._symbols[symbol]
        sequence.next_id = max(sequence.next_id, up_to_id + 1)
        for stale in [trade_id for trade_id in sequence.held if trade_id < sequence.next_id]:
            del sequence.held[stale]
        return self._release(sequence)

    def symbols(self) -> list[str]:
        return list(self._symbols)
