"""The package owns its runtime files: a built wheel carries the schema and the recordings, and an
installed Pulse finds them in a clean environment, with no checkout beside it."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_carries_the_schema_and_recording_and_an_install_finds_them(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("pulse-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    schema = sorted(p.name for p in (ROOT / "pulse" / "resources" / "schema").glob("*.sql"))
    assert {f"pulse/resources/schema/{name}" for name in schema} <= names
    assert "pulse/resources/recordings/binance-usdm-ws-2021-04-05.raw" in names

    # A clean environment: no dependencies, no checkout on the path, run from elsewhere.
    clean = tmp_path / "clean"
    subprocess.run([sys.executable, "-m", "venv", str(clean)], check=True, timeout=120)
    subprocess.run([str(clean / "bin" / "pip"), "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    probe = ("import json, pulse.resources as r; s = r.schema_dir(); "
             "print(json.dumps({'schema': sorted(p.name for p in s.glob('*.sql')), 'where': str(s), "
             "'recording': r.bundled_recording().read_text().count('@aggTrade') > 500}))")
    out = subprocess.run([str(clean / "bin" / "python"), "-c", probe], check=True, capture_output=True, text=True,
                         cwd=tmp_path, env={"PATH": "/usr/bin:/bin"}, timeout=60).stdout
    found = json.loads(out)
    assert found["schema"] == schema
    assert found["where"].startswith(str(clean)), "the schema must come from the installed package"
    assert found["recording"]
