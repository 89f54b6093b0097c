"""Several live sources as one: a run that watches a market across venues (OKX, Coinbase and
Binance.US on BTC at once) feeds one producer, so one Spark job windows every venue's trades.

Each source keeps its own lifecycle, connections and sequencing; this only runs them side by side
into the same output. A source that fails ends them all (the run says why), and a refusal of any
venue before it ever connected is the run's `fatal`: the user named that venue, so a run that
quietly lacks it would mislead.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence

from pulse.errors import PulseError
from pulse.source.base import Output, Source, run_side_by_side
from pulse.telemetry import Telemetry


def summed(parts: Sequence[Telemetry]) -> Telemetry:
    """Counters and gauges of the same name added up: the same kind of number from different venues.
    Live sources export no histograms."""
    counters: Counter[str] = Counter()
    gauges: Counter[str] = Counter()
    labelled: dict[tuple[str, str], Counter[str]] = {}
    for part in parts:
        assert not part.histograms, "a live source exported a histogram: fan-in cannot add those up"
        counters.update(part.counters)
        gauges.update(part.gauges)
        for name, values in part.labelled_counters.items():
            labelled.setdefault(name, Counter()).update(values)
    return Telemetry(counters=dict(counters), labelled_counters={k: dict(v) for k, v in labelled.items()},
                     gauges=dict(gauges))


class FanInSource:
    """Live sources of several venues, run together into one output."""

    def __init__(self, sources: Sequence[Source], venues: Sequence[str], titles: Sequence[str]) -> None:
        assert len(sources) == len(venues) == len(titles) >= 2
        self.sources, self.titles = list(sources), list(titles)
        self.name = "+".join(source.name for source in sources)
        # As `pulse live --symbols` takes them: `venue:symbol`.
        self.symbols = [f"{venue}:{symbol}" for source, venue in zip(sources, venues, strict=True)
                        for symbol in source.symbols]

    async def setup(self) -> None:
        for source in self.sources:
            await source.setup()

    async def run(self, out: Output, stop: asyncio.Event) -> None:
        await run_side_by_side([source.run(out, stop) for source in self.sources], stop)

    async def stop(self) -> None:
        for source in self.sources:
            await source.stop()

    def connected(self) -> bool:
        return all(source.connected() for source in self.sources)

    def problem(self) -> str | None:
        return next((f"{title}: {problem}" for source, title in zip(self.sources, self.titles, strict=True)
                     if (problem := source.problem()) is not None), None)

    def fatal(self) -> PulseError | None:
        return next((error for source in self.sources if (error := source.fatal()) is not None), None)

    def telemetry(self) -> Telemetry:
        return summed([source.telemetry() for source in self.sources])
