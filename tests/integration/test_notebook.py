"""notebooks/pulse.ipynb executed headless (nbclient, the `pulse` kernel), as in the docker stack.

The kernel is its own process with its own Spark. As in the stack, it is given an external broker
(the shared test broker) whose live topic it must not write to, and ClickHouse over HTTP (the test
endpoint over this process's engine, tests/support/clickhouse_http.py) in which the processor's
database already holds data that it must not touch. It replays a real recording into a topic of its
own and writes into its own database; those windows are compared with the independent reference.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from nbclient import NotebookClient

from pulse.broker.local_kafka import end_offsets
from pulse.notebook import NOTEBOOK_DATABASE
from pulse.storage.clickhouse import ChdbTransport, apply_schema
from tests.support.clickhouse_http import ClickHouseHttp
from tests.support.names import unique_name
from tests.support.processor_process import WINDOWS_SQL, pulse_env
from tests.support.recordings import USDM_RAW, recording
from tests.support.reference import reference_windows, trades_from_recording

pytestmark = pytest.mark.integration

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "pulse.ipynb"


def _outputs(notebook: nbformat.NotebookNode, mime: str) -> int:
    return sum(1 for cell in notebook.cells if cell.cell_type == "code"
               for output in cell.get("outputs", []) if mime in output.get("data", {}))


PROCESSOR_ROWS = "SELECT symbol, trade_count, version FROM pulse_metrics"


@pytest.mark.slow
def test_the_notebook_runs_headless_and_writes_the_reference_windows(kafka, topics, chdb_engine, base_settings,
                                                                     tmp_path, monkeypatch):
    kernel = nbformat.read(NOTEBOOK, as_version=4).metadata.kernelspec.name
    try:
        KernelSpecManager().get_kernel_spec(kernel)
    except NoSuchKernel:
        pytest.fail(f"kernel {kernel!r} is not installed: run `make setup`")
    path = recording(USDM_RAW)
    data_dir = tmp_path / "notebook-run"
    # The processor's database, already holding a window, in the server the notebook talks to.
    processor = ChdbTransport(base_settings.chdb_path, unique_name("pulse_processor"))
    apply_schema(processor, base_settings.schema_dir)
    processor.command("INSERT INTO pulse_metrics (symbol, window_start, window_end, trade_count, version) VALUES"
                      " ('PROCESSORUSDT', toDateTime64(1700000000, 3, 'UTC'), toDateTime64(1700000001, 3, 'UTC'),"
                      " 7, 1)")
    before = processor.query_arrow(PROCESSOR_ROWS).to_pylist()
    ChdbTransport(base_settings.chdb_path, NOTEBOOK_DATABASE).recreate()  # the notebook's own, from nothing
    server = ClickHouseHttp(chdb_engine, user="pulse_writer", password="notebook").start()
    for name, value in pulse_env(
        PULSE_DATA_DIR=str(data_dir), PULSE_KAFKA__BOOTSTRAP_SERVERS=kafka.bootstrap,
        PULSE_KAFKA__TRADES_TOPIC=topics.trades_topic, PULSE_KAFKA__DEAD_LETTER_TOPIC=topics.dead_letter_topic,
        PULSE_SPARK__TRIGGER_MS="250", **server.env(processor.database),
    ).items():
        monkeypatch.setenv(name, value)

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    (parameters,) = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    parameters.source += f"\nRECORDING = {str(path)!r}\nSPEED = None\nLIVE_SECONDS = 150\n"
    try:
        NotebookClient(notebook, kernel_name=kernel, timeout=240,
                       resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        server.stop()
    nbformat.write(notebook, tmp_path / "executed.ipynb")  # kept for a look when the test fails

    assert _outputs(notebook, "image/png") >= 1, "the live view drew no chart"
    assert _outputs(notebook, "text/html") >= 3, "the tables are missing"

    assert processor.query_arrow(PROCESSOR_ROWS).to_pylist() == before, "the notebook touched the processor's tables"
    assert server.requests > 10, "the notebook did not talk to ClickHouse over HTTP"
    live_topic = asyncio.run(end_offsets(kafka.bootstrap, topics.trades_topic))
    assert sum(live_topic.values()) == 0, "the notebook wrote into the live topic"
    html = "".join(str(output.get("data", {}).get("text/html", "")) for cell in notebook.cells
                   if cell.cell_type == "code" for output in cell.get("outputs", []))
    assert "hit_rate_pct" in html and "delta_deadband_rel" in html, "the signal-quality section shows nothing"
    assert _outputs(notebook, "image/png") >= 2, "the live view or the dead-band sweep drew no chart"

    reference = reference_windows(trades_from_recording(path))
    rows = ChdbTransport(base_settings.chdb_path, NOTEBOOK_DATABASE).query_arrow(WINDOWS_SQL).to_pylist()
    assert {(r["symbol"], int(r["window_start_ms"])) for r in rows} == set(reference)
    for row in rows:
        want = reference[(row["symbol"], int(row["window_start_ms"]))]
        assert int(row["trade_count"]) == want.trade_count
        assert row["signal"] == want.signal
        assert math.isclose(float(row["vwap"]), want.vwap, rel_tol=1e-9)
        assert math.isclose(float(row["net_delta"]), want.net_delta, rel_tol=1e-9, abs_tol=1e-9)
