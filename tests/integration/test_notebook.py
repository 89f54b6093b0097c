"""notebooks/pulse.ipynb executed headless (nbclient, the `pulse` kernel), as in the docker stack.

The kernel is its own process with its own Spark and chDB store (in its data directory). As in the
stack, it is given an external broker (the shared test broker) whose live topic it must not write
to, and a store in which the processor's database already holds data that it must not touch. It
replays a real recording into a topic of its own and writes into its own database; after it
stopped, those windows are read with `pulse sql` and compared with the independent reference.
"""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from nbclient import NotebookClient

from pulse.broker.local_kafka import end_offsets
from tests.support.processor_process import WINDOWS_SQL, pulse_env, pulse_sql
from tests.support.recordings import USDM_RAW, recording
from tests.support.reference import reference_windows, trades_from_recording

pytestmark = pytest.mark.integration

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "pulse.ipynb"


def _outputs(notebook: nbformat.NotebookNode, mime: str) -> int:
    return sum(1 for cell in notebook.cells if cell.cell_type == "code"
               for output in cell.get("outputs", []) if mime in output.get("data", {}))


SEED = ("from pathlib import Path; import sys; from pulse.resources import schema_dir;"
        " from pulse.storage.clickhouse import ChdbTransport, apply_schema;"
        " t = ChdbTransport(Path(sys.argv[1]), 'pulse'); apply_schema(t, schema_dir());"
        " t.command(\"INSERT INTO pulse_metrics (symbol, window_start, window_end, trade_count, version)"
        " VALUES ('PROCESSORUSDT', toDateTime64(1700000000, 3, 'UTC'), toDateTime64(1700000001, 3, 'UTC'), 7, 1)\");"
        " t.close()")
PROCESSOR_ROWS = "SELECT symbol, trade_count, version FROM pulse.pulse_metrics"


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

    # The processor's database, already holding a window, in the store the notebook opens.
    subprocess.run([sys.executable, "-c", SEED, str(data_dir / "chdb")], env=pulse_env(), check=True, timeout=120)
    before = pulse_sql(data_dir, PROCESSOR_ROWS)
    assert [(row["symbol"], int(row["trade_count"])) for row in before] == [("PROCESSORUSDT", 7)]

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    (parameters,) = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    parameters.source += f"\nRECORDING = {str(path)!r}\nSPEED = None\nLIVE_SECONDS = 150\n"
    NotebookClient(notebook, kernel_name=kernel, timeout=240,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    nbformat.write(notebook, tmp_path / "executed.ipynb")  # kept for a look when the test fails

    assert _outputs(notebook, "image/png") >= 1, "the live view drew no chart"
    assert _outputs(notebook, "text/html") >= 3, "the tables are missing"

    assert pulse_sql(data_dir, PROCESSOR_ROWS) == before, "the notebook touched the processor's tables"
    live_topic = asyncio.run(end_offsets(kafka.bootstrap, topics.trades_topic))
    assert sum(live_topic.values()) == 0, "the notebook wrote into the live topic"
    html = "".join(str(output.get("data", {}).get("text/html", "")) for cell in notebook.cells
                   if cell.cell_type == "code" for output in cell.get("outputs", []))
    assert "hit_rate_pct" in html and "delta_deadband_rel" in html, "the signal-quality section shows nothing"
    assert _outputs(notebook, "image/png") >= 2, "the live view or the dead-band sweep drew no chart"

    reference = reference_windows(trades_from_recording(path))
    own = WINDOWS_SQL.replace("FROM pulse_metrics_latest", "FROM pulse_notebook.pulse_metrics_latest")
    rows = pulse_sql(data_dir, own)
    assert {(r["symbol"], int(r["window_start_ms"])) for r in rows} == set(reference)
    for row in rows:
        want = reference[(row["symbol"], int(row["window_start_ms"]))]
        assert int(row["trade_count"]) == want.trade_count
        assert row["signal"] == want.signal
        assert math.isclose(float(row["vwap"]), want.vwap, rel_tol=1e-9)
        assert math.isclose(float(row["net_delta"]), want.net_delta, rel_tol=1e-9, abs_tol=1e-9)
