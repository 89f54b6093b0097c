"""Start-up benchmark: the JVMs Pulse starts, mapping the class archives `make setup` wrote and compiling
with C1 only (a run that ends by itself, PULSE_JIT=auto), vs without them.

Three variants of each start, in the same run, alternating round by round so that a busier minute
of the machine hits all: class archives and C1 only (what a replay gets); class archives and the
full JIT (`PULSE_JIT=full`, what a run until Ctrl-C gets); neither (`PULSE_CLASS_ARCHIVES=off`,
`PULSE_JIT=full`: the peer, a JVM as it comes). Measured per start:

- the embedded Kafka broker: `LocalKafkaBroker.start()` (storage formatter + node JVM, until the
  port accepts) and its stop, wall time and the CPU time of its JVMs;
- a whole `pulse demo --speed max` (broker, chDB, Spark in Real-Time Mode, the bundled recording,
  teardown), as a user runs it: wall time only, since Spark's JVM outlives the command by a moment
  (it exits when its standard input closes) and its CPU time reaches no parent's accounting.

Run: `make bench-startup` (python -m bench.startup_bench [--rounds N] [--only broker|demo]).
Prints a markdown table for docs/benchmarks.md. Not a test: it reports, it does not assert.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pulse.broker.local_kafka import LocalKafkaBroker
from pulse.jvm import FOLDER
from pulse.settings import ClassArchives, JitMode, PulseSettings

# name -> (class archives, JIT); the last is the peer.
VARIANTS: dict[str, tuple[ClassArchives, JitMode]] = {
    "archives, C1 only (a replay's)": ("use", "quick"),
    "archives, full JIT (a run until Ctrl-C's)": ("use", "full"),
    "neither (peer)": ("off", "full"),
}


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def broker_start(jars_dir: Path, archives: ClassArchives, jit: JitMode) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="pulse-bench-broker-") as folder:
        broker = LocalKafkaBroker(jars_dir, Path(folder), class_archives=archives, quick_jit=jit == "quick")

        cpu, begin = _children_cpu_s(), time.monotonic()
        broker.start()
        started = time.monotonic() - begin
        broker.stop()  # the JVMs were waited for: their CPU time is in this process's children's
        return started, _children_cpu_s() - cpu


def demo_run(archives: ClassArchives, jit: JitMode) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="pulse-bench-demo-") as folder:
        command = [sys.executable, "-m", "pulse.cli", "demo", "--speed", "max", "--no-live-view", "--data-dir", folder]
        env = {**os.environ, "PULSE_CLASS_ARCHIVES": archives, "PULSE_JIT": jit}
        wall = time.monotonic()
        subprocess.run(command, cwd=folder, env=env, check=True, stdout=subprocess.DEVNULL)
        return time.monotonic() - wall, math.nan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="starts of each kind and variant")
    parser.add_argument("--only", choices=["broker", "demo"], help="measure one kind of start")
    parser.add_argument("--json", action="store_true", help="end with one JSON line of the headline numbers")
    args = parser.parse_args()
    settings = PulseSettings()
    archives = sorted(p.name for p in (settings.jars_dir / FOLDER).glob("*.jsa"))
    if not archives:
        sys.exit(f"no class archives in {settings.jars_dir / FOLDER}: run `make setup` first")
    kinds: dict[str, Callable[[ClassArchives, JitMode], tuple[float, float]]] = {
        "broker": lambda archives, jit: broker_start(settings.jars_dir, archives, jit), "demo": demo_run}
    if args.only:
        kinds = {args.only: kinds[args.only]}

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
          f"archives: {', '.join(archives)}; {args.rounds} rounds, alternating")
    samples: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for _ in range(args.rounds):
        for kind, start in kinds.items():
            for name, (mapped, jit) in VARIANTS.items():
                samples.setdefault((kind, name), []).append(start(mapped, jit))
    print()
    print("| start | variant | wall, median (s) | CPU, median (s) |")
    print("|---|---|---:|---:|")
    headline: dict[str, float] = {}
    medians: dict[tuple[str, str], tuple[float, float]] = {}
    names = list(VARIANTS)
    first, peer = names[0], names[-1]
    for kind in kinds:
        for name, (mapped, jit) in VARIANTS.items():
            walls, cpus = zip(*samples[(kind, name)], strict=True)
            wall, cpu = medians[(kind, name)] = statistics.median(walls), statistics.median(cpus)
            headline[f"{kind}_{mapped}_{jit}_wall_s"], headline[f"{kind}_{mapped}_{jit}_cpu_s"] = wall, cpu
            print(f"| {'embedded broker start' if kind == 'broker' else 'pulse demo --speed max'} | {name} "
                  f"| {wall:.2f} | {_cell(cpu)} |")
        (wall_a, cpu_a), (wall_p, cpu_p) = medians[(kind, first)], medians[(kind, peer)]
        print(f"| {kind}: peer / {first} | | {wall_p / wall_a:.2f}x | {_cell(cpu_p / cpu_a, 'x')} |")
    if args.json:
        print(json.dumps({key: value for key, value in headline.items() if not math.isnan(value)}))


def _cell(value: float, unit: str = "") -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}{unit}"


if __name__ == "__main__":
    main()
