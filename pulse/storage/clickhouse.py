"""ClickHouse storage: one interface, two transports, same Arrow batches.

- `ChdbTransport`: the ClickHouse engine in this process (chDB), for the embedded default.
  A chDB store can be opened by one process at a time, so every user of the store in the process
  shares one transport (and its lock: Spark calls the sink from its callback thread).
- `HttpTransport`: clickhouse-connect over HTTP, for the docker stack and real servers. Frequent
  small inserts go through ClickHouse's asynchronous inserts, waited for, as ClickHouse advises.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc

from pulse.errors import StoreError
from pulse.settings import ClickHouseSettings

# ClickHouse's guidance for many small inserts: let the server buffer and merge them into parts,
# but wait for the flush so that a micro-batch counts as written only once it is durable.
ASYNC_INSERT_SETTINGS: dict[str, Any] = {
    "async_insert": 1,
    "wait_for_async_insert": 1,
    "async_insert_busy_timeout_ms": 200,
}


class ClickHouseTransport(Protocol):
    database: str

    # Where the store is (a folder, or host:port), and whether it is a local store this process
    # owns (created with its schema, dropped on reset, merged at the end of a run).
    @property
    def address(self) -> str: ...

    @property
    def local(self) -> bool: ...

    def command(self, sql: str) -> None: ...

    def insert_arrow(self, table: str, data: pa.Table) -> None: ...

    def query_arrow(self, sql: str) -> pa.Table: ...

    def query_text(self, sql: str, fmt: str = "PrettyCompactMonoBlock") -> str: ...

    def close(self) -> None: ...


def quote_identifier(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def insert_columns_sql(database: str, table: str, columns: list[str], source: str) -> str:
    cols = ", ".join(quote_identifier(c) for c in columns)
    return (f"INSERT INTO {quote_identifier(database)}.{quote_identifier(table)} ({cols}) "
            f"SELECT {cols} FROM {source}")


# At most this many rows go into chDB as JSON text in the INSERT itself; larger batches go through
# chDB's Python() table function, which reads Arrow directly but costs about twice as much per
# insert at a few rows (11 against 23 ms for 3 rows of pulse_metrics, measured on this kind of
# machine): the store writer inserts a few windows every few milliseconds.
INLINE_ROWS = 256


def _spelled_as_is(kind: pa.DataType) -> bool:
    return bool(pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)
                or pa.types.is_string(kind) or pa.types.is_large_string(kind))


def json_each_row(data: pa.Table) -> str | None:
    """`data` as JSONEachRow lines, or None when a column has a type this does not spell exactly.

    Timestamps become ISO 8601 in UTC with a `Z` (read with best-effort parsing, whatever the
    column's time zone); NaN and infinities stay as ClickHouse reads them; strings are JSON-escaped
    (a NUL byte or a quote in a symbol is data, never SQL).
    """
    columns: dict[str, list[Any]] = {}
    for name, column in zip(data.column_names, data.columns, strict=True):
        kind = column.type
        if pa.types.is_timestamp(kind):
            utc = column.cast(pa.timestamp(kind.unit, tz="UTC"))
            columns[name] = pc.strftime(utc, "%Y-%m-%dT%H:%M:%SZ").to_pylist()
        elif _spelled_as_is(kind.value_type if pa.types.is_dictionary(kind) else kind):
            columns[name] = column.to_pylist()
        else:
            return None
    names = list(columns)
    return "\n".join(json.dumps(dict(zip(names, row, strict=True))) for row in zip(*columns.values(), strict=True))


def _raising_store_errors(kind: type[BaseException] | tuple[type[BaseException], ...],
                          over_http: bool) -> Callable[[], AbstractContextManager[None]]:
    """A context manager factory turning the engine's or client's own error into a StoreError."""
    @contextlib.contextmanager
    def refused() -> Iterator[None]:
        try:
            yield
        except kind as error:
            raise StoreError(str(error), over_http) from error
    return refused


class ChdbEngine:
    """The in-process ClickHouse engine over one store directory.

    chDB lets one process open a store once, so the engine is shared: every database used in the
    process gets a `ChdbTransport` view on it, and a lock serialises queries (Spark calls the sink
    from its callback thread while the live view reads from another).
    """

    _open: dict[Path, ChdbEngine] = {}  # noqa: RUF012 - process-wide registry by design

    def __init__(self, path: Path) -> None:
        from chdb import ChdbError, session  # noqa: PLC0415 - heavy import only when the engine is used

        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._session = session.Session(str(path))
        self.lock = threading.Lock()
        # chDB 26.9's session raises chdb._exceptions.ChdbError, a RuntimeError that is not the
        # chdb.ChdbError the package exports: both are the engine refusing a statement.
        self._refused = _raising_store_errors((ChdbError, RuntimeError), over_http=False)

    @classmethod
    def is_open(cls, path: Path) -> bool:
        return path.resolve() in cls._open

    @classmethod
    def at(cls, path: Path) -> ChdbEngine:
        key = path.resolve()
        if key not in cls._open:
            cls._open[key] = cls(key)
        return cls._open[key]

    def query(self, sql: str, database: str, fmt: str = "CSV") -> object:
        with self.lock, self._refused():
            self._session.query(f"USE {quote_identifier(database)}")
            return self._session.query(sql, fmt)

    def insert_arrow(self, sql: str, arrow_batch: pa.Table) -> None:
        # chDB's Python() table function finds the Arrow table by its variable name in this frame.
        with self.lock, self._refused():
            self._session.query(sql.replace("{source}", "Python(arrow_batch)"))

    def execute(self, sql: str) -> None:
        """A statement that names its database itself (no USE first)."""
        with self.lock, self._refused():
            self._session.query(sql)

    def close(self) -> None:
        with self.lock:
            self._session.close()
        ChdbEngine._open.pop(self.path, None)


class ChdbTransport:
    local = True

    def __init__(self, path: Path, database: str) -> None:
        self.database = database
        self.address = str(path)
        self.engine = ChdbEngine.at(path)
        with self.engine.lock:
            self.engine._session.query(f"CREATE DATABASE IF NOT EXISTS {quote_identifier(database)}")

    def recreate(self) -> None:
        """Drop this database and start it empty (a fresh run); the store's other databases stay."""
        name = quote_identifier(self.database)
        with self.engine.lock:
            # USE another database first: the session must not stand in the one it drops.
            self.engine._session.query("USE system")
            self.engine._session.query(f"DROP DATABASE IF EXISTS {name}")
            self.engine._session.query(f"CREATE DATABASE {name}")

    def command(self, sql: str) -> None:
        self.engine.query(sql, self.database)

    def insert_arrow(self, table: str, data: pa.Table) -> None:
        if data.num_rows == 0:
            return
        rows = json_each_row(data) if data.num_rows <= INLINE_ROWS else None
        if rows is not None:
            cols = ", ".join(quote_identifier(c) for c in data.column_names)
            self.engine.execute(f"INSERT INTO {quote_identifier(self.database)}.{quote_identifier(table)} ({cols}) "
                                f"SETTINGS date_time_input_format = 'best_effort' FORMAT JSONEachRow\n{rows}")
            return
        self.engine.insert_arrow(insert_columns_sql(self.database, table, data.column_names, "{source}"), data)

    def query_arrow(self, sql: str) -> pa.Table:
        table: pa.Table = self.engine.query(sql, self.database, "ArrowTable")
        return table

    def query_text(self, sql: str, fmt: str = "PrettyCompactMonoBlock") -> str:
        return str(self.engine.query(sql, self.database, fmt))

    def close(self) -> None:
        """Close the engine (the whole store): call once, when the process is done with it."""
        self.engine.close()


class HttpTransport:
    local = False

    def __init__(self, settings: ClickHouseSettings) -> None:
        import clickhouse_connect  # noqa: PLC0415
        from clickhouse_connect.driver.exceptions import Error  # noqa: PLC0415

        self.database = settings.database
        self.address = store_address(settings, Path())
        self._refused = _raising_store_errors(Error, over_http=True)
        with self._refused():
            self._client = self._connect(clickhouse_connect, settings)

    @staticmethod
    def _connect(clickhouse_connect: Any, settings: ClickHouseSettings) -> Any:
        return clickhouse_connect.get_client(
            host=settings.host, port=settings.port, username=settings.username,
            password=settings.password.get_secret_value(), database=settings.database,
            secure=settings.secure, settings=ASYNC_INSERT_SETTINGS,
            connect_timeout=settings.timeout_s, send_receive_timeout=settings.timeout_s,
            # The metrics sink, the rejects sink and the health listener insert from different
            # threads at once; a shared HTTP session would refuse them (SESSION_IS_LOCKED).
            autogenerate_session_id=False,
        )

    def command(self, sql: str) -> None:
        with self._refused():
            self._client.command(sql)

    def insert_arrow(self, table: str, data: pa.Table) -> None:
        if data.num_rows == 0:
            return
        with self._refused():
            self._client.insert_arrow(table, data, database=self.database, settings=ASYNC_INSERT_SETTINGS)

    def query_arrow(self, sql: str) -> pa.Table:
        with self._refused():
            table: pa.Table = self._client.query_arrow(sql)
        return table

    def query_text(self, sql: str, fmt: str = "PrettyCompactMonoBlock") -> str:
        with self._refused():
            return str(self._client.raw_query(f"{sql} FORMAT {fmt}").decode())

    def close(self) -> None:
        self._client.close()


def split_statements(sql_text: str) -> list[str]:
    """Split a schema file on `;` at line ends, dropping comment-only chunks."""
    statements = []
    for chunk in sql_text.split(";\n"):
        code = "\n".join(line for line in chunk.splitlines() if not line.strip().startswith("--"))
        if code.strip().rstrip(";").strip():
            statements.append(code.strip().rstrip(";"))
    return statements


def schema_files(schema_dir: Path) -> list[Path]:
    files = sorted(schema_dir.glob("*.sql"))
    if not files:
        raise FileNotFoundError(f"no *.sql under {schema_dir}: unset PULSE_SCHEMA_DIR to use the packaged schema")
    return files


def apply_schema(transport: ClickHouseTransport, schema_dir: Path) -> None:
    """Create every table and view from `pulse/resources/schema/*.sql` (the same files the server runs)."""
    for path in schema_files(schema_dir):
        for statement in split_statements(path.read_text()):
            transport.command(statement)


def store_address(settings: ClickHouseSettings, chdb_path: Path) -> str:
    """Where `settings` put the store: the chDB folder, or the server's host:port."""
    return f"{settings.host}:{settings.port}" if settings.transport == "http" else str(chdb_path)


def open_transport(settings: ClickHouseSettings, chdb_path: Path, fresh: bool = False) -> ClickHouseTransport:
    """The store `settings` name. `fresh`: a local store's database starts empty (a server's is never
    dropped)."""
    if settings.transport == "http":
        return HttpTransport(settings)
    transport = ChdbTransport(chdb_path, settings.database)
    if fresh:
        transport.recreate()
    return transport
