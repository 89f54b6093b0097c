"""The terminal view of a running pipeline, shared by `pulse live` and `pulse demo`.

One row per symbol (last price, VWAP, net delta, buy pressure as a bar, CVD since the view
started, trades/s, the signal in its colour, age of the newest window) and a footer with the
pipeline's health (producer rate, queue drops, gaps, dead letters, the engine (Spark batch duration),
freshness p50). It redraws in place (rich) about twice a second and fits 80 columns; when stdout
is no terminal it prints a plain progress line every few seconds instead.

A run over several venues (`pulse live --symbols okx:BTC-USDT,coinbase:BTC-USD`) groups the rows by
asset: one row per asset across its venues (USD, USDT and USDC quotes as one family, as
`pulse_asset_metrics` counts them), from each venue's newest window: the volume-weighted VWAP, the
summed net delta, buy share and CVD, and the spread between the highest and lowest venue VWAP in
bps; under it a row per venue and symbol.

It never blocks the pipeline: it runs on a thread of its own, reads the producer's counters as
they are (plain ints, read without locks) and asks the store only for the windows written since
its last look (rows written after the newest `written_at` it has seen: each insert stamps its rows
with one time, in micro-batch and Real-Time Mode alike). The
chDB engine is shared and locked, so that one small query per tick is all the view costs it.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from pulse.runtime import Draining, Event, Finished, Lines, Running, Runtime, Step, Stopping
from pulse.storage.results import Results

if TYPE_CHECKING:
    from pulse.producer import ProducerService

log = logging.getLogger(__name__)

SIGNAL_STYLES = {"STRONG BUY": "bold green", "ACCUMULATING": "green", "NEUTRAL": "bright_black",
                 "DISTRIBUTING": "red", "STRONG SELL": "bold red"}
# Windows this much older than a symbol's newest one no longer change (the watermark is seconds):
# their net delta is folded into the CVD base, so memory stays bounded on long runs.
_SETTLED_AFTER_MS = 120_000
_RATE_SPAN_S = 5.0
_FRESHNESS_SPAN_S = 30.0

class WarningCount(logging.Handler):
    """Counts the warnings Pulse logged (to the file at `path`), for one line in the footer instead of many."""

    def __init__(self, path: Path) -> None:
        super().__init__(logging.WARNING)
        self.path = path
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


# Quotes priced as one currency when venues are compared (pulse_asset_metrics counts them so too).
USD_FAMILY = ("USD", "USDT", "USDC")


@dataclass
class SymbolState:
    symbol: str
    venue: str = ""
    asset: str = ""
    quote: str = ""
    volume: float = 0.0  # of the newest window, in base units
    buy_volume: float = 0.0
    window_start_ms: int = -1
    last_price: float | None = None
    vwap: float | None = None
    net_delta: float | None = None
    buy_pct: float | None = None
    signal: str = ""
    updated_at: float | None = None  # monotonic time the newest window was last written
    trades_per_s: float = 0.0
    # CVD: settled windows summed in `cvd_base`, recent ones by window start (they may still change).
    cvd_base: float = 0.0
    settled_windows: int = 0
    recent_deltas: dict[int, float] = field(default_factory=dict)

    @property
    def windows(self) -> int:
        return self.settled_windows + len(self.recent_deltas)

    @property
    def cvd(self) -> float:
        return self.cvd_base + sum(self.recent_deltas.values())

    def apply(self, row: dict[str, Any], seen_at: float) -> None:
        start = int(row["ws"])
        self.recent_deltas[start] = float(row["net_delta"])
        if start >= self.window_start_ms:
            self.window_start_ms = start
            self.last_price, self.vwap = float(row["close"]), float(row["vwap"])
            self.net_delta, self.buy_pct = float(row["net_delta"]), float(row["buy"])
            self.signal, self.updated_at = str(row["signal"]), seen_at
            self.volume, self.buy_volume = float(row.get("volume", 0.0)), float(row.get("buy_volume", 0.0))
            self.asset, self.quote = str(row.get("asset", "")), str(row.get("quote", ""))
        for old in [w for w in self.recent_deltas if w < self.window_start_ms - _SETTLED_AFTER_MS]:
            self.cvd_base += self.recent_deltas.pop(old)
            self.settled_windows += 1


@dataclass
class BoardState:
    """Everything one frame shows; filled by `Dashboard`, rendered by `render` or `plain_line`."""

    title: str
    live: bool
    symbols: dict[str, SymbolState] = field(default_factory=dict)
    windows: int = 0
    producer_rate: float = 0.0
    trades: int = 0
    dropped: int = 0
    gaps: int = 0
    dead_letters: int = 0
    batch_ms: int = 0
    # Real-Time Mode has no per-batch delay to show: its batches are checkpoint intervals.
    realtime: bool = False
    freshness_p50_ms: float | None = None
    problem: str | None = None
    warnings: int = 0
    log_path: Path | None = None
    # Several venues: rows are keyed `venue:symbol` and shown grouped by asset.
    by_venue: bool = False

    def symbol(self, name: str, venue: str = "") -> SymbolState:
        key = f"{venue}:{name}" if self.by_venue else name
        if key not in self.symbols:
            self.symbols[key] = SymbolState(name, venue)
        return self.symbols[key]


@dataclass(frozen=True)
class AssetRow:
    """One asset across the venues trading it, from each venue's newest window."""

    name: str  # the asset, with its quote when outside the USD family ("ETH/EUR")
    venues: list[SymbolState]
    vwap: float | None
    net_delta: float
    buy_pct: float | None
    cvd: float
    trades_per_s: float
    spread_bps: float | None
    last_price: float | None
    updated_at: float | None


def asset_rows(state: BoardState) -> list[AssetRow]:
    """The rows of a board over several venues, busiest asset first; symbols without a window yet
    (asset unknown) are left out."""
    groups: dict[str, list[SymbolState]] = {}
    for s in state.symbols.values():
        if s.asset:
            name = s.asset if s.quote in USD_FAMILY else f"{s.asset}/{s.quote}"
            groups.setdefault(name, []).append(s)
    rows = []
    for name, members in groups.items():
        venues = sorted(members, key=lambda s: (-s.trades_per_s, s.venue, s.symbol))
        volume = sum(s.volume for s in venues)
        priced = [s for s in venues if s.vwap is not None]
        vwaps = [s.vwap for s in priced if s.vwap is not None]
        newest = max(priced, key=lambda s: s.updated_at or 0.0, default=None)
        rows.append(AssetRow(
            name, venues,
            vwap=sum((s.vwap or 0.0) * s.volume for s in priced) / volume if volume > 0 else None,
            net_delta=sum(s.net_delta or 0.0 for s in venues),
            buy_pct=100 * sum(s.buy_volume for s in venues) / volume if volume > 0 else None,
            cvd=sum(s.cvd for s in venues),
            trades_per_s=sum(s.trades_per_s for s in venues),
            spread_bps=(max(vwaps) - min(vwaps)) / min(vwaps) * 10_000 if len(vwaps) > 1 and min(vwaps) > 0 else None,
            last_price=None if newest is None else newest.last_price,
            updated_at=max((s.updated_at for s in venues if s.updated_at is not None), default=None)))
    return sorted(rows, key=lambda r: (-r.trades_per_s, -(r.updated_at or 0.0), r.name))


# -- formatting to fixed widths ------------------------------------------------------------------

def compact(value: float | None, width: int, signed: bool = False) -> str:
    """`value` in at most `width` characters: as many decimals as fit (trailing zeros dropped),
    else with a k/M/B/T suffix."""
    if value is None:
        return "-"
    sign = ("+" if value > 0 else "-" if value < 0 else " ") if signed else ("-" if value < 0 else "")
    room = width - len(sign)
    for suffix, scale in (("", 1.0), ("k", 1e3), ("M", 1e6), ("B", 1e9), ("T", 1e12)):
        space = room - len(suffix)
        for decimals in range(min(8, max(0, space - 2)), -1, -1):
            text = f"{abs(value) / scale:.{decimals}f}"
            if len(text) <= space:
                if "." in text:
                    text = text.rstrip("0")
                    text = text + "0" if text.endswith(".") else text
                return f"{sign}{text}{suffix}"
    return sign + "#" * max(1, room)


def age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 100:
        return f"{seconds:.0f}s"
    if seconds < 6000:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.0f}h"


def duration(seconds: float) -> str:
    """A latency: ms below 10 s, then seconds, and past an hour no more than that (a replay of old trades)."""
    if seconds < 10:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 3600:
        return f"{seconds:.1f} s"
    return "> 1 h"


def pressure_bar(pct: float | None, cells: int = 3) -> Text:
    if pct is None:
        return Text("-")
    eighths = round(max(0.0, min(100.0, pct)) / 100 * cells * 8)
    full, part = divmod(eighths, 8)
    bar = "█" * full + ("▏▎▍▌▋▊▉"[part - 1] if part else "")
    return Text.assemble((bar.ljust(cells), "green" if pct >= 50 else "red"), f"{pct:3.0f}%")


def rate(per_s: float, width: int = 5) -> str:
    return compact(per_s, width) if per_s >= 1 or per_s == 0 else f"{per_s:.1f}"


def ranked(state: BoardState) -> list[SymbolState]:
    """Busiest first (trades/s, then the newest window), name as the tie-break."""
    return sorted(state.symbols.values(), key=lambda s: (-s.trades_per_s, -(s.updated_at or 0.0), s.symbol))


def render(state: BoardState, now: float, height: int = 24, width: int = 80) -> RenderableType:
    """One frame: title, one row per symbol (as many as `height` allows), the health footer."""
    table = Table(box=None, padding=(0, 1, 0, 0), pad_edge=False, show_edge=False, header_style="bold")
    names = ranked(state)
    rows = _grouped_cells(state, now) if state.by_venue else [_symbol_cells(s, s.symbol, now) for s in names]
    symbol_width = max([6, *(len(row[0].plain) for row in rows[:50])])
    # Grouped by asset, the rows name venue and symbol: they take the room of "last" (VWAP says more
    # across venues).
    columns = [("venue symbol", min(symbol_width, 23))] if state.by_venue else [("symbol", min(symbol_width, 14)),
                                                                                 ("last", 8)]
    for header, column_width in (*columns, ("vwap", 8), ("Δ", 7), ("buy", 7), ("cvd", 7), ("t/s", 5),
                                 ("signal", 12), ("age", 4)):
        table.add_column(header, width=column_width, no_wrap=True, overflow="ellipsis",
                         justify="left" if header in ("symbol", "venue symbol", "signal", "buy") else "right")
    footer = [Text(footer_line(state), style="dim"), Text(health_line(state), style="dim")]
    if (warned := warnings_line(state)) is not None:
        footer.append(Text(warned, style="yellow"))
    if state.problem:
        footer.append(Text(state.problem, style="bold red"))
    footer_rows = sum(max(1, -(-len(line.plain) // max(1, width))) for line in footer)
    # Title, table header, footer, one spare row for the cursor; "… more" takes a row when needed.
    room = max(1, height - 3 - footer_rows)
    shown = rows if len(rows) <= room else rows[:max(1, room - 1)]
    for row in shown:
        table.add_row(*((row[0], *row[2:]) if state.by_venue else row))
    parts: list[RenderableType] = [Text.assemble((state.title, "bold"), "  ", (time.strftime("%H:%M:%S"), "dim"),
                                                 ("  Ctrl-C stops" if state.live else "", "dim")), table]
    if len(shown) < len(rows):
        parts.append(Text(f"… {len(rows) - len(shown)} more {'rows' if state.by_venue else 'symbols'}"
                          " (all of them: pulse sql after the run)", style="dim"))
    if not names:
        parts.append(Text("waiting for the first windows…", style="dim"))
    return Group(*parts, *footer)


Cells = tuple[Text, str, str, str, Text, str, str, Text, str]


def _symbol_cells(s: SymbolState, label: str, now: float) -> Cells:
    return (Text(label), compact(s.last_price, 8), compact(s.vwap, 8), compact(s.net_delta, 7, signed=True),
            pressure_bar(s.buy_pct), compact(s.cvd, 7, signed=True), rate(s.trades_per_s),
            Text(s.signal or "-", style=SIGNAL_STYLES.get(s.signal, "")),
            age(None if s.updated_at is None else now - s.updated_at))


def _grouped_cells(state: BoardState, now: float) -> list[Cells]:
    """Per asset: its row across venues, then a row per venue and symbol; symbols without a window last."""
    cells: list[Cells] = []
    grouped = asset_rows(state)
    for row in grouped:
        spread = "-" if row.spread_bps is None else f"spr {compact(row.spread_bps, 5)}bp"
        cells.append((Text(f"{row.name} ×{len(row.venues)}", style="bold"), compact(row.last_price, 8),
                      compact(row.vwap, 8), compact(row.net_delta, 7, signed=True), pressure_bar(row.buy_pct),
                      compact(row.cvd, 7, signed=True), rate(row.trades_per_s), Text(spread, style="cyan"),
                      age(None if row.updated_at is None else now - row.updated_at)))
        cells.extend(_symbol_cells(s, f" {s.venue} {s.symbol}", now) for s in row.venues)
    listed = {id(s) for row in grouped for s in row.venues}
    cells.extend(_symbol_cells(s, f" {s.venue} {s.symbol}", now) for s in ranked(state) if id(s) not in listed)
    return cells


def footer_line(state: BoardState) -> str:
    return (f"in {rate(state.producer_rate)} trades/s · dropped {state.dropped} · gaps {state.gaps}"
            f" · dead letters {state.dead_letters} · {state.windows} windows")


def warnings_line(state: BoardState) -> str | None:
    if not state.warnings or state.log_path is None:
        return None
    return f"{state.warnings} warning{'s' if state.warnings != 1 else ''} logged: see {state.log_path}"


def health_line(state: BoardState) -> str:
    fresh = "-" if state.freshness_p50_ms is None else duration(state.freshness_p50_ms / 1000)
    what = "trade → visible" if state.live else "read → visible"
    engine = "Spark Real-Time Mode" if state.realtime else f"Spark batch {state.batch_ms} ms"
    return f"{engine} · freshness p50 {fresh} ({what})"


def plain_line(state: BoardState, top: int = 3) -> str:
    """The view as one progress line, for logs and pipes."""
    if state.by_venue:  # per asset: its VWAP across venues, how many, their spread
        assets = asset_rows(state)
        symbols = " | ".join(f"{r.name} {compact(r.vwap, 10).strip()} ×{len(r.venues)}"
                             + ("" if r.spread_bps is None else f" spr {compact(r.spread_bps, 5)}bp")
                             for r in assets[:top])
        more = f" (+{len(assets) - top} more)" if len(assets) > top else ""
    else:
        names = ranked(state)[:top]
        symbols = " | ".join(f"{s.symbol} {compact(s.last_price, 10).strip()} {s.signal or '-'}" for s in names)
        more = f" (+{len(state.symbols) - top} more)" if len(state.symbols) > top else ""
    extra = "".join(f" · {note}" for note in (warnings_line(state), state.problem) if note)
    return f"[{time.strftime('%H:%M:%S')}] {symbols or 'no windows yet'}{more} · {footer_line(state)}{extra}"


# -- the thread ------------------------------------------------------------------------------------

class Dashboard:
    """Reads the pipeline and redraws on its own thread, from `start()` (or `with`) until `stop()`."""

    def __init__(self, run: Runtime, title: str, live: bool, out: IO[str] | None = None,
                 period_s: float = 0.5, plain_period_s: float = 5.0, symbols: list[str] | None = None,
                 warnings: WarningCount | None = None, clock: Callable[[], float] = time.monotonic,
                 by_venue: bool = False) -> None:
        self._run = run
        self._results = Results(run.store)
        self.state = BoardState(title=title, live=live, by_venue=by_venue)
        for name in symbols or []:  # by venue: `venue:symbol`
            venue, _, symbol = name.rpartition(":")
            self.state.symbol(symbol, venue)
        self._console = Console(file=out, highlight=False) if out is not None else Console(highlight=False)
        self.interactive = self._console.is_terminal and not self._console.is_dumb_terminal
        self._period_s = period_s
        self._plain_period_s = plain_period_s
        self._clock = clock
        self._warnings = warnings
        if warnings is not None:
            self.state.log_path = warnings.path
        # Only windows of this run count (CVD since start): rows written after the newest stored one.
        self.since_ms = self._newest_written_ms()
        self._seen_ms = self.since_ms
        self._counts: deque[tuple[float, int, dict[tuple[str, str], int]]] = deque()
        self._latencies: deque[tuple[float, float]] = deque()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pulse-dashboard", daemon=True)
        self._live: Live | None = None
        self.frames = 0

    def _newest_written_ms(self) -> int:
        return self._results.newest_written_ms()

    # -- reading -----------------------------------------------------------------------------------

    def _producer(self) -> ProducerService | None:
        return self._run.producer

    def poll(self) -> None:
        """One look at the store and the producer; updates `state`."""
        now = self._clock()
        rows = self._results.windows_written_after(self._seen_ms)
        for row in rows:
            self.state.symbol(str(row["symbol"]), str(row["venue"])).apply(row, now)
            latency = float(row["write_ms"]) if self.state.live else float(row["write_ms"]) - float(row["ingest_ms"])
            self._latencies.append((now, latency))
            self._seen_ms = max(self._seen_ms, int(row["written_ms"]))
        if rows:
            self.state.windows = sum(s.windows for s in self.state.symbols.values())
        while self._latencies and self._latencies[0][0] < now - _FRESHNESS_SPAN_S:
            self._latencies.popleft()
        if self._latencies:
            self.state.freshness_p50_ms = statistics.median(latency for _, latency in self._latencies)
        if self._warnings is not None:
            self.state.warnings = self._warnings.count
        queries = self._run.queries
        self.state.realtime = self._run.settings.realtime
        if queries is not None:
            self.state.batch_ms = int(queries.listener.last_batch_ms)
        service = self._producer()
        if service is not None:
            self._read_producer(service, now)

    def _read_producer(self, service: ProducerService, now: float) -> None:
        # The producer's loop mutates these dicts on its own thread; a copy that races an insert
        # raises, and the next tick simply reads again.
        with contextlib.suppress(RuntimeError):
            snapshot = service.snapshot()
            by_market = dict(service.router.trades_by_market)
            counters, labelled = snapshot.counters, snapshot.labelled_counters
            self.state.trades = int(counters.get("trades_received", 0))
            self.state.dead_letters = int(sum(labelled.get(("frames_invalid", "reason"), {}).values()))
            self.state.dropped = int(sum(labelled.get(("records_dropped", "symbol"), {}).values()))
            self.state.gaps = int(counters.get("gaps_found", counters.get("gap_events", 0)))
            self.state.problem = service.source.problem()
            self._counts.append((now, self.state.trades, by_market))
            while len(self._counts) > 2 and self._counts[1][0] < now - _RATE_SPAN_S:
                self._counts.popleft()
            then, trades_then, markets_then = self._counts[0]
            span = now - then
            if span > 0:
                self.state.producer_rate = (self.state.trades - trades_then) / span
                for (venue, name), count in by_market.items():
                    self.state.symbol(name, venue).trades_per_s = (count - markets_then.get((venue, name), 0)) / span

    # -- drawing -----------------------------------------------------------------------------------

    def _draw(self) -> None:
        self.frames += 1
        if self._live is not None:
            size = self._console.size
            self._live.update(render(self.state, self._clock(), size.height, size.width), refresh=True)

    def _loop(self) -> None:
        last_plain = self._clock()
        while not self._stop.wait(self._period_s):
            try:
                self.poll()
            except Exception:  # a failed look must not end the view; the next tick looks again
                log.exception("dashboard poll failed")
                continue
            if self.interactive:
                self._draw()
            elif self._clock() - last_plain >= self._plain_period_s:
                last_plain = self._clock()
                self.frames += 1
                self._console.print(plain_line(self.state), markup=False, highlight=False, soft_wrap=True)

    def start(self) -> Dashboard:
        if self.interactive:
            size = self._console.size
            self._live = Live(render(self.state, self._clock(), size.height, size.width), console=self._console,
                              auto_refresh=False, redirect_stdout=True, redirect_stderr=True, transient=False)
            self._live.start()
        self._thread.start()
        return self

    def stop(self) -> None:
        """A last look (so the final frame shows everything), then the view ends."""
        self._stop.set()
        self._thread.join(timeout=10)
        with contextlib.suppress(Exception):
            self.poll()
        if self._live is not None:
            self._draw()
            self._live.stop()
            self._live = None
        elif self.frames:
            self._console.print(plain_line(self.state), markup=False, highlight=False, soft_wrap=True)

    @contextlib.contextmanager
    def running(self) -> Iterator[Dashboard]:
        self.start()
        try:
            yield self
        finally:
            self.stop()


class DashboardObserver:
    """A run watched in the terminal: its steps as lines, then the dashboard from the moment every part
    runs until the run drains or stops (`show=False`: lines only)."""

    def __init__(self, say: Callable[[str], None], title: str, live: bool, symbols: list[str] | None = None,
                 warnings: WarningCount | None = None, show: bool = True, by_venue: bool = False) -> None:
        self._lines = Lines(say)
        self._title, self._live, self._symbols, self._warnings = title, live, symbols, warnings
        self._show, self._by_venue = show, by_venue
        self.board: Dashboard | None = None

    def __call__(self, event: Event) -> None:
        if isinstance(event, Running) and self._show:
            self.board = Dashboard(event.runtime, self._title, self._live, symbols=self._symbols,
                                   warnings=self._warnings, by_venue=self._by_venue).start()
        elif self.board is not None and (isinstance(event, Draining | Stopping | Finished)
                                         or (isinstance(event, Step) and event.part == "stop")):
            self.board.stop()
            self.board = None
        self._lines(event)
