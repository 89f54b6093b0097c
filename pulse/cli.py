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

    sql = commands.add_parser("sql", help="query the results of a run (chDB store in the data directory)")
    sql.add_argument("query", help='e.g. "SELECT symbol, count() FROM pulse_metrics GROUP BY symbol"')
    sql.add_argument("--data-dir", type=Path, default=None)
    sql.add_argument("--format", choices=["CSV", "pretty", "TSV", "JSONEachRow"], default="pretty")
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


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    settings = _settings_for(args)
    handlers = {"demo": _run_demo, "sql": _run_sql}
    try:
        return handlers[args.command](args, settings)
    except KeyboardInterrupt:
        _say("interrupted: everything was stopped")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
