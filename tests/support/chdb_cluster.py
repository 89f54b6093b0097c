"""The ClickHouse cluster variant (clickhouse/cluster) run in chDB, as far as one embedded engine can.

Run in a child process (`python -m tests.support.chdb_cluster WORKDIR`): chDB reads its server
configuration once per process, and this one needs the cluster's (the pytest process may also
hold a chDB store of its own). The configuration is the real `config.d/pulse-cluster.xml` with the
macros from the environment, as the compose override sets them, plus one overlay that only this
machine needs: the cluster's replicas are replaced by `localhost`, which chDB counts as itself, and
Keeper by ClickHouse's in-process test keeper (chDB cannot reach one, so Replicated tables come up
read-only, with their Keeper paths and replica names as a server would register them).

What it records, for tests/stack/test_cluster_schema.py to judge:
- `parsed`: every statement of the cluster files, through `EXPLAIN AST`;
- `verbatim`: the schema exactly as the cluster's init script runs it (cluster table files over
  the single-node ones, by name), created statement by statement: errors, the Replicated tables'
  Keeper paths, each table's engine;
- `runnable`: the same with the one Keeper-dependent part removed (the two replication arguments
  of each Replicated engine; nothing else changes), and a single-node database beside it from
  pulse/resources/schema; both get the same rows, two versions per window, written through
  `pulse_metrics` (in the cluster: the Distributed table, with the async-insert settings the HTTP
  transport uses), and every table's and view's columns and every view's result are recorded.
"""

from __future__ import annotations

import json
import os
import re
import sys
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "clickhouse" / "cluster"
SINGLE_SCHEMA = ROOT / "pulse" / "resources" / "schema"
CLUSTER_SCHEMA = CLUSTER / "schema"
REPLICA = "clickhouse-test"
SECRET = "chdb-test-secret"

_LOOPBACK = """<clickhouse>
    <!-- A replica on localhost at this port is this engine itself (is_local), so Distributed
         tables read and write here instead of connecting out. -->
    <tcp_port>9000</tcp_port>
    <remote_servers>
        <pulse replace="replace">
            <secret from_env="CLICKHOUSE_CLUSTER_SECRET"/>
            <shard>
                <internal_replication>true</internal_replication>
                <replica><host>localhost</host><port>9000</port></replica>
            </shard>
        </pulse>
    </remote_servers>
    <zookeeper replace="replace"><implementation>testkeeper</implementation></zookeeper>
</clickhouse>
"""

# Replicated*MergeTree('<keeper path>', '<replica>'[, engine args]) -> *MergeTree([engine args])
_REPLICATION_ARGS = re.compile(r"Replicated(\w*MergeTree)\(\s*'[^']*'\s*,\s*'[^']*'\s*,?\s*")

# The HTTP transport's insert settings (pulse/storage/clickhouse.py), written out: this module runs
# the cluster's SQL, and stays independent of the code it checks.
_INSERT_SETTINGS = "async_insert = 1, wait_for_async_insert = 1, async_insert_busy_timeout_ms = 200"


def effective_schema() -> list[Path]:
    """The files the cluster's init script runs: /pulse/schema with the cluster table files mounted
    over the single-node files of the same name (docker-compose.cluster.yml)."""
    files = {path.name: path for path in SINGLE_SCHEMA.glob("*.sql")}
    files.update({path.name: path for path in CLUSTER_SCHEMA.glob("*.sql")})
    return [files[name] for name in sorted(files)]


def statements(path: Path) -> list[str]:
    """Statements of a schema file, split as the init script's clickhouse-client --multiquery would."""
    found = []
    for chunk in path.read_text().split(";\n"):
        code = "\n".join(line for line in chunk.splitlines() if not line.strip().startswith("--")).strip()
        if code.rstrip(";").strip():
            found.append(code.rstrip(";").strip())
    return found


def without_replication(sql: str) -> str:
    return _REPLICATION_ARGS.sub(lambda m: f"{m.group(1)}(", sql)


class Engine:
    def __init__(self, workdir: Path) -> None:
        from chdb import session

        config_d = workdir / "config.d"
        config_d.mkdir(parents=True)
        # The real file as the main configuration; config.d/ beside it is merged over it.
        (workdir / "config.xml").write_text((CLUSTER / "config.d" / "pulse-cluster.xml").read_text())
        (config_d / "loopback.xml").write_text(_LOOPBACK)
        self._session = session.Session(f"file:{workdir / 'store'}?config-file={workdir / 'config.xml'}")

    def rows(self, sql: str) -> list[dict[str, Any]]:
        text = str(self._session.query(sql, "JSONEachRow"))
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def run(self, sql: str) -> str | None:
        """Run a statement; the error message, or None."""
        try:
            self._session.query(sql)
        except Exception as error:  # recorded for the test to judge
            return str(error).splitlines()[0][:500]
        return None

    def insert_arrow(self, sql: str, arrow_batch: Any) -> None:
        # chDB's Python() table function finds the Arrow table by its variable name in this frame.
        self._session.query(sql.replace("{source}", "Python(arrow_batch)"))


def _rows_for_windows() -> list[Any]:
    """Reference windows of a real recording as pulse_metrics rows, in two inserts (two parts): a
    stale version 1 of every window, then the true version 2, so that only FINAL (replacing by
    version across parts) gives the truth."""
    from tests.support.metrics_rows import arrow_table, metrics_row
    from tests.support.recordings import SPOT_RAW, recording
    from tests.support.reference import reference_windows, trades_from_recording

    windows = list(reference_windows(trades_from_recording(recording(SPOT_RAW))).values())
    written = datetime(2021, 4, 4, tzinfo=UTC)
    stale = [{**metrics_row(w, 1, written), "vwap": w.vwap * 2, "trade_count": w.trade_count + 7} for w in windows]
    return [arrow_table(stale), arrow_table([metrics_row(w, 2, written) for w in windows])]


def _objects(engine: Engine, database: str) -> dict[str, str]:
    return {r["name"]: r["engine"] for r in engine.rows(
        f"SELECT name, engine FROM system.tables WHERE database = '{database}' ORDER BY name")}


def _source(database: str, name: str) -> str:
    if name == "pulse_cvd":  # parameterised: over the whole recorded day
        return f"{database}.{name}(from_time = '2021-04-04 00:00:00', to_time = '2021-04-05 00:00:00')"
    return f"{database}.{name}"


def _describe(engine: Engine, database: str, name: str) -> list[list[str]]:
    return [[r["name"], r["type"]] for r in engine.rows(f"DESCRIBE (SELECT * FROM {_source(database, name)})")]


def _view_result(engine: Engine, database: str, name: str) -> list[dict[str, Any]]:
    return engine.rows(f"SELECT * FROM {_source(database, name)} ORDER BY ALL")


# The engine lives until the process ends: closing a chDB session that ran Distributed queries can
# hang in its teardown, so the process leaves with os._exit instead.
_engines: list[Engine] = []


def check(workdir: Path) -> dict[str, Any]:
    engine = Engine(workdir)
    _engines.append(engine)
    result: dict[str, Any] = {
        "macros": {r["macro"]: r["substitution"] for r in engine.rows("SELECT macro, substitution FROM system.macros")},
        "clusters": engine.rows("SELECT cluster, host_name, is_local FROM system.clusters WHERE cluster = 'pulse'"),
        "files": [path.relative_to(ROOT).as_posix() for path in effective_schema()],
    }
    result["parsed"] = {
        path.name: [engine.run(f"EXPLAIN AST {sql}") for sql in statements(path)]
        for path in sorted(CLUSTER_SCHEMA.glob("*.sql"))}

    # As the init script runs it: one database, `--database`, statement by statement.
    engine.run("CREATE DATABASE verbatim")
    engine.run("USE verbatim")
    result["verbatim"] = {
        "errors": {path.name: [e for e in (engine.run(sql) for sql in statements(path)) if e]
                   for path in effective_schema()},
        "replicas": engine.rows("SELECT table, zookeeper_path, replica_name, replica_path FROM system.replicas"
                                " WHERE database = 'verbatim' ORDER BY table"),
        "objects": _objects(engine, "verbatim"),
        "engines": {r["name"]: r["engine_full"] for r in engine.rows(
            "SELECT name, engine_full FROM system.tables WHERE database = 'verbatim' ORDER BY name")},
    }

    inserts = _rows_for_windows()
    columns = ", ".join(f"`{name}`" for name in inserts[0].column_names)
    runnable: dict[str, Any] = {"errors": {}}
    for database, files, settings in (("single", sorted(SINGLE_SCHEMA.glob("*.sql")), ""),
                                      ("cluster", effective_schema(), f" SETTINGS {_INSERT_SETTINGS}")):
        engine.run(f"CREATE DATABASE {database}")
        engine.run(f"USE {database}")
        runnable["errors"][database] = [e for path in files for e in
                                        (engine.run(without_replication(sql)) for sql in statements(path)) if e]
        for arrow_batch in inserts:
            engine.insert_arrow(f"INSERT INTO {database}.pulse_metrics ({columns}){settings} "
                                f"SELECT {columns} FROM {{source}}", arrow_batch)
        objects = _objects(engine, database)
        runnable[database] = {
            "objects": objects,
            "engines": {r["name"]: r["engine_full"] for r in engine.rows(
                f"SELECT name, engine_full FROM system.tables WHERE database = '{database}' AND engine != 'View'")},
            "columns": {name: _describe(engine, database, name) for name in objects},
            "views": {name: _view_result(engine, database, name) for name, kind in objects.items() if kind == "View"},
            "local_rows": engine.rows(f"SELECT count() AS n FROM {database}."
                                      f"{'pulse_metrics_local' if database == 'cluster' else 'pulse_metrics'}"),
        }
    result["runnable"] = runnable
    result["stripped_engines"] = {path.name: [m.group(0) for m in _REPLICATION_ARGS.finditer(path.read_text())]
                                  for path in sorted(CLUSTER_SCHEMA.glob("*.sql"))}
    return result


def main() -> None:
    """`python -m tests.support.chdb_cluster WORKDIR`: writes WORKDIR/result.json."""
    workdir = Path(sys.argv[1])
    os.environ.setdefault("CLICKHOUSE_REPLICA", REPLICA)
    os.environ.setdefault("CLICKHOUSE_CLUSTER_SECRET", SECRET)
    code = 1
    try:
        (workdir / "result.json").write_text(json.dumps(check(workdir / "chdb"), default=str))
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    main()
