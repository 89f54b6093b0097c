"""Per-run names, so tests sharing one broker and one chDB store never see each other's data."""

from __future__ import annotations

import uuid


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def on_broker(bootstrap: str) -> dict[str, str]:
    """The environment of a child `pulse` run that uses the suite's broker instead of starting an
    embedded one (a JVM start less), with topics of its own."""
    run = unique_name("run")
    return {"PULSE_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            **{f"PULSE_KAFKA__{kind.upper()}_TOPIC": f"{run}.{kind}"
               for kind in ("trades", "dead_letter", "gaps", "metrics", "rejects")}}
