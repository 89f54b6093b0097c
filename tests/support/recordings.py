"""Where the real Binance recordings are: the shared data beside the checkout, else the bundled copy."""

from __future__ import annotations

from pathlib import Path

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
