"""What the HTTP transport sends to ClickHouse, recorded by a tiny local HTTP server.

The ClickHouse server exists only in the docker stack; here the transport talks to a stand-in on
127.0.0.1 that answers the client's handshake and records every request, so the test checks the
INSERT statement, the database, the format, the async-insert settings and the Arrow payload.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pyarrow as pa
import pytest
from pydantic import SecretStr

from pulse.settings import ClickHouseSettings
from pulse.storage.clickhouse import ASYNC_INSERT_SETTINGS, HttpTransport


@dataclass
class Request:
    method: str
    path: str
    params: dict[str, str]
    headers: dict[str, str]
    body: bytes

    @property
    def query(self) -> str:
        return self.params.get("query") or self.body.decode(errors="replace")


class _Recorder(BaseHTTPRequestHandler):
    requests: list[Request]

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.headers.get("Transfer-Encoding") == "chunked":
            body = self._read_chunked()
        split = urlsplit(self.path)
        params = {k: v[-1] for k, v in parse_qs(split.query).items()}
        request = Request(self.command, split.path, params, dict(self.headers.items()), body)
        self.requests.append(request)
        answer = b""
        if "version()" in request.query:
            answer = b"25.8.1.1\tUTC\n"  # the handshake: server version and time zone
        self.send_response(200)
        self.send_header("Content-Type", "text/tab-separated-values; charset=UTF-8")
        self.send_header("X-ClickHouse-Format", "TabSeparated")
        self.send_header("X-ClickHouse-Summary", '{"written_rows":"0"}')
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def _read_chunked(self) -> bytes:
        data = b""
        while True:
            size = int(self.rfile.readline().strip(), 16)
            if size == 0:
                self.rfile.readline()
                return data
            data += self.rfile.read(size)
            self.rfile.readline()

    do_GET = _handle
    do_POST = _handle


@pytest.fixture
def recorder() -> Iterator[tuple[int, list[Request]]]:
    requests: list[Request] = []
    handler = type("Handler", (_Recorder,), {"requests": requests})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], requests
    server.shutdown()
    server.server_close()


def test_insert_arrow_sends_one_async_insert_in_arrow_format(recorder):
    port, requests = recorder
    transport = HttpTransport(ClickHouseSettings(transport="http", host="127.0.0.1", port=port, database="pulse",
                                                 username="pulse_writer", password=SecretStr("s3cret")))
    handshake = len(requests)
    batch = pa.table({"symbol": ["BTCUSDT", "ETHUSDT"], "vwap": [42_000.5, 2_300.25],
                      "window_start": pa.array([1_704_067_200_000, 1_704_067_201_000], pa.timestamp("ms", "UTC")),
                      "version": pa.array([7, 7], pa.uint64())})
    transport.insert_arrow("pulse_metrics", batch)
    transport.insert_arrow("pulse_metrics", batch.slice(0, 0))  # an empty batch is not sent at all
    transport.close()

    (insert,) = requests[handshake:]
    assert insert.method == "POST"
    statement = " ".join(insert.query.split())
    assert statement.startswith("INSERT INTO `pulse`.`pulse_metrics`"), statement
    assert statement.endswith("FORMAT Arrow"), statement
    assert statement == "INSERT INTO `pulse`.`pulse_metrics` (`symbol`, `vwap`, `window_start`, `version`) FORMAT Arrow"
    for name, value in ASYNC_INSERT_SETTINGS.items():
        assert insert.params.get(name) == str(value), (name, insert.params)
    assert insert.params.get("database") == "pulse"
    assert insert.headers["Authorization"] == "Basic " + base64.b64encode(b"pulse_writer:s3cret").decode()
    # No HTTP session: concurrent inserts from the sinks and the health listener must not lock each other out.
    assert all("session_id" not in r.params for r in requests)
    sent = pa.ipc.open_file(pa.BufferReader(insert.body)).read_all()
    assert sent.equals(batch), sent
