"""Class-data archives for the JVMs Pulse starts: the Kafka broker, its storage formatter, Spark's driver.

A JVM start spends most of its CPU loading, parsing and verifying classes (thousands for the
broker, more than ten thousand for Spark with the Kafka connector), and on two cores that CPU is
the start's wall time. Application class-data sharing (AppCDS, JDK 13+) keeps them ready: one run
whose JVMs dump the classes they loaded at exit (`-XX:ArchiveClassesAtExit`), then every later
start maps that archive (`-XX:SharedArchiveFile`). `make setup` runs that one replay
(`python -m pulse.warmup`); the archives sit beside the jars they were made from, in
`<jars_dir>/class-archives/`. bench/startup_bench.py measures the gain against starts without them.

An archive that does not match the JVM (another JDK build, another classpath) is refused by the
JVM with a warning in its log, and the start goes on without it (`-Xshare:auto`, the default). A
truncated archive, on the other hand, crashes the JVM: an archive is only kept once a JVM mapped
it with sharing required (`keep_written`).
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path

from pulse.settings import ClassArchives

FOLDER = "class-archives"
_PART = ".jsa.part"


def archive_options(jars_dir: Path, jvm: str, mode: ClassArchives) -> list[str]:
    """The JVM options for the archive of `jvm` (a name such as "kafka-broker")."""
    folder = jars_dir / FOLDER
    if mode == "write":
        folder.mkdir(parents=True, exist_ok=True)
        # Written under another name and renamed once checked: a JVM mapping a half-written archive crashes.
        return [f"-XX:ArchiveClassesAtExit={folder / jvm}{_PART}"]
    archive = folder / f"{jvm}.jsa"
    return [f"-XX:SharedArchiveFile={archive}"] if mode == "use" and archive.exists() else []


def jit_options(quick: bool) -> list[str]:
    """A short-lived JVM spends much of its CPU in the C2 compiler on code it leaves before that
    pays off; stopping at C1 keeps the compiled code's fast start (bench/startup_bench.py)."""
    return ["-XX:TieredStopAtLevel=1"] if quick else []


def keep_written(jars_dir: Path, classpaths: Mapping[str, str], timeout_s: float = 60.0) -> dict[str, str]:
    """Each archive the warm-up's JVMs wrote becomes the one later starts map, if a JVM with the same
    classpath maps it with sharing required (`-Xshare:on` fails instead of going on without it).
    Returns, per JVM, "kept" or why not."""
    folder = jars_dir / FOLDER
    outcome: dict[str, str] = {}
    for jvm, classpath in classpaths.items():
        part = folder / f"{jvm}{_PART}"
        if not part.exists():
            outcome[jvm] = "not written (the JVM did not exit normally)"
            continue
        # In the archives' folder: a JVM that crashes on a bad archive leaves its hs_err file there, and it goes.
        check = subprocess.run(["java", "-Xshare:on", f"-XX:SharedArchiveFile={part}", "-XX:ErrorFile=crash.log",
                                "-cp", classpath, "-version"], cwd=folder, capture_output=True, text=True,
                               timeout=timeout_s, check=False)
        (folder / "crash.log").unlink(missing_ok=True)
        if check.returncode == 0:
            part.replace(folder / f"{jvm}.jsa")
            outcome[jvm] = "kept"
        else:
            part.unlink()
            lines = (check.stderr or check.stdout).strip().splitlines()
            outcome[jvm] = f"refused by the JVM ({lines[-1] if lines else f'exit {check.returncode}'})"
    return outcome
