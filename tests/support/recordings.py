"""Where the real Binance recordings are: the shared data beside the checkout, else the bundled copy."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
_SHARED = ROOT.parent / "shared" / "data"
_BUNDLED = ROOT / "pulse" / "resources" / "recordings"

USDM_RAW = "binance-usdm-ws-2021-04-05.raw"
SPOT_RAW = "binance-spot-ws-2021-04-04.raw"
ARCHIVE_CSV = "BTCUSDT-aggTrades-2026-01-01-first5000.csv"


def recording(name: str) -> Path:
    for folder in (_SHARED, _BUNDLED):
        if (folder / name).exists():
            return folder / name
    raise FileNotFoundError(f"recording {name} is neither in {_SHARED} nor in {_BUNDLED}")


_PREFIX = re.compile(r"^\d+(?:\.\d+)?: ")


def recorded_payloads(path: Path, symbol: str | None = None) -> Iterator[dict[str, Any]]:
    """Every aggTrade of a recording, in file order, as the payload Binance sent (archive CSV rows as
    the payload they stand for). The one parser of recordings in tests/support: the reference and the
    Binance double both read through it, and it imports nothing from pulse."""
    for raw_line in path.read_text().splitlines():
        line = _PREFIX.sub("", raw_line.strip(), count=1)
        if line.startswith("{"):
            frame = json.loads(line)
            data = frame.get("data", frame)
            if isinstance(data, dict) and data.get("e") == "aggTrade":
                yield data if "s" in data or symbol is None else {**data, "s": symbol}
        elif line[:1].isdigit():
            row = next(csv.reader([line]))
            time_ms = int(row[5]) // 1000 if int(row[5]) > 10**14 else int(row[5])
            yield {"e": "aggTrade", "E": time_ms, "s": symbol or "", "a": int(row[0]), "p": row[1], "q": row[2],
                   "f": int(row[3]), "l": int(row[4]), "T": time_ms, "m": row[6].strip().lower() == "true"}
