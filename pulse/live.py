"""`pulse live`: the whole pipeline on this machine against the real exchange, until Ctrl-C.

The plan: the live Binance source (symbols already resolved by the CLI,
`pulse.source.binance.live.market_symbols`) through the producer, the Spark job and ClickHouse
(the embedded broker and chDB unless settings name others), until a stop request. Then the producer
drains, Spark stores the last trades, and everything stops; the windows stay for `pulse sql`.

A run that cannot start streaming ends at once instead of retrying forever as the service does
(`fail_fast`): Binance refusing the connection (HTTP 451 from restricted regions, 403, 429) before
any connection opened, or no connection opening at all (`BinanceSource.fatal`).
"""

from __future__ import annotations

from collections.abc import Callable

from pulse.dashboard import DashboardObserver, WarningCount
from pulse.runtime import Plan, StopSignal, Until, run
from pulse.settings import PulseSettings
from pulse.source.binance.live import BinanceSource
from pulse.summary import RunSummary, summary_of


def live_plan(settings: PulseSettings) -> Plan:
    # /metrics on any free port: a live run beside the docker stack must not collide with its producer.
    # Its stop waits for Spark to store the last trades, which shows at a batch end: short batches.
    settings = settings.override(producer={"metrics_port": 0}).short_batches()
    if not settings.kafka.bootstrap_servers:
        # The embedded broker's topic holds only this data directory's runs, and a new checkpoint
        # must not skip the trades published before Spark's first trigger ("latest" would).
        settings = settings.override(spark={"starting_offsets": "earliest"})
    source = BinanceSource(settings.producer)
    symbols, streams = len(source.symbols), len(source.streams)
    label = (f"streaming {symbols} symbol{'s' if symbols != 1 else ''} from Binance {source.market.title} over"
             f" {streams} connection{'s' if streams != 1 else ''}; Ctrl-C stops")
    return Plan(settings, source, label=label, compute=True, until=Until.STOPPED, finish_s=60, fail_fast=True)


def run_live(settings: PulseSettings, say: Callable[[str], None], stop: StopSignal, dashboard: bool = True,
             warnings: WarningCount | None = None) -> RunSummary:
    """Stream `settings.producer.symbols` (already resolved) until `stop` is set; the run's summary."""
    plan = live_plan(settings)
    source = plan.source
    assert isinstance(source, BinanceSource)
    market = source.market.title
    observer = DashboardObserver(say, f"Pulse live · Binance {market} · {len(source.symbols)} symbols", live=True,
                                 symbols=source.symbols, warnings=warnings, show=dashboard)
    outcome = run(plan, observer, stop)
    return summary_of(outcome, "live", f"Binance {market}", plan.settings.data_dir)
