"""The `pulse` command line: the one entry point that reads settings and passes them inward."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pulse.settings import PulseSettings

if TYPE_CHECKING:
    from pulse.source.base import Source


class UsageError(Exception):
    """A command line that cannot work as given: exit 2 with one line saying what to change."""


def _speed(value: str) -> float | None:
    if value.lower() == "max":
        return None
    speed = float(value)
    if speed <= 0:
        raise argparse.ArgumentTypeError("speed must be > 0, or 'max'")
    return speed


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pulse", description="Pulse: live crypto trading signals.")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="run the whole pipeline locally on a recording")
    demo.add_argument("--input", type=Path, default=None,
                      help="recording to replay (.raw/.jsonl frames or archive .csv); default: bundled USD-M recording")
    demo.add_argument("--symbol", default=None, help="symbol for recordings that carry none (archive CSV)")
    demo.add_argument("--speed", type=_speed, default=10.0, help="multiple of the recorded pace, or 'max' (default 10)")
    demo.add_argument("--data-dir", type=Path, default=None, help="where broker, checkpoints and results live")
    demo.add_argument("--no-live-view", action="store_true", help="print only progress and the summary")

    produce = commands.add_parser("produce", help="run the producer: Binance (or a replay, or synthetic) -> Kafka")
    produce.add_argument("--symbols", default=None, help="comma-separated, e.g. BTCUSDT,ETHUSDT (default: settings)")
    produce.add_argument("--source", choices=["live", "replay", "synthetic"], default="live")
    produce.add_argument("--market", choices=["usdm", "spot", "coinm"], default=None,
                         help="Binance market of the live source (default: settings, USD-M futures)")
    produce.add_argument("--input", type=Path, default=None, help="recording for --source replay")
    produce.add_argument("--symbol", default=None, help="symbol for recordings that carry none (archive CSV)")
    produce.add_argument("--speed", type=_speed, default=None,
                         help="replay pace: multiple of the recorded pace, or 'max' (default)")
    produce.add_argument("--rate", type=float, default=1000.0, help="synthetic trades per second (default 1000)")
    produce.add_argument("--total", type=int, default=None, help="synthetic: stop after this many trades")
    produce.add_argument("--bootstrap-servers", default=None,
                         help="Kafka (default: settings; none there starts the embedded broker)")
    produce.add_argument("--metrics-port", type=int, default=None, help="Prometheus /metrics and /health port")
    produce.add_argument("--data-dir", type=Path, default=None, help="where the embedded broker keeps its data")

    sql = commands.add_parser("sql", help="query the results of a run (chDB store in the data directory)")
    sql.add_argument("query", help='e.g. "SELECT symbol, count() FROM pulse_metrics GROUP BY symbol"')
    sql.add_argument("--data-dir", type=Path, default=None)
    sql.add_argument("--format", choices=["CSV", "pretty", "TSV", "JSONEachRow"], default="pretty")

    process = commands.add_parser("process", help="run the Spark processor headless until SIGINT/SIGTERM")
    process.add_argument("--bootstrap-servers", default=None,
                         help="Kafka bootstrap servers (default: PULSE_KAFKA__BOOTSTRAP_SERVERS)")
    process.add_argument("--topic", default=None, help="trades topic (default: PULSE_KAFKA__TRADES_TOPIC)")
    process.add_argument("--starting-offsets", choices=["earliest", "latest"], default=None,
                         help="where a new checkpoint starts (default: PULSE_SPARK__STARTING_OFFSETS, latest)")
    process.add_argument("--data-dir", type=Path, default=None, help="checkpoints and the chDB store live here")
    process.add_argument("--until-idle", type=float, default=None, metavar="SECONDS",
                         help="stop once the topic is fully processed and no new data came for SECONDS")
    process.add_argument("--apply-schema", action="store_true",
                         help="create the tables over HTTP too (chDB stores always get them)")
    return parser


def _settings_for(args: argparse.Namespace) -> PulseSettings:
    settings = PulseSettings()
    if getattr(args, "data_dir", None) is not None:
        settings = settings.override(data_dir=args.data_dir)
    return settings


def _given(**values: object) -> dict[str, object]:
    """The options the user gave (argparse leaves the others None)."""
    return {key: value for key, value in values.items() if value is not None}


def _say(message: str) -> None:
    print(message, flush=True)


def _stop_on_signals() -> threading.Event:
    """SIGINT and SIGTERM ask the pipeline to stop; it then drains, flushes and releases everything."""
    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        _say(f"received {signal.Signals(signum).name}: stopping")
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    return stop


def _run_demo(args: argparse.Namespace, settings: PulseSettings) -> int:
    from pulse.demo import BUNDLED_RECORDING, run_demo  # noqa: PLC0415 - keeps `pulse sql` light

    summary = run_demo(settings, args.input or BUNDLED_RECORDING, args.symbol, args.speed, _say,
                       live_view=not args.no_live_view)
    _say(summary.render())
    return 0


def _source(args: argparse.Namespace, settings: PulseSettings) -> Source:
    from pulse.source.binance.live import BinanceSource  # noqa: PLC0415
    from pulse.source.replay import ReplaySource  # noqa: PLC0415
    from pulse.source.synthetic import SyntheticSource  # noqa: PLC0415

    if args.source == "replay":
        if args.input is None:
            raise UsageError("--source replay needs --input FILE")
        return ReplaySource(args.input, args.symbol, args.speed)
    if args.source == "synthetic":
        return SyntheticSource(settings.producer.symbols, args.rate, args.total)
    return BinanceSource(settings.producer)


def _run_produce(args: argparse.Namespace, settings: PulseSettings) -> int:
    from pulse.pipeline import Pipeline  # noqa: PLC0415
    from pulse.telemetry import configure_json_logging  # noqa: PLC0415

    settings = settings.override(
        producer=_given(market=args.market, symbols=args.symbols, metrics_port=args.metrics_port),
        kafka=_given(bootstrap_servers=args.bootstrap_servers))
    source = _source(args, settings)
    configure_json_logging()
    stop = _stop_on_signals()
    with Pipeline(settings) as run:
        service = run.produce(source, stop)
    router = service.router
    _say(f"stopped: {router.trades} trades, {router.invalid} invalid, {service.published} published, "
         f"{sum(service.queue.dropped.values())} dropped")
    return 0


def _run_sql(args: argparse.Namespace, settings: PulseSettings) -> int:
    from pulse.storage.clickhouse import ChdbTransport  # noqa: PLC0415

    if not settings.chdb_path.exists():
        _say(f"no results at {settings.chdb_path}: run `pulse demo` first (or pass --data-dir)")
        return 2
    transport = ChdbTransport(settings.chdb_path, settings.clickhouse.database)
    try:
        fmt = "PrettyCompactMonoBlock" if args.format == "pretty" else args.format
        sys.stdout.write(transport.query_text(args.query, fmt))
    finally:
        transport.close()
    return 0


def _run_process(args: argparse.Namespace, settings: PulseSettings) -> int:
    from pulse.pipeline import Pipeline  # noqa: PLC0415 - keeps `pulse sql` light

    settings = settings.override(
        kafka=_given(bootstrap_servers=args.bootstrap_servers, trades_topic=args.topic),
        spark=_given(starting_offsets=args.starting_offsets),
        clickhouse={"apply_schema": True} if args.apply_schema else {})
    if not settings.kafka.bootstrap_servers:
        _say("no Kafka to read from: set PULSE_KAFKA__BOOTSTRAP_SERVERS or pass --bootstrap-servers")
        return 2
    stop = _stop_on_signals()
    spark = settings.spark
    with Pipeline(settings, _say) as run:
        queries = run.start_job()
        port = run.serve_job_health()
        _say(f"processing {settings.kafka.trades_topic} on {settings.kafka.bootstrap_servers}: trigger "
             f"{spark.trigger_ms} ms, watermark {spark.watermark_s:g} s, starting offsets {spark.starting_offsets}, "
             f"checkpoints {settings.checkpoint_dir}; health on {spark.health_host}:{port}/health")
        if args.until_idle is None:
            while not stop.wait(0.5):
                queries.raise_if_failed()
        elif run.wait_idle(args.until_idle, stop):
            _say(f"topic consumed and idle for {args.until_idle:g} s: stopping")
        queries.raise_if_failed()
    _say("stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    settings = _settings_for(args)
    handlers = {"demo": _run_demo, "produce": _run_produce, "sql": _run_sql, "process": _run_process}
    try:
        return handlers[args.command](args, settings)
    except UsageError as error:
        print(f"pulse {args.command}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _say("interrupted: everything was stopped")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
