"""`make setup`'s last step (`python -m pulse.warmup`): the JVMs' class archives (pulse.jvm).

The plan: the demo's replay of the bundled recording, in a folder of its own, on the embedded
broker and chDB whatever the settings name, with `class_archives="write"`: the storage formatter,
the broker and Spark's driver each dump the classes they loaded when they exit. Each archive is
then checked and kept beside the jars. Later starts of those JVMs map them.

A warm-up that fails costs only the speed-up: it says why in one line and setup goes on.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from pulse.broker.local_kafka import LocalKafkaBroker
from pulse.compute.spark_session import end_driver_jvm
from pulse.demo import BUNDLED_RECORDING, demo_plan
from pulse.errors import PulseError
from pulse.jvm import FOLDER, keep_written
from pulse.runtime import Lines, run
from pulse.settings import PulseSettings


def write_class_archives(settings: PulseSettings, say: Callable[[str], None]) -> dict[str, str]:
    """Per JVM, "kept" or why its archive was not."""
    with tempfile.TemporaryDirectory(prefix="pulse-warm-up-") as folder:
        warm = settings.override(data_dir=Path(folder), class_archives="write", kafka={"bootstrap_servers": None},
                                 clickhouse={"transport": "chdb", "chdb_path": None})
        run(demo_plan(warm, BUNDLED_RECORDING, None, None), Lines(say, numbered=False))
        jvms = {**LocalKafkaBroker(warm.jars_dir, warm.data_dir).archived_jvms, **end_driver_jvm()}
    return keep_written(settings.jars_dir, jvms)


def main() -> int:
    say = print
    settings = PulseSettings()
    say(f"warm-up: one replay whose JVMs write their class archives to {settings.jars_dir / FOLDER}")
    try:
        outcome = write_class_archives(settings, lambda line: say(f"  {line.strip()}"))
    except (PulseError, OSError) as error:
        say(f"warm-up: no class archives written, JVMs start without them ({error})")
        return 0
    for jvm, what in outcome.items():
        say(f"warm-up: {jvm}: {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
