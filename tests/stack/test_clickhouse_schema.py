"""Every SQL file under clickhouse/ on the ClickHouse engine (chDB), and the server's init script.

- pulse/resources/schema/*.sql run on chDB, file by file, in the order the server's init script runs them.
- clickhouse/initdb/users.sql.tmpl (CREATE USER, SETTINGS PROFILE, GRANT) needs a server's access
  control, which chDB does not have: those statements are only parsed here (EXPLAIN AST).
- clickhouse/initdb/01-pulse.sh runs for real against a stand-in `clickhouse-client` that records
  each call; the calls are then replayed on chDB, so the script's order, quoting and substitutions
  are what is tested.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pulse.settings import PulseSettings
from pulse.storage.clickhouse import ChdbEngine, ChdbTransport, split_statements
from tests.support.names import unique_name

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = sorted((ROOT / "pulse" / "resources" / "schema").glob("*.sql"))
INITDB = ROOT / "clickhouse" / "initdb"
MIGRATIONS = sorted((ROOT / "clickhouse" / "migrations").glob("*.sql"))
USERS_TEMPLATE = INITDB / "users.sql.tmpl"
SERVER_ONLY = re.compile(r"^\s*(CREATE\s+USER|CREATE\s+SETTINGS\s+PROFILE|GRANT)\b", re.IGNORECASE)
CREATED = re.compile(r"CREATE\s+(?:TABLE|VIEW|MATERIALIZED\s+VIEW)\s+IF\s+NOT\s+EXISTS\s+(\w+)", re.IGNORECASE)


def _objects(transport: ChdbTransport) -> set[str]:
    rows = transport.query_arrow(f"SELECT name FROM system.tables WHERE database = '{transport.database}'")
    return set(rows.column("name").to_pylist())


def test_every_sql_file_under_clickhouse_is_covered() -> None:
    every = {p.relative_to(ROOT).as_posix() for folder in (ROOT / "clickhouse", ROOT / "pulse" / "resources")
             for p in folder.rglob("*.sql*")}
    # The replicated variant under clickhouse/cluster/schema is run by tests/stack/test_cluster_schema.py.
    cluster = sorted((ROOT / "clickhouse" / "cluster" / "schema").glob("*.sql"))
    covered = {p.relative_to(ROOT).as_posix() for p in [*SCHEMA, USERS_TEMPLATE, *cluster, *MIGRATIONS]}
    assert every == covered, f"SQL that no test runs: {sorted(every - covered)}"


@pytest.mark.parametrize("upto", range(len(SCHEMA)), ids=[p.name for p in SCHEMA])
def test_schema_file_runs_on_chdb(upto: int, chdb_engine: ChdbEngine, base_settings: PulseSettings) -> None:
    transport = ChdbTransport(base_settings.chdb_path, unique_name("stack_schema"))
    for path in SCHEMA[: upto + 1]:
        for statement in split_statements(path.read_text()):
            transport.command(statement)
    made_here = set(CREATED.findall(SCHEMA[upto].read_text()))
    assert made_here <= _objects(transport)
    # Re-running is a no-op: the server's processor applies the files again at every start.
    for statement in split_statements(SCHEMA[upto].read_text()):
        transport.command(statement)


def test_version_migration_lets_newer_window_states_win(chdb_engine: ChdbEngine,
                                                        base_settings: PulseSettings) -> None:
    """Rows written with batch ids as versions (before Real-Time Mode) are rewritten with their trade
    count: a later, fuller state of a window then replaces them, and a replayed partial one does not."""
    transport = ChdbTransport(base_settings.chdb_path, unique_name("migration"))
    for path in SCHEMA:
        for statement in split_statements(path.read_text()):
            transport.command(statement)
    columns = "symbol, window_start, window_end, trade_count, signal, version"
    transport.command(f"INSERT INTO pulse_metrics ({columns}) VALUES "
                      "('BTCUSDT', '2026-01-01 00:00:00', '2026-01-01 00:00:01', 7, 'NEUTRAL', 9000), "
                      "('BTCUSDT', '2026-01-01 00:00:00', '2026-01-01 00:00:01', 5, 'NEUTRAL', 8999), "
                      "('ETHUSDT', '2026-01-01 00:00:00', '2026-01-01 00:00:01', 3, 'NEUTRAL', 9001)")
    for statement in split_statements(_migration("version-is-trade-count").read_text()):
        transport.command(statement)
    kept = "SELECT symbol, trade_count, version FROM pulse_metrics_latest ORDER BY symbol"
    assert transport.query_arrow(kept).to_pylist() == [
        {"symbol": "BTCUSDT", "trade_count": 7, "version": 7}, {"symbol": "ETHUSDT", "trade_count": 3, "version": 3}]
    # What Real-Time Mode writes next: ETH's window gains a trade, BTC's is replayed partially.
    transport.command(f"INSERT INTO pulse_metrics ({columns}) VALUES "
                      "('ETHUSDT', '2026-01-01 00:00:00', '2026-01-01 00:00:01', 4, 'NEUTRAL', 4), "
                      "('BTCUSDT', '2026-01-01 00:00:00', '2026-01-01 00:00:01', 2, 'NEUTRAL', 2)")
    assert [r["trade_count"] for r in transport.query_arrow(kept).to_pylist()] == [7, 4]
    assert "pulse_metrics_migrating" not in _objects(transport)


def _migration(name: str) -> Path:
    (path,) = [p for p in MIGRATIONS if p.stem.endswith(name)]
    return path


def test_venue_migration_keeps_old_rows_and_keys_windows_by_venue(chdb_engine: ChdbEngine,
                                                                   base_settings: PulseSettings) -> None:
    """A table from before venues (no venue column, key symbol and second) migrates in place: its rows
    stay, with venue '', the views read venue after the schema is applied again, and two venues'
    windows of one symbol and second are two rows, each replaced by its own newer state."""
    transport = ChdbTransport(base_settings.chdb_path, unique_name("venue_migration"))
    table = SCHEMA[0].read_text()
    added = ("venue                  LowCardinality(String)", "base_asset             LowCardinality(String)",
             "quote_asset            LowCardinality(String)", "first_trade_time       DateTime64(3, 'UTC')")
    before = table.replace("ORDER BY (symbol, window_start, venue)", "ORDER BY (symbol, window_start)")
    for column in added:
        before = before.replace(f"    {column},\n", "")
    assert before != table
    for statement in split_statements(before):
        transport.command(statement)
    columns = "symbol, window_start, window_end, trade_count, total_volume, quote_volume, signal, version"
    transport.command(f"INSERT INTO pulse_metrics ({columns}) VALUES "
                      "('BTCUSDT', '2026-01-01 00:00:00', '2026-01-01 00:00:01', 7, 2, 200, 'NEUTRAL', 7)")
    for statement in split_statements(_migration("venue").read_text()):
        transport.command(statement)
    for path in SCHEMA:
        for statement in split_statements(path.read_text()):
            transport.command(statement)
    columns = f"venue, {columns}"
    transport.command(f"INSERT INTO pulse_metrics ({columns}) VALUES "
                      "('okx', 'BTCUSDT', '2026-01-01 00:00:00', '2026-01-01 00:00:01', 1, 1, 101, 'NEUTRAL', 1), "
                      "('okx', 'BTCUSDT', '2026-01-01 00:00:00', '2026-01-01 00:00:01', 3, 3, 303, 'NEUTRAL', 3), "
                      "('binance-spot', 'BTCUSDT', '2026-01-01 00:00:00', '2026-01-01 00:00:01', 2, 1, 99,"
                      " 'NEUTRAL', 2)")
    kept = transport.query_arrow("SELECT venue, trade_count FROM pulse_metrics_latest ORDER BY venue").to_pylist()
    assert kept == [{"venue": "", "trade_count": 7}, {"venue": "binance-spot", "trade_count": 2},
                    {"venue": "okx", "trade_count": 3}]
    rollup = transport.query_arrow("SELECT venue, trade_count FROM pulse_metrics_1m ORDER BY venue").to_pylist()
    assert [r["trade_count"] for r in rollup] == [7, 2, 3]


def _render_users(writer: str, reader: str, database: str, writer_hash: str, reader_hash: str) -> str:
    return (USERS_TEMPLATE.read_text().replace("__DATABASE__", database)
            .replace("__NOTEBOOK_DATABASE__", "pulse_notebook")
            .replace("__WRITER_USER__", writer).replace("__WRITER_SHA256__", writer_hash)
            .replace("__READER_USER__", reader).replace("__READER_SHA256__", reader_hash))


def test_users_and_grants_parse(chdb_engine: ChdbEngine, base_settings: PulseSettings) -> None:
    transport = ChdbTransport(base_settings.chdb_path, unique_name("stack_users"))
    sql = _render_users("pulse_writer", "pulse_reader", "pulse", "ab" * 32, "cd" * 32)
    statements = split_statements(sql)
    assert not re.search(r"__[A-Z][A-Z0-9_]*__", "\n".join(statements)), "a placeholder is left"
    assert len(statements) == 7
    # The notebook writes into a database of its own, never into the processor's.
    assert any("ON pulse_notebook.* TO pulse_writer" in statement for statement in statements)
    for statement in statements:
        assert SERVER_ONLY.match(statement), statement
        # Parsed, not executed: chDB has no access control to create users in.
        transport.query_text(f"EXPLAIN AST {statement}", "TSV")
    with pytest.raises(RuntimeError):
        transport.query_text("EXPLAIN AST GRANT SELEKT ON pulse.* TO pulse_writer", "TSV")


def _granted(template: str, user: str, database: str = "__DATABASE__") -> set[str]:
    (privileges,) = re.findall(rf"GRANT (.+?) ON {database}\.\* TO {user};", template)
    return {p.strip().upper() for p in privileges.split(",")}


def test_grants_cover_what_each_user_does() -> None:
    template = USERS_TEMPLATE.read_text()
    needed = {"SELECT", "INSERT"}
    # The processor applies the schema files itself, so it needs the privilege of every statement in them.
    for path in SCHEMA:
        for statement in split_statements(path.read_text()):
            words = " ".join(statement.upper().split())
            if words.startswith("CREATE TABLE"):
                needed.add("CREATE TABLE")
            elif words.startswith(("CREATE VIEW", "CREATE MATERIALIZED VIEW")):
                needed.add("CREATE VIEW")
            elif words.startswith("ALTER TABLE") and " ADD COLUMN " in words:
                needed.add("ALTER ADD COLUMN")
            else:
                pytest.fail(f"{path.name}: no grant mapping for {words[:60]!r}: extend the writer's grants")
    assert needed <= _granted(template, "__WRITER_USER__")
    assert _granted(template, "__READER_USER__") == {"SELECT"}
    # The notebook applies the same schema files in its own database, as the writer.
    assert needed <= _granted(template, "__WRITER_USER__", "__NOTEBOOK_DATABASE__")
    assert _granted(template, "__READER_USER__", "__NOTEBOOK_DATABASE__") == {"SELECT"}
    assert "readonly = 2" in template


STUB = """#!{python}
# Stands in for clickhouse-client: records each call (arguments, SQL on stdin) as a JSON line.
import json, os, sys
stdin = "" if "--query" in sys.argv else sys.stdin.read()
with open(os.environ["STUB_LOG"], "a") as log:
    log.write(json.dumps({{"argv": sys.argv[1:], "stdin": stdin}}) + "\\n")
"""


Call = dict[str, Any]


def _run_init_script(tmp_path: Path, database: str, writer: str = "pulse_writer",
                     writer_password: str = "w'ri\"ter $pw") -> tuple[subprocess.CompletedProcess[str], list[Call]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "clickhouse-client"
    stub.write_text(STUB.format(python=sys.executable))
    stub.chmod(0o755)
    log = tmp_path / "calls.jsonl"
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}", "STUB_LOG": str(log),
        "CLICKHOUSE_USER": "pulse_admin", "CLICKHOUSE_PASSWORD": "admin-secret", "CLICKHOUSE_DB": database,
        "PULSE_SCHEMA_DIR": str(ROOT / "pulse" / "resources" / "schema"), "PULSE_INITDB_DIR": str(INITDB),
        "PULSE_INITDB_MARKER": str(tmp_path / "initdb-done"),
        "PULSE_WRITER_USER": writer, "PULSE_WRITER_PASSWORD": writer_password,
        "PULSE_READER_USER": "pulse_reader", "PULSE_READER_PASSWORD": "reader-secret",
    }
    result = subprocess.run([str(INITDB / "01-pulse.sh")], env=env, capture_output=True, text=True, timeout=60,
                            stdin=subprocess.DEVNULL, check=False)
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return result, calls


def _option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def test_init_script_builds_the_schema_and_users(tmp_path: Path, chdb_engine: ChdbEngine,
                                                  base_settings: PulseSettings) -> None:
    database = unique_name("stack_initdb")
    result, calls = _run_init_script(tmp_path, database)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "initdb-done").exists(), "the healthcheck's marker was not written"
    transport = ChdbTransport(base_settings.chdb_path, database)
    user_sql = ""
    for call in calls:
        argv = call["argv"]
        assert (_option(argv, "--user"), _option(argv, "--password")) == ("pulse_admin", "admin-secret")
        query = _option(argv, "--query")
        if query is not None:
            transport.command(query)
            continue
        statements = split_statements(call["stdin"])
        if _option(argv, "--database") is not None:
            assert _option(argv, "--database") == database
            for statement in statements:
                transport.command(statement)
        else:
            user_sql += call["stdin"]
            for statement in statements:
                assert SERVER_ONLY.match(statement), statement
                transport.query_text(f"EXPLAIN AST {statement}", "TSV")
    schema_calls = [c for c in calls if _option(c["argv"], "--database") is not None]
    assert [c["stdin"] for c in schema_calls] == [p.read_text() for p in SCHEMA], "every file, in order"
    made = {name for path in SCHEMA for name in CREATED.findall(path.read_text())}
    assert made <= _objects(transport)
    # Passwords reach the server only as SHA-256 digests, however they are quoted.
    assert hashlib.sha256(b"w'ri\"ter $pw").hexdigest() in user_sql
    assert hashlib.sha256(b"reader-secret").hexdigest() in user_sql
    assert "reader-secret" not in user_sql and "ter $pw" not in user_sql
    assert f"ON {database}.* TO pulse_writer" in user_sql


def test_init_script_refuses_a_user_name_that_is_not_an_identifier(tmp_path: Path) -> None:
    result, calls = _run_init_script(tmp_path, "pulse", writer="bob'; DROP DATABASE pulse; --")
    assert result.returncode != 0
    assert "not a plain identifier" in result.stderr
    assert calls == []
