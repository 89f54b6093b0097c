"""The `pulse` command line: the one entry point that reads settings and passes them inward.

It turns arguments into settings, checks what a user can get wrong before any JVM starts (files,
symbols, Java and the jars, a named Kafka), chooses what to run, and prints what went wrong as
one line on stderr: Pulse's errors carry their exit code and line (pulse.errors: 2 for usage, 1 for
everything else), a traceback only with `--debug` (or PULSE_DEBUG=1). Heavy modules (Spark, chDB, rich) are imported
by the handlers that need them only: the docker images run `pulse produce` and `pulse process`
without some of them (tests/stack/test_images.py reads these imports).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import shutil
import socket
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, cast, get_args

from aiokafka.errors import KafkaError
from pydantic import ValidationError

from pulse.errors import PulseError, Unavailable, UsageError, first_line
from pulse.model import PAIR_RULE, SYMBOL_RULE, TRADE_SYMBOL_PATTERN
from pulse.settings import MarketName, PulseSettings, VenueName

if TYPE_CHECKING:
    from pulse.dashboard import WarningCount
    from pulse.source.base import Source

log = logging.getLogger(__name__)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse prints the whole usage block; one line says the same and where the help is.
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _speed(value: str) -> float | None:
    if value.lower() == "max":
        return None
    try:
        speed = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"speed must be a number > 0, or 'max' (got {value!r})") from None
    if speed <= 0:
        raise argparse.ArgumentTypeError("speed must be > 0, or 'max'")
    return speed


def _venue_arguments(parser: argparse.ArgumentParser, instruments: bool = True) -> None:
    parser.add_argument("--venue", choices=get_args(VenueName), default=None,
                        help="where the trades come from (default: binance-usdm, or the --market given;"
                             " docs/venues.md)")
    if instruments:
        parser.add_argument("--instruments", type=Path, default=None,
                            help="okx and binance-coinm replays: a recorded GET /api/v5/public/instruments or"
                                 " /dapi/v1/exchangeInfo reply, for the contract values of swaps and futures")


def _venue_options(venue: str | None, market: str | None) -> dict[str, object]:
    """The producer settings `--venue` and `--market` give: `--venue binance-X` is `--market X`."""
    if venue is None:
        return _given(market=market)
    named = venue.removeprefix("binance-") if venue.startswith("binance-") else None
    if market is not None and market != named:
        raise UsageError(f"--venue {venue} and --market {market} disagree: give one of them")
    return _given(venue=venue, market=named)


def _build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the traceback of an error (or PULSE_DEBUG=1)")
    parser = _Parser(prog="pulse", description="Pulse: live crypto trading signals.", parents=[common])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    demo = commands.add_parser("demo", help="run the whole pipeline locally on a recording", parents=[common])
    demo.add_argument("--input", type=Path, default=None,
                      help="recording to replay (.raw/.jsonl frames or archive .csv); default: bundled USD-M recording")
    demo.add_argument("--symbol", default=None, help="symbol for recordings that carry none (archive CSV)")
    _venue_arguments(demo)
    demo.add_argument("--speed", type=_speed, default=10.0, help="multiple of the recorded pace, or 'max' (default 10)")
    demo.add_argument("--data-dir", type=Path, default=None, help="where broker, checkpoints, results and logs live")
    demo.add_argument("--no-live-view", action="store_true", help="print only progress and the summary")

    live = commands.add_parser("live", help="the whole pipeline locally on live Binance trades, until Ctrl-C",
                               parents=[common])
    live.add_argument("--symbols", default=None,
                      help="comma-separated symbols in the venue's names (Binance BTCUSDT,ETHUSDT; BTCUSDT_260327;"
                           " BTCUSD_PERP on COIN-M; OKX BTC-USDT-SWAP; Coinbase BTC-USD; Kraken BTC/USD), or 'all'"
                           " for every trading symbol of a Binance market (default: settings, BTCUSDT)")
    live.add_argument("--market", choices=get_args(MarketName), default=None,
                      help="Binance market (default: settings, usdm = USD-M futures)")
    _venue_arguments(live, instruments=False)
    live.add_argument("--data-dir", type=Path, default=None, help="where broker, checkpoints, results and logs live")
    live.add_argument("--no-live-view", action="store_true", help="print progress lines instead of the dashboard")

    produce = commands.add_parser("produce", help="run the producer: Binance (or a replay, or synthetic) -> Kafka",
                                  parents=[common])
    produce.add_argument("--symbols", default=None,
                         help="comma-separated, e.g. BTCUSDT,ETHUSDT, or 'all' (default: settings)")
    produce.add_argument("--source", choices=["live", "replay", "synthetic"], default="live")
    produce.add_argument("--market", choices=get_args(MarketName), default=None,
                         help="Binance market of the live source (default: settings, USD-M futures)")
    produce.add_argument("--input", type=Path, default=None, help="recording for --source replay")
    produce.add_argument("--symbol", default=None, help="symbol for recordings that carry none (archive CSV)")
    _venue_arguments(produce)
    produce.add_argument("--speed", type=_speed, default=None,
                         help="replay pace: multiple of the recorded pace, or 'max' (default)")
    produce.add_argument("--rate", type=float, default=1000.0, help="synthetic trades per second (default 1000)")
    produce.add_argument("--total", type=int, default=None, help="synthetic: stop after this many trades")
    produce.add_argument("--bootstrap-servers", default=None,
                         help="Kafka (default: settings; none there starts the embedded broker)")
    produce.add_argument("--metrics-port", type=int, default=None, help="Prometheus /metrics and /health port")
    produce.add_argument("--data-dir", type=Path, default=None, help="where the embedded broker keeps its data")

    sql = commands.add_parser("sql", help="query the results of a run (the chDB store in the data directory, or the"
                              " ClickHouse server PULSE_CLICKHOUSE__TRANSPORT=http names)",
                              parents=[common])
    sql.add_argument("query", help='e.g. "SELECT symbol, count() FROM pulse_metrics GROUP BY symbol"')
    sql.add_argument("--data-dir", type=Path, default=None)
    sql.add_argument("--format", choices=["CSV", "pretty", "TSV", "JSONEachRow"], default="pretty")

    process = commands.add_parser("process", help="run the Spark processor headless until SIGINT/SIGTERM",
                                  parents=[common])
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
    store = commands.add_parser("store", help="run the store writer headless (Real-Time Mode's job output ->"
                                " ClickHouse) until SIGINT/SIGTERM", parents=[common])
    store.add_argument("--bootstrap-servers", default=None,
                       help="Kafka bootstrap servers (default: PULSE_KAFKA__BOOTSTRAP_SERVERS)")
    store.add_argument("--data-dir", type=Path, default=None, help="the chDB store lives here (chDB transport)")
    store.add_argument("--apply-schema", action="store_true",
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


# -- what a user can get wrong, checked before anything starts ------------------------------------

_SNIFF_LINES = 5000


def _check_recording(path: Path, symbol: str | None) -> None:
    """The file exists, can be read, and holds lines a replay reads; else a usage error saying so."""
    if not path.exists():
        raise UsageError(f"no file at {path}: check the path given to --input")
    if path.is_dir():
        raise UsageError(f"{path} is a folder: pass one recording file to --input")
    try:
        with path.open("rb") as handle:
            head = handle.read(4096)
            handle.seek(0)
            lines = [handle.readline() for _ in range(_SNIFF_LINES)]
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error.strerror}") from None
    if head.startswith(b"PK\x03\x04"):
        raise UsageError(f"{path} is a zip archive: unzip it and pass the CSV inside to --input")
    if head.startswith(b"\x1f\x8b"):
        raise UsageError(f"{path} is gzip-compressed: gunzip it and pass the result to --input")
    if b"\x00" in head:
        raise UsageError(f"{path} is not a text file: --input takes aggTrade JSON frames or Binance archive CSV")
    kinds = {_line_kind(line.decode("utf-8", "replace")) for line in lines if line}
    if "csv" in kinds and not symbol:
        raise UsageError(f"{path} holds archive CSV rows, which carry no symbol: pass --symbol (e.g. BTCUSDT)")
    if not kinds & {"json", "csv"}:
        raise UsageError(f"{path} is in no format Pulse reads: --input takes aggTrade JSON frames (one per line,"
                         " bare or in the combined-stream envelope) or Binance archive CSV")


def _line_kind(line: str) -> str:
    text = line.strip()
    head, _, rest = text.partition(": ")
    if rest and head.replace(".", "", 1).isdigit():  # cryptofeed's `<unix seconds>: ` prefix
        text = rest
    if text.startswith("{"):
        return "json"
    if text[:1].isdigit() and "," in text:
        return "csv"
    return "other"


def _symbols_arg(value: str, venue: str | None) -> list[str]:
    from pulse.source.binance.wire import is_symbol  # noqa: PLC0415

    symbols = [part.strip().upper() for part in value.split(",") if part.strip()]
    if not symbols:
        raise UsageError("--symbols needs at least one symbol, e.g. BTCUSDT,ETHUSDT, or 'all'")
    if symbols == ["ALL"]:
        return symbols
    if venue is None or venue.startswith("binance-"):
        wrong = [symbol for symbol in symbols if not is_symbol(symbol)]
        if wrong:
            raise UsageError(f"{', '.join(wrong)}: not spelled as Binance spells symbols"
                             " (A-Z 0-9 _ . -, e.g. BTCUSDT, BTCUSDT_260327, BTCUSD_PERP)")
        return symbols  # Binance's spelling is narrower than what a trade may carry
    # Other venues' names are checked by their own listing, if at all: here only what a trade may carry.
    wrong = [symbol for symbol in symbols if not re.match(TRADE_SYMBOL_PATTERN, symbol)]
    if wrong:
        raise UsageError(f"{', '.join(wrong)}: neither {SYMBOL_RULE} nor {PAIR_RULE}, e.g. BTC-USDT, BTC/USD")
    return symbols


def _symbols_by_venue(value: str, venue: VenueName | None) -> dict[VenueName | None, list[str]]:
    """`--symbols` split by the venue each names (`okx:BTC-USDT,coinbase:BTC-USD`, as traders' tools
    write markets), each part checked as that venue spells symbols; one without `venue:` is
    `venue`'s (None: Binance's market of the settings)."""
    groups: dict[VenueName | None, list[str]] = {}
    for part in (p.strip() for p in value.split(",")):
        named, colon, symbol = part.rpartition(":")
        where = named.strip().lower() if colon else venue
        if colon and where not in get_args(VenueName):
            raise UsageError(f"{part}: {where or 'nothing'} is not a venue (one of {', '.join(get_args(VenueName))})")
        groups.setdefault(cast(VenueName | None, where), []).append(symbol)
    return {where: _symbols_arg(",".join(symbols), where) for where, symbols in groups.items()}


def _resolve_symbols(settings: PulseSettings) -> PulseSettings:
    """Binance's symbols checked against the market's exchangeInfo ('all' listed), before any JVM
    starts. Other venues take symbols as given (their sources refuse 'all')."""
    import asyncio  # noqa: PLC0415

    from pulse.source.binance.live import market_symbols  # noqa: PLC0415

    venue = settings.producer.venue
    if venue is not None and not venue.startswith("binance-"):
        return settings

    symbols = asyncio.run(market_symbols(settings.producer, settings.producer.symbols))
    return settings.override(producer={"symbols": symbols})


def _check_jvm(settings: PulseSettings, broker: bool, spark: bool) -> None:
    """Java on PATH and the pinned jars from `make setup`, for the JVMs this command starts."""
    if shutil.which("java") is None:
        raise Unavailable("Java was not found on PATH: install Java 17 or newer (the Kafka broker and Spark run"
                          " on it), then run `make setup`")
    folders = ([("Kafka broker", settings.jars_dir / "kafka-broker", "kafka_2.13-*.jar")] if broker else []) + (
        [("Spark Kafka connector", settings.jars_dir / "spark-kafka", "spark-sql-kafka-0-10*.jar")] if spark else [])
    for what, folder, pattern in folders:
        if not any(folder.glob(pattern)):
            maven = "" if shutil.which("mvn") else " (it fetches them with Maven, which is not installed: install it)"
            raise Unavailable(f"the {what} jars are not in {folder}: run `make setup`{maven},"
                              " or point PULSE_JARS_DIR at a copy")


def _check_kafka(bootstrap: str) -> None:
    """A named Kafka answers on at least one of its addresses; else nothing would ever be written."""
    problems = []
    for address in bootstrap.split(","):
        host, _, port = address.strip().rpartition(":")
        try:
            with socket.create_connection((host.strip("[]") or "localhost", int(port)), timeout=3):
                return
        except (OSError, ValueError) as error:
            problems.append(f"{address.strip()}: {getattr(error, 'strerror', None) or error}")
    raise Unavailable(f"cannot reach Kafka at {'; '.join(problems)}: start it, or fix --bootstrap-servers"
                      " / PULSE_KAFKA__BOOTSTRAP_SERVERS")


# -- logs: files under the data directory, the terminal for Pulse's own lines -------------------

def _log_to_files(settings: PulseSettings) -> WarningCount:
    """Every Python log record (Pulse's, py4j's, asyncio's) to `<data_dir>/logs/pulse.log` as JSON lines;
    the dashboard shows how many warnings there were and where, not the warnings themselves."""
    from pulse.dashboard import WarningCount  # noqa: PLC0415
    from pulse.telemetry import JsonLogFormatter  # noqa: PLC0415

    logs = settings.data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    path = logs / "pulse.log"
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(JsonLogFormatter())
    counter = WarningCount(path)
    root = logging.getLogger()
    root.handlers[:] = [handler, counter]
    root.setLevel(logging.INFO)
    logging.getLogger("py4j").setLevel(logging.WARNING)
    # An exception on a thread of ours (or Spark's callback thread) goes to the file, not the screen.
    threading.excepthook = lambda hook: log.error("thread %s failed", getattr(hook.thread, "name", "?"),
                                                  exc_info=hook.exc_value)
    return counter


# -- the commands --------------------------------------------------------------------------------

def _run_demo(args: argparse.Namespace, settings: PulseSettings) -> int:
    from pulse.demo import BUNDLED_RECORDING, run_demo  # noqa: PLC0415 - keeps `pulse sql` light

    path = args.input or BUNDLED_RECORDING
    _check_recording(path, args.symbol)
    _check_jvm(settings, broker=not settings.kafka.bootstrap_servers, spark=True)
    warnings = _log_to_files(settings)
    summary = run_demo(settings, path, args.symbol, args.speed, _say, live_view=not args.no_live_view,
                       warnings=warnings, venue=args.venue or "binance-usdm", instruments=args.instruments)
    _say(summary.render())
    if summary.problem is not None:
        raise _Failed(summary.problem)
    return 0


def _run_live(args: argparse.Namespace, settings: PulseSettings) -> int:
    settings = settings.override(producer=_venue_options(args.venue, args.market))
    producer = settings.producer
    groups = ({producer.venue: None} if args.symbols is None
              else _symbols_by_venue(args.symbols, producer.venue))
    feeds = [settings.override(producer=producer.for_venue(venue, symbols).model_dump())
             for venue, symbols in groups.items()]
    settings = feeds[0]
    kafka = settings.kafka.bootstrap_servers
    if kafka:
        _check_kafka(kafka)
    _check_jvm(settings, broker=not kafka, spark=True)
    feeds = [_resolve_symbols(feed) for feed in feeds]
    settings = feeds[0]
    from pulse.live import run_live  # noqa: PLC0415 - Spark, chDB and rich only for runs that compute
    from pulse.runtime import stop_on_signals  # noqa: PLC0415

    warnings = _log_to_files(settings)
    summary = run_live(settings, _say, stop_on_signals(), dashboard=not args.no_live_view, warnings=warnings,
                       also=[feed.producer for feed in feeds[1:]])
    _say(summary.render())
    if summary.problem is not None:
        raise _Failed(summary.problem)
    return 0


def _source(args: argparse.Namespace, settings: PulseSettings) -> Source:
    from pulse.source.replay import ReplaySource  # noqa: PLC0415
    from pulse.source.synthetic import SyntheticSource  # noqa: PLC0415
    from pulse.source.venue_live import live_source  # noqa: PLC0415

    if args.source == "replay":
        if args.input is None:
            raise UsageError("--source replay needs --input FILE")
        _check_recording(args.input, args.symbol)
        venue: VenueName = settings.producer.venue or cast(VenueName, f"binance-{settings.producer.market}")
        return ReplaySource(args.input, args.symbol, args.speed, venue, args.instruments)
    if args.source == "synthetic":
        return SyntheticSource(settings.producer.symbols, args.rate, args.total)
    return live_source(settings.producer)


def _run_produce(args: argparse.Namespace, settings: PulseSettings) -> int:
    from pulse.runtime import Plan, Until, run, stop_on_signals  # noqa: PLC0415
    from pulse.telemetry import configure_json_logging  # noqa: PLC0415

    settings = settings.override(
        producer={**_venue_options(args.venue, args.market),
                  **_given(symbols=_symbols_arg(args.symbols, args.venue) if args.symbols else None,
                           metrics_port=args.metrics_port)},
        kafka=_given(bootstrap_servers=args.bootstrap_servers))
    if args.source == "live" and settings.producer.symbols == ["ALL"]:
        settings = _resolve_symbols(settings)
    source = _source(args, settings)
    if settings.kafka.bootstrap_servers:
        _check_kafka(settings.kafka.bootstrap_servers)
    else:
        _check_jvm(settings, broker=True, spark=False)
    configure_json_logging()
    outcome = run(Plan(settings, source, until=Until.SOURCE_ENDED), stop=stop_on_signals(_say))
    service = outcome.producer
    assert service is not None
    router = service.router
    _say(f"stopped: {router.trades} trades, {router.invalid} invalid, {service.published} published, "
         f"{sum(service.queue.dropped.values())} dropped")
    return 0


@contextlib.contextmanager
def _output_discarded() -> Iterator[None]:
    """chDB prints its own error text to stdout when it cannot open a store; Pulse says it in one line."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _run_sql(args: argparse.Namespace, settings: PulseSettings) -> int:
    from pulse.storage.clickhouse import ChdbTransport, ClickHouseTransport, open_transport  # noqa: PLC0415

    # Libraries' warnings (the HTTP client's) would reach the terminal through logging's last resort;
    # what went wrong reaches it as Pulse's one line.
    logging.getLogger().addHandler(logging.NullHandler())
    fmt = "PrettyCompactMonoBlock" if args.format == "pretty" else args.format
    transport: ClickHouseTransport
    if settings.clickhouse.transport == "http":  # the server PULSE_CLICKHOUSE__* names
        transport = open_transport(settings.clickhouse, settings.chdb_path)
        try:
            sys.stdout.write(transport.query_text(args.query, fmt))
        finally:
            transport.close()
        return 0
    if not settings.chdb_path.exists():
        raise UsageError(f"no results at {settings.chdb_path}: run `pulse demo` or `pulse live` first"
                         " (or pass the --data-dir of that run)")
    try:
        with _output_discarded():
            transport = ChdbTransport(settings.chdb_path, settings.clickhouse.database)
    except RuntimeError as error:
        if "Failed to create connection" not in str(error):
            raise
        raise Unavailable(f"the store at {settings.chdb_path} is open in another process (a running `pulse live`"
                          " or `pulse demo`?): query it once that run has stopped") from None
    try:
        sys.stdout.write(transport.query_text(args.query, fmt))
    finally:
        transport.close()
    return 0


def _run_process(args: argparse.Namespace, settings: PulseSettings) -> int:
    from pulse.runtime import Lines, Plan, Running, Until, run, stop_on_signals  # noqa: PLC0415

    settings = settings.override(
        kafka=_given(bootstrap_servers=args.bootstrap_servers, trades_topic=args.topic),
        spark=_given(starting_offsets=args.starting_offsets),
        clickhouse={"apply_schema": True} if args.apply_schema else {})
    if args.until_idle is not None:  # a finite run: its end is seen at a batch end
        settings = settings.short_batches()
    if not settings.kafka.bootstrap_servers:
        raise UsageError("no Kafka to read from: set PULSE_KAFKA__BOOTSTRAP_SERVERS or pass --bootstrap-servers")
    _check_kafka(settings.kafka.bootstrap_servers)
    _check_jvm(settings, broker=False, spark=True)
    spark, lines = settings.spark, Lines(_say, numbered=False)

    def observe(event: Any) -> None:
        lines(event)
        if isinstance(event, Running):
            _say(f"processing {settings.kafka.trades_topic} on {settings.kafka.bootstrap_servers}: watermark"
                 f" {spark.watermark_s:g} s, starting offsets {spark.starting_offsets}, checkpoints"
                 f" {settings.checkpoint_dir}; health on {spark.health_host}:{event.runtime.health_port}/health")

    plan = Plan(settings, compute=True, serve_health=True, until=Until.STOPPED if args.until_idle is None
                else Until.IDLE, idle_s=args.until_idle or 0.0)
    outcome = run(plan, observe, stop_on_signals(_say))
    if outcome.ended == Until.IDLE.value:
        _say(f"topic consumed and idle for {args.until_idle:g} s: stopped")
    else:
        _say("stopped")
    return 0


def _run_store(args: argparse.Namespace, settings: PulseSettings) -> int:
    from pulse.runtime import Lines, Plan, Running, run, stop_on_signals  # noqa: PLC0415

    settings = settings.override(kafka=_given(bootstrap_servers=args.bootstrap_servers),
                                 clickhouse={"apply_schema": True} if args.apply_schema else {})
    if not settings.kafka.bootstrap_servers:
        raise UsageError("no Kafka to read from: set PULSE_KAFKA__BOOTSTRAP_SERVERS or pass --bootstrap-servers")
    _check_kafka(settings.kafka.bootstrap_servers)
    writer, lines = settings.writer, Lines(_say, numbered=False)

    def observe(event: Any) -> None:
        lines(event)
        if isinstance(event, Running):
            _say(f"storing from {settings.kafka.bootstrap_servers} into ClickHouse ({settings.clickhouse.transport});"
                 f" health on {writer.health_host}:{event.runtime.health_port}/health")

    run(Plan(settings, store_writer=True, serve_health=True), observe, stop_on_signals(_say))
    _say("stopped")
    return 0


# -- errors as one line ----------------------------------------------------------------------------

class _Failed(PulseError):
    """The run ended and produced nothing; the summary above says why, this line sums it up."""


def explain(error: BaseException, settings: PulseSettings | None) -> tuple[int, str]:
    """Exit code and the one line for an error a user can cause; anything else is 'unexpected'.

    Pulse's own errors carry both (pulse.errors). The rest are other libraries' errors that reach
    here unwrapped: a setting pydantic refused, Kafka's client giving up, a missing file.
    """
    logs = settings.data_dir / "logs" if settings is not None else Path("logs")
    if isinstance(error, PulseError):
        return error.exit_code, error.line(logs)
    if isinstance(error, ValidationError):
        first = error.errors()[0]
        name = "PULSE_" + "__".join(str(part) for part in first["loc"]).upper()
        return 2, f"invalid setting {name}: {first['msg']}; check the environment and .env"
    if isinstance(error, KafkaError):
        what = first_line(str(error)) or type(error).__name__
        return 1, f"Kafka failed: {what}; is the broker running and reachable?"
    if isinstance(error, OSError) and error.filename:
        return 1, f"{error.strerror or error}: {error.filename}"
    return 1, (f"unexpected error: {type(error).__name__}: {first_line(str(error))} (details in {logs / 'pulse.log'};"
               " --debug prints the traceback)")


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("PULSE_DEBUG", "").lower() in ("1", "true", "yes")
    handlers = {"demo": _run_demo, "live": _run_live, "produce": _run_produce, "sql": _run_sql,
                "process": _run_process, "store": _run_store}
    settings: PulseSettings | None = None
    try:
        settings = _settings_for(args)
        code = handlers[args.command](args, settings)
    except KeyboardInterrupt:
        _say("interrupted: everything was stopped")
        code = 130
    except Exception as error:
        if debug:
            raise
        code, line = explain(error, settings)
        if code == 1 and line.startswith("unexpected"):
            log.error("pulse %s failed", args.command, exc_info=error)
        print(f"pulse {args.command}: {line}", file=sys.stderr, flush=True)
    if argv is None:
        _exit(code)
    return code


def _exit(code: int) -> NoReturn:
    """The end of a `pulse` process: flush, then leave without the interpreter's finalization.

    Everything was stopped in order by then (Pipeline.stop). What finalization would still run are
    destructors of native libraries (chDB's engine, py4j's threads) in an order none of them
    controls; a crash there would turn a clean run into a death by signal.
    """
    logging.shutdown()
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
