"""`pulse live`: the whole pipeline on this machine against the real exchange, until Ctrl-C.

The plan: the live source of the venue settings name (Binance's markets, symbols already
resolved by the CLI, `pulse.source.binance.live.market_symbols`; OKX, Coinbase, Bybit:
`pulse.source.venue_live`) through the producer, the Spark job and ClickHouse
(the embedded broker and chDB unless settings name others), until a stop request. Then the producer
drains, Spark stores the last trades, and everything stops; the windows stay for `pulse sql`.

Several venues at once (`--symbols okx:BTC-USDT,coinbase:BTC-USD`) run their live sources side by
side into the one producer (`pulse.source.fan_in`): one Spark job windows each (venue, symbol), and
the dashboard groups them by asset.

A run that cannot start streaming ends at once instead of retrying forever as the service does
(`fail_fast`): the venue refusing the connection (Binance: HTTP 451 from restricted regions, 403,
429) before any connection opened, or no connection opening at all (`Source.fatal`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pulse.dashboard import DashboardObserver, WarningCount
from pulse.runtime import Plan, StopSignal, Until, run
from pulse.settings import ProducerSettings, PulseSettings
from pulse.source.base import Source
from pulse.source.binance.live import BinanceSource
from pulse.source.fan_in import FanInSource
from pulse.source.venue_live import VenueSource, live_source
from pulse.source.venues import VENUES, Venue
from pulse.summary import RunSummary, summary_of


def live_plan(settings: PulseSettings, also: Sequence[ProducerSettings] = ()) -> Plan:
    """`also`: further venues' producer settings, each streamed beside `settings.producer`'s."""
    # /metrics on any free port: a live run beside the docker stack must not collide with its producer.
    # Its stop waits for Spark to store the last trades, which shows at a batch end: short batches.
    settings = settings.override(producer={"metrics_port": 0}).short_batches()
    if not settings.kafka.bootstrap_servers:
        # The embedded broker's topic holds only this data directory's runs, and a new checkpoint
        # must not skip the trades published before Spark's first trigger ("latest" would).
        settings = settings.override(spark={"starting_offsets": "earliest"})
    feeds = [_live(producer) for producer in (settings.producer, *also)]
    source: Source = feeds[0] if len(feeds) == 1 else FanInSource(
        feeds, [_venue(feed).name for feed in feeds], [_where(feed) for feed in feeds])
    symbols, streams = len(source.symbols), sum(len(feed.streams) for feed in feeds)
    label = (f"streaming {symbols} symbol{'s' if symbols != 1 else ''} from {_where(source)} over"
             f" {streams} connection{'s' if streams != 1 else ''}; Ctrl-C stops")
    return Plan(settings, source, label=label, compute=True, until=Until.STOPPED, finish_s=60, fail_fast=True)


def _live(producer: ProducerSettings) -> BinanceSource | VenueSource:
    source = live_source(producer)
    assert isinstance(source, BinanceSource | VenueSource)
    return source


def run_live(settings: PulseSettings, say: Callable[[str], None], stop: StopSignal, dashboard: bool = True,
             warnings: WarningCount | None = None, also: Sequence[ProducerSettings] = ()) -> RunSummary:
    """Stream `settings.producer.symbols` (already resolved), and `also`'s venues beside them, until
    `stop` is set; the run's summary."""
    plan = live_plan(settings, also)
    source = plan.source
    assert source is not None
    where = _where(source)
    observer = DashboardObserver(say, f"Pulse live · {where} · {len(source.symbols)} symbols", live=True,
                                 symbols=source.symbols, warnings=warnings, show=dashboard,
                                 by_venue=isinstance(source, FanInSource))
    outcome = run(plan, observer, stop)
    return summary_of(outcome, "live", where, plan.settings.data_dir)


def _venue(source: BinanceSource | VenueSource) -> Venue:
    return VENUES[source.venue] if isinstance(source, BinanceSource) else source.venue


def _where(source: Source) -> str:
    if isinstance(source, FanInSource):
        return " + ".join(source.titles)
    assert isinstance(source, BinanceSource | VenueSource)
    return _venue(source).title
