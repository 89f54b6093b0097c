"""ClickHouse's HTTP interface, as far as clickhouse-connect (and so `HttpTransport`) uses it, over the real
engine (chDB) of this test process: `pulse process`, `pulse store`, `pulse live` and the notebook in
stack mode write to it as to a ClickHouse server, and the tests read the same store directly.

It speaks what the client sends: the SQL in the body (or in `query`, with an INSERT's data in the
body), `database`, `default_format` and settings as URL parameters, Basic or X-ClickHouse-User/Key
authentication, and ClickHouse's error shape (`Code: N. DB::Exception: ...` with
`X-ClickHouse-Exception-Code`). Faults are knobs: refusing logins, answering 5xx, answering slowly,
or being down (connections refused), so the tests can take ClickHouse away and give it back.
"""

from __future__ import annotations

import base64
import contextlib
import re
import socket
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pyarrow as pa
import pyarrow.ipc

from pulse.broker.local_kafka import free_port
from pulse.storage.clickhouse import ChdbEngine

_FORMAT = re.compile(r"\bFORMAT\s+(\w+)\s*;?\s*$", re.IGNORECASE)
_INSERT = re.compile(r"^\s*INSERT\s+INTO\s+(.+?)\s+FORMAT\s+(\w+)\s*$", re.IGNORECASE | re.DOTALL)
_CODE = re.compile(r"Code: (\d+)")


class ClickHouseHttp:
    """`start()` serves on `port` until `stop()`; `down()`/`up()` take it away and back on the same port."""

    def __init__(self, engine: ChdbEngine, user: str = "default", password: str = "") -> None:
        self.engine, self.user, self.password = engine, user, password
        self.port = free_port()
        self.status: int | None = None  # answer every request with this HTTP status (a 5xx) instead
        self.delay_s = 0.0  # answer every request this much later
        self.requests = 0
        self._server: ThreadingHTTPServer | None = None
        self._connections: set[socket.socket] = set()

    def start(self) -> ClickHouseHttp:
        self._server = _Server(("127.0.0.1", self.port), _handler(self))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="clickhouse-http", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        # Kept-alive connections too: a server that is down answers nothing.
        for connection in list(self._connections):
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        self._connections.clear()

    down = stop  # connections are refused until `up()`

    def up(self) -> ClickHouseHttp:
        return self.start()

    def settings(self, database: str) -> dict[str, Any]:
        """PULSE_CLICKHOUSE__* for this endpoint, as `settings.override(clickhouse=...)` takes them."""
        return {"transport": "http", "host": "127.0.0.1", "port": self.port, "username": self.user,
                "password": self.password, "database": database, "secure": False}

    def env(self, database: str) -> dict[str, str]:
        return {f"PULSE_CLICKHOUSE__{key.upper()}": str(value).lower() if isinstance(value, bool) else str(value)
                for key, value in self.settings(database).items()}

    # -- one request ------------------------------------------------------------------------------

    def answer(self, method: str, path: str, headers: Any, body: bytes) -> tuple[int, dict[str, str], bytes]:
        self.requests += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        url = urllib.parse.urlsplit(path)
        if url.path == "/ping":
            return 200, {}, b"Ok.\n"
        if self.status is not None:
            return self.status, {}, f"injected HTTP {self.status}".encode()
        params = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        if not self._authenticated(headers, params):
            return _error(516, f"{self._who(headers, params)}: Authentication failed: password is incorrect,"
                               " or there is no user with such name", status=401)
        database = params.get("database") or "default"
        # The SQL in `query` and an INSERT's data in the body, or the SQL in the body.
        sql, data = (params["query"], body) if "query" in params else (body.decode(), b"")
        try:
            return self._run(sql.strip(), data, database, params)
        except Exception as error:  # the engine's error, answered in ClickHouse's own shape
            message = str(error).strip()
            code = _CODE.search(message)
            return _error(int(code.group(1)) if code else 1000, message)

    def _run(self, sql: str, data: bytes, database: str, params: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        headers = {"X-ClickHouse-Query-Id": params.get("query_id", str(uuid.uuid4())),
                   "X-ClickHouse-Timezone": "UTC", "X-ClickHouse-Server-Display-Name": "pulse-chdb",
                   "X-ClickHouse-Summary": '{"read_rows":"0","written_rows":"0"}'}
        insert = _INSERT.match(sql)
        if insert is not None and data:
            table, fmt = insert.groups()
            batch = _arrow(data, fmt)
            columns = ", ".join(f"`{name}`" for name in batch.column_names)
            target = table if "(" in table else f"{table} ({columns})"
            self.engine.insert_arrow(f"INSERT INTO {_qualified(target, database)} SELECT {columns} FROM {{source}}",
                                     batch)
            return 200, headers, b""
        fmt_clause = _FORMAT.search(sql)
        fmt = fmt_clause.group(1) if fmt_clause else params.get("default_format", "TabSeparated")
        if fmt_clause:
            sql = sql[:fmt_clause.start()].rstrip()
        result: Any = self.engine.query(sql, database, fmt)
        headers["X-ClickHouse-Format"] = fmt
        payload = result.bytes() if hasattr(result, "bytes") else bytes(result)
        return 200, headers, payload

    def _authenticated(self, headers: Any, params: dict[str, str]) -> bool:
        user, password = params.get("user"), params.get("password")
        if headers.get("X-ClickHouse-User"):
            user, password = headers.get("X-ClickHouse-User"), headers.get("X-ClickHouse-Key", "")
        auth = headers.get("Authorization", "")
        if auth.startswith("Basic "):
            user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
        return (user or "default") == self.user and (password or "") == self.password

    @staticmethod
    def _who(headers: Any, params: dict[str, str]) -> str:
        auth = headers.get("Authorization", "")
        if auth.startswith("Basic "):
            return base64.b64decode(auth[6:]).decode().partition(":")[0]
        return str(headers.get("X-ClickHouse-User") or params.get("user") or "default")


def _qualified(target: str, database: str) -> str:
    """`table (columns)` in `database` unless the client named one."""
    name, _, rest = target.partition(" ")
    return target if "." in name else f"`{database}`.{name} {rest}".rstrip()


def _arrow(data: bytes, fmt: str) -> pa.Table:
    if fmt.lower() == "arrowstream":
        return pa.ipc.open_stream(data).read_all()
    return pa.ipc.open_file(pa.BufferReader(data)).read_all()


def _error(code: int, message: str, status: int = 500) -> tuple[int, dict[str, str], bytes]:
    text = message if message.startswith("Code:") else f"Code: {code}. DB::Exception: {message}"
    return status, {"X-ClickHouse-Exception-Code": str(code)}, text.encode()


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up (its timeout) or a connection `down()` cut is no error of the server's."""


def _handler(endpoint: ClickHouseHttp) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            endpoint._connections.add(self.connection)

        def finish(self) -> None:
            endpoint._connections.discard(self.connection)
            super().finish()

        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            status, headers, payload = endpoint.answer(method, self.path, self.headers, body)
            self.send_response(status)
            for name, value in {**headers, "Content-Length": str(len(payload))}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

        def do_POST(self) -> None:
            self._serve("POST")

        def do_GET(self) -> None:
            self._serve("GET")

        def log_message(self, format: str, *args: Any) -> None:  # the base class's name
            pass

    return Handler
