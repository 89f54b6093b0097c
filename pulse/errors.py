"""Errors a user can cause: each is a type, raised where the condition is known, carrying its exit
code and the one line the CLI prints (what happened, what to do). Anything else is unexpected and
gets a traceback in the log.

This module is at the bottom of the layers (beside model and settings): any layer may raise these.
"""

from __future__ import annotations

import re
from pathlib import Path


class PulseError(Exception):
    """Exit 1 and `line(logs)`: by default the message itself, which Pulse wrote as one line."""

    exit_code = 1

    def line(self, logs: Path) -> str:
        """The one line on stderr; `logs` is the run's log folder, for errors that point there."""
        return str(self) or type(self).__name__


class UsageError(PulseError):
    """A command line or input that cannot work as given: exit 2 with what to change."""

    exit_code = 2


class Unavailable(PulseError):
    """Something the command needs is missing or unreachable (Java, the jars, Kafka, the exchange)."""


class StoreError(PulseError, RuntimeError):
    """ClickHouse refused or failed a statement (chDB in-process, or a server over HTTP)."""

    def __init__(self, message: str, over_http: bool) -> None:
        super().__init__(message)
        self.over_http = over_http

    def line(self, logs: Path) -> str:
        if not self.over_http:
            return f"ClickHouse refused the query: {first_line(str(self))}"
        text = str(self)
        # The HTTP client's own words are a paragraph; these two are what a user acts on.
        if refused := re.search(r"host='([^']*)', port=(\d+)\).*Connection refused", text, re.DOTALL):
            what = f"connection refused at {refused[1]}:{refused[2]} (is the server running?)"
        elif "timed out" in text:
            what = "the server did not answer in time (timed out; PULSE_CLICKHOUSE__TIMEOUT_S)"
        else:
            what = first_line(text)
        return f"ClickHouse (HTTP) failed: {what}; check PULSE_CLICKHOUSE__* settings"


class JobFailed(PulseError, RuntimeError):
    """A streaming query of the Spark job failed; Spark's own log has the rest."""

    def line(self, logs: Path) -> str:
        return f"the Spark job failed: {first_line(str(self))}; Spark's log: {logs / 'spark.log'}"


class JobStalled(JobFailed):
    """A Real-Time Mode batch that neither ends nor fails."""

    def line(self, logs: Path) -> str:
        return f"the Spark job stalled: {first_line(str(self))}; Spark's log: {logs / 'spark.log'}"


class SparkStartFailed(PulseError):
    """Spark (its JVM) did not start."""

    def line(self, logs: Path) -> str:
        return f"Spark failed to start: {first_line(str(self))}; see {logs / 'spark-jvm.log'}"


def first_line(text: str, limit: int = 300) -> str:
    """The first line of a message, cut to `limit` characters."""
    text = text.strip().splitlines()[0] if text.strip() else ""
    text = text.split(" Expected one of:")[0]  # ClickHouse lists every token it would have taken
    return text if len(text) <= limit else text[:limit - 1] + "…"
