"""Per-symbol id sequencing: in-order release, duplicates, gaps and giving up."""

from __future__ import annotations

from pulse.model import Gap, Trade
from pulse.source.binance.sequencer import AggregateIdSequencer


def trade(symbol: str, agg_id: int) -> Trade:
    return Trade(symbol, agg_id, 1.0, 1.0, agg_id, agg_id, 0, 0, False, 0)


def ids(trades: list[Trade]) -> list[int]:
    return [t.agg_trade_id for t in trades]


def test_sequencer_releases_in_order_and_drops_duplicates():
    seq = AggregateIdSequencer()
    assert ids(seq.accept(trade("X", 10))) == [10]
    assert ids(seq.accept(trade("X", 11))) == [11]
    assert ids(seq.accept(trade("X", 11))) == []
    assert ids(seq.accept(trade("X", 14))) == []
    assert ids(seq.accept(trade("X", 13))) == []
    assert seq.gap("X") == Gap("X", 12, 12)
    assert ids(seq.accept(trade("X", 14))) == []
    assert ids(seq.accept(trade("X", 12))) == [12, 13, 14]
    assert seq.gap("X") is None
    assert seq.duplicates["X"] == 2
    assert ids(seq.accept(trade("Y", 5))) == [5], "symbols are independent"


def test_sequencer_give_up_releases_what_waits_behind_the_gap():
    seq = AggregateIdSequencer()
    seq.accept(trade("X", 1))
    for agg_id in (5, 6, 9):
        seq.accept(trade("X", agg_id))
    assert seq.gap("X") == Gap("X", 2, 4)
    assert ids(seq.give_up("X", 4)) == [5, 6]
    assert seq.gap("X") == Gap("X", 7, 8)
    assert ids(seq.accept(trade("X", 3))) == [], "a lost id arriving late is not published out of order"


def test_a_gap_is_bounded_by_the_times_of_the_trades_around_it():
    """A venue whose REST pages by time (Coinbase) asks for the span between the last trade released
    and the first held one."""
    seq = AggregateIdSequencer()

    def at(agg_id: int, ms: int) -> Trade:
        return Trade("X", agg_id, 1.0, 1.0, agg_id, agg_id, ms, ms, False, ms)

    seq.accept(at(1, 1_000))
    seq.accept(at(2, 2_000))
    seq.accept(at(6, 6_000))
    seq.accept(at(5, 5_000))
    assert seq.gap("X") == Gap("X", 3, 4) and seq.gap_times("X") == (2_000, 5_000)
    seq.accept(at(3, 3_000))
    assert seq.gap_times("X") == (3_000, 5_000)
