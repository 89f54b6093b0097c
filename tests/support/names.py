"""Per-run names, so tests sharing one broker and one chDB store never see each other's data."""

from __future__ import annotations

import uuid


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"
