"""Where the Spark job's output lands: one small sink per ClickHouse table, each with `write(batch)`.

A batch is an Arrow table whose columns are the table's (by name); the version column it carries
(a window's trade count) makes a replayed batch overwrite itself (ReplacingMergeTree) instead of adding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import pyarrow as pa

from pulse.storage.clickhouse import ClickHouseTransport


class Sink(Protocol):
    def write(self, batch: pa.Table) -> None: ...


class TableSink:
    def __init__(self, transport: ClickHouseTransport, table: str) -> None:
        self._transport = transport
        self.table = table
        self.rows = 0

    def write(self, batch: pa.Table) -> None:
        self._transport.insert_arrow(self.table, batch)
        self.rows += batch.num_rows


@dataclass(frozen=True)
class PulseSinks:
    """The three outputs of the job: windows, rejected messages, and one health row per micro-batch."""

    metrics: Sink
    rejects: Sink
    health: Sink

    @classmethod
    def clickhouse(cls, transport: ClickHouseTransport) -> PulseSinks:
        return cls(metrics=TableSink(transport, "pulse_metrics"), rejects=TableSink(transport, "pulse_rejects"),
                   health=TableSink(transport, "pulse_health"))
