"""The three images, built once per pytest process on the stand-in bases (`make test-containers`)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from tests.containers.podman import LOG_DIR, TARGETS, Pods, build


@pytest.fixture(scope="session")
def images() -> dict[str, str]:
    """Compose's image name of each target, freshly built (podman's layer cache makes a rebuild quick)."""
    if os.geteuid() != 0 or shutil.which("podman") is None:
        pytest.fail("these tests run as root with podman: use `make test-containers`")
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    built: dict[str, str] = {}
    timings = []
    # The processor first: jupyter reuses its base and spark stages, the producer its base stage.
    for target in TARGETS:
        built[target], took_s = build(target, LOG_DIR / f"build-{target}.log")
        timings.append(f"{target} {took_s:.0f}s")
    (LOG_DIR / "build-times.txt").write_text("\n".join(timings) + "\n")
    return built


@pytest.fixture
def pods() -> Iterator[Pods]:
    started = Pods(LOG_DIR)
    try:
        yield started
    finally:
        started.cleanup()
