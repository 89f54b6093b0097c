"""The `pulse` command line: the one entry point that reads settings and passes them inward."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pulse.settings import PulseSettings


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
    produce.add_argument("--market", choices=["usdm", "spot"], default=None,
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
        settings = settings.model_copy(update={"data_dir": args.data_dir})
    return settings


def _say(message: str) -> None:
    print(message, flush=True)


def _run_demo(args: argparse.Namespace, settings: PulseSettings) -> int:
    from pulse.demo import BUNDLED_RECORDING, run_demo  # noqa: PLC0415 - keeps `pulse sql` light

    summary = run_demo(settings, args.input or BUNDLED_RECORDING, args.symbol, args.speed, _say,
                       live_view=not args.no_live_view)
    _say(summary.render())
    return 0


_SPOT = {"ws_base_url": "wss://stream.binance.com:9443/stream", "rest_base_url": "https://api.binance.com",
         "rest_agg_trades_path": "/api/v3/aggTrades"}


def _run_produce(args: argparse.Namespace, settings: PulseSettings) -> int:
    import asyncio  # noqa: PLC0415
    import signal  # noqa: PLC0415

    from pulse.broker.local_kafka import LocalKafkaBroker  # noqa: PLC0415
    from pulse.producer import SourceChoice, serve_producer  # noqa: PLC0415
    from pulse.producer_metrics import configure_json_logging  # noqa: PLC0415

    updates: dict[str, object] = dict(_SPOT) if args.market == "spot" else {}
    if args.symbols:
        updates["symbols"] = args.symbols
    if args.metrics_port is not None:
        updates["metrics_port"] = args.metrics_port
    producer_settings = type(settings.producer).model_validate({**settings.producer.model_dump(), **updates})
    settings = settings.model_copy(update={"producer": producer_settings})
    source = SourceChoice(kind=args.source, input=args.input, symbol=args.symbol, speed=args.speed,
                          rate_per_s=args.rate, total=args.total)
    configure_json_logging()
    bootstrap = args.bootstrap_servers or settings.kafka.bootstrap_servers
    broker = None if bootstrap else LocalKafkaBroker(settings.jars_dir, settings.data_dir)

    async def produce() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        service = await serve_producer(settings, bootstrap or broker.bootstrap, source, stop)  # type: ignore[union-attr]
        counters, stats = service.router.counters, service.publisher.stats if service.publisher else None
        _say(f"stopped: {counters.frames} frames, {counters.trades} trades, {counters.invalid} invalid, "
             f"{stats.published if stats else 0} published, {sum(service.queue.dropped.values())} dropped")

    try:
        if broker is not None:
            broker.start()
        asyncio.run(produce())
    finally:
        if broker is not None:
            broker.stop()
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
    import signal  # noqa: PLC0415
    import threading  # noqa: PLC0415

    from pulse.compute.service import run_processor  # noqa: PLC0415 - keeps `pulse sql` light

    kafka = settings.kafka.model_copy(update={
        k: v for k, v in {"bootstrap_servers": args.bootstrap_servers, "trades_topic": args.topic}.items()
        if v is not None})
    spark = settings.spark
    if args.starting_offsets is not None:
        spark = spark.model_copy(update={"starting_offsets": args.starting_offsets})
    settings = settings.model_copy(update={"kafka": kafka, "spark": spark})
    if not kafka.bootstrap_servers:
        _say("no Kafka to read from: set PULSE_KAFKA__BOOTSTRAP_SERVERS or pass --bootstrap-servers")
        return 2
    stop = threading.Event()

    def _request_stop(signum: int, _frame: object) -> None:
        _say(f"received {signal.Signals(signum).name}: stopping the queries")
        stop.set()

    signal.signal(signal.SIGINT, _request_stop)
    signal.signal(signal.SIGTERM, _request_stop)
    run_processor(settings, kafka.bootstrap_servers, stop, _say, until_idle_s=args.until_idle,
                  create_schema=settings.clickhouse.transport == "chdb" or args.apply_schema)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    settings = _settings_for(args)
    handlers = {"demo": _run_demo, "produce": _run_produce, "sql": _run_sql, "process": _run_process}
    try:
        return handlers[args.command](args, settings)
    except KeyboardInterrupt:
        _say("interrupted: everything was stopped")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
