"""notebooks/pulse.ipynb executed headless (nbclient, the `pulse` kernel) on a real recording.

The kernel is its own process with its own Spark and chDB store (in its data directory); it reads
the shared test broker through a fresh topic. After it stopped, the windows it wrote are read with
`pulse sql` and compared with the independent reference.
"""

from __future__ import annotations

import math
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from nbclient import NotebookClient

from tests.support.processor_process import WINDOWS_SQL, pulse_env, pulse_sql
from tests.support.recordings import USDM_RAW, recording
from tests.support.reference import reference_windows, trades_from_recording

pytestmark = pytest.mark.integration

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "pulse.ipynb"


def _outputs(notebook: nbformat.NotebookNode, mime: str) -> int:
    return sum(1 for cell in notebook.cells if cell.cell_type == "code"
               for output in cell.get("outputs", []) if mime in output.get("data", {}))


def test_the_notebook_runs_headless_and_writes_the_reference_windows(kafka, topics, tmp_path, monkeypatch):
    kernel = nbformat.read(NOTEBOOK, as_version=4).metadata.kernelspec.name
    try:
        KernelSpecManager().get_kernel_spec(kernel)
    except NoSuchKernel:
        pytest.fail(f"kernel {kernel!r} is not installed: run `make setup`")
    path = recording(USDM_RAW)
    data_dir = tmp_path / "notebook-run"
    for name, value in pulse_env(
        PULSE_DATA_DIR=str(data_dir), PULSE_KAFKA__BOOTSTRAP_SERVERS=kafka.bootstrap,
        PULSE_KAFKA__TRADES_TOPIC=topics.trades_topic, PULSE_KAFKA__DEAD_LETTER_TOPIC=topics.dead_letter_topic,
        PULSE_SPARK__TRIGGER_MS="250",
    ).items():
        monkeypatch.setenv(name, value)

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    (parameters,) = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    parameters.source += f"\nRECORDING = {str(path)!r}\nSPEED = None\nLIVE_SECONDS = 150\n"
    NotebookClient(notebook, kernel_name=kernel, timeout=240,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    nbformat.write(notebook, tmp_path / "executed.ipynb")  # kept for a look when the test fails

    assert _outputs(notebook, "image/png") >= 1, "the live view drew no chart"
    assert _outputs(notebook, "text/html") >= 3, "the tables are missing"

    reference = reference_windows(trades_from_recording(path))
    rows = pulse_sql(data_dir, WINDOWS_SQL)
    assert {(r["symbol"], int(r["window_start_ms"])) for r in rows} == set(reference)
    for row in rows:
        want = reference[(row["symbol"], int(row["window_start_ms"]))]
        assert int(row["trade_count"]) == want.trade_count
        assert row["signal"] == want.signal
        assert math.isclose(float(row["vwap"]), want.vwap, rel_tol=1e-9)
        assert math.isclose(float(row["net_delta"]), want.net_delta, rel_tol=1e-9, abs_tol=1e-9)
