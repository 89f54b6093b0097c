"""Files Pulse needs at run time, shipped inside the package so an installed Pulse finds them.

- `schema/*.sql`: the ClickHouse schema; chDB runs it in-process and the docker stack's ClickHouse
  server mounts the same folder for its init script.
- `recordings/`: real Binance recordings (provenance in recordings/README.md); the demo's default.

Only the standard library is imported here, so the files can be found without Pulse's dependencies.
"""

from __future__ import annotations

from importlib.resources import as_file, files
from pathlib import Path

BUNDLED_RECORDING_NAME = "binance-usdm-ws-2021-04-05.raw"


def _folder(name: str) -> Path:
    # The package is installed as plain files (wheel or editable), never zipped: a real path exists.
    with as_file(files(__name__) / name) as path:
        return Path(path)


def schema_dir() -> Path:
    """The folder of the ClickHouse schema files, applied in name order."""
    return _folder("schema")


def recordings_dir() -> Path:
    return _folder("recordings")


def bundled_recording() -> Path:
    """The USD-M recording `pulse demo` replays when no --input is given."""
    return recordings_dir() / BUNDLED_RECORDING_NAME
