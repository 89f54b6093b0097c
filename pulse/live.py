"""`pulse live`: the whole pipeline on this machine against the real exchange, until Ctrl-C.

The plan: the live source of the venue settings name (Binance's markets, symbols already
resolved by the CLI, `pulse.source.binance.live.market_symbols`; OKX, Coinbase, Bybit:
`pulse.source.venue_live`) through the producer, the Spark job and ClickHouse
(the embedded broker and chDB unless settings name others), until a stop request. Then the producer
drains, Spark stores the last trades, and everything stops; the windows stay for `pulse sql`.

A run that cannot start streaming ends at once instead of retrying forever as the service does
(`fail_fast`): the venue refusing the connection (Binance: HTTP 451 from restricted regions, 403,
429) before any connection opened, or no connection opening at all (`Source.fatal`).
"""

from __future__ import annotations

from collections.abc import Callable

from pulse.dashboard import DashboardObserver, WarningCount
from pulse.runtime import Plan, StopSignal, Until, run
from pulse.settings import PulseSettings
from pulse.source.base import Source
from pulse.source.binance.live import BinanceSource
from pulse.source.venue_live import VenueSource, live_source
from pulse.source.venues import VENUES
from pulse.summary import RunSummary, summary_of


def live_plan(settings: PulseSettings) -> Plan:
    # /metrics on any free port: a live run beside the docker stack must not collide with its producer.
    # Its stop waits for Spark to store the last trades, which shows at a batch end: short batches.
    settings = settings.override(producer={"metrics_port": 0}).short_batches()
    if not settings.kafka.bootstrap_servers:
        # The embedded broker's topic holds only this data directory's runs, and a new checkpoint
        # must not skip the trades published before Spark's first trigger ("latest" would).
        settings = settings.override(spark={"starting_offsets": "earliest"})
    source = live_source(settings.producer)
    assert isinstance(source, BinanceSource | VenueSource)
    symbols, streams = len(source.symbols), len(source.streams)
    label = (f"streaming {symbols} symbol{'s' if symbols != 1 else ''} from {_where(source)} over"
             f" {streams} connection{'s' if streams != 1 else ''}; Ctrl-C stops")
    return Plan(settings, source, label=label, compute=True, until=Until.STOPPED, finish_s=60, fail_fast=True)


def run_live(settings: PulseSettings, say: Callable[[str], None], stop: StopSignal, dashboard: bool = True,
             warnings: WarningCount | None = None) -> RunSummary:
    """Stream `settings.producer.symbols` (already resolved) until `stop` is set; the run's summary."""
    plan = live_plan(settings)
    source = plan.source
    assert source is not None
    where = _where(source)
    observer = DashboardObserver(say, f"Pulse live · {where} · {len(source.symbols)} symbols", live=True,
                                 symbols=source.symbols, warnings=warnings, show=dashboard)
    outcome = run(plan, observer, stop)
    return summary_of(outcome, "live", where, plan.settings.data_dir)


def _where(source: Source) -> str:
    if isinstance(source, BinanceSource):
        return VENUES[source.venue].title
    assert isinstance(source, VenueSource)
    return source.venue.title
