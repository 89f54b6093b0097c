"""A real Spark standalone cluster on loopback, from pyspark's own distribution, for the scale-out tests.

`spark-class org.apache.spark.deploy.master.Master` and `...worker.Worker` are the classes Spark's
`sbin/start-master.sh` and `start-worker.sh` run, started here in the foreground so this process
owns them: each is tied to it with PR_SET_PDEATHSIG (kept across the `exec` that turns
`spark-class` into the JVM), so even a `kill -9` of pytest takes them along. Executors are the
workers' children; they exit when their worker goes (Spark's WorkerWatcher), and `kill_worker`
takes them down with it, as a lost machine would.

Everything lives under one root folder: logs, the workers' work dirs (where executors run and
fetch the application's jars), so `leftovers(root)` finds any process that outlived a test.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pyspark

from pulse.broker.local_kafka import free_port

SPARK_HOME = Path(pyspark.__file__).resolve().parent
SPARK_CLASS = SPARK_HOME / "bin" / "spark-class"
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """preexec_fn: the kernel SIGKILLs the child when this process dies (no orphan JVMs)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def spark_env(root: Path) -> dict[str, str]:
    """The environment of Spark's daemons: loopback only, and nothing inherited from a developer's Spark."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPARK_", "PYSPARK_"))}
    env.update({
        "SPARK_HOME": str(SPARK_HOME),
        # Binds the daemons' RPC and web UIs to loopback (the UIs default to 0.0.0.0 otherwise).
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_LOG_DIR": str(root / "logs"),
        # Marks the daemons' command lines, so a leftover is recognisable by its root folder.
        # C1 only, as the runs they serve get (PULSE_JIT=auto): the daemons mostly wait on two cores.
        "SPARK_DAEMON_JAVA_OPTS": f"-Dpulse.test.root={root} -XX:TieredStopAtLevel=1",
    })
    return env


@dataclass
class Worker:
    index: int
    cores: int
    memory: str
    process: subprocess.Popen[bytes]
    log: Path
    work_dir: Path
    executors_seen: set[int] = field(default_factory=set)


class StandaloneCluster:
    """One master and any number of workers, each a JVM this process started and owns."""

    def __init__(self, root: Path, start_timeout_s: float = 90.0) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"spark://127.0.0.1:{self.port}"
        self._timeout_s = start_timeout_s
        self._master: subprocess.Popen[bytes] | None = None
        self.workers: list[Worker] = []
        (root / "logs").mkdir(parents=True, exist_ok=True)

    def _spawn(self, log: Path, *args: str) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            return subprocess.Popen([str(SPARK_CLASS), *args], stdout=out, stderr=subprocess.STDOUT,
                                    env=spark_env(self.root), cwd=self.root,
                                    preexec_fn=die_with_parent)  # noqa: PLW1509 - no threads run Python here

    def _wait_for(self, process: subprocess.Popen[bytes], log: Path, marker: str, what: str,
                  after: int = 0) -> None:
        deadline = time.monotonic() + self._timeout_s
        while marker not in log.read_text(errors="replace")[after:]:
            if process.poll() is not None:
                raise RuntimeError(f"{what} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not ready in {self._timeout_s:.0f}s:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)

    def start_master(self) -> str:
        log = self.root / "logs" / "master.log"
        self._master = self._spawn(log, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                                   "--port", str(self.port), "--webui-port", "0")
        self._wait_for(self._master, log, "I have been elected leader", "the Spark master")
        return self.url

    def start_worker(self, cores: int, memory: str = "1g", index: int | None = None) -> Worker:
        """A worker (a new one, or `index` again after `kill_worker`), registered with the master."""
        index = len(self.workers) if index is None else index
        log = self.root / "logs" / f"worker-{index}.log"
        work_dir = self.root / f"worker-{index}"
        offset = log.stat().st_size if log.exists() else 0
        process = self._spawn(log, "org.apache.spark.deploy.worker.Worker", self.url, "--host", "127.0.0.1",
                              "--cores", str(cores), "--memory", memory, "--work-dir", str(work_dir),
                              "--webui-port", "0")
        worker = Worker(index, cores, memory, process, log, work_dir)
        self._wait_for(process, log, "Successfully registered with master", f"Spark worker {index}", offset)
        if index < len(self.workers):
            self.workers[index] = worker
        else:
            self.workers.append(worker)
        return worker

    def executors(self, worker: Worker) -> list[psutil.Process]:
        """The executor JVMs this worker launched (and remembers them for `leftovers`)."""
        try:
            children = psutil.Process(worker.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        found = [child for child in children if _is_executor(child)]
        worker.executors_seen.update(child.pid for child in found)
        return found

    def kill_worker(self, index: int) -> list[int]:
        """SIGKILL a worker and its executors at once, as the loss of its machine would; their pids."""
        worker = self.workers[index]
        victims = [psutil.Process(worker.process.pid), *self.executors(worker)]
        for victim in victims:
            with contextlib.suppress(psutil.NoSuchProcess):
                victim.kill()
        worker.process.wait(timeout=30)
        psutil.wait_procs(victims, timeout=30)
        return [victim.pid for victim in victims]

    def stop(self) -> None:
        """Workers first (they stop their executors), then the master; SIGKILL what lingers."""
        processes = [w.process for w in self.workers]
        for worker in self.workers:
            self.executors(worker)
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            _wait_or_kill(process)
        if self._master is not None:
            if self._master.poll() is None:
                self._master.terminate()
            _wait_or_kill(self._master)
        # Executors of a worker that was SIGTERMed are told to stop; give them their moment.
        pids = [pid for w in self.workers for pid in w.executors_seen]
        survivors = [p for p in (_process(pid) for pid in pids) if p is not None]
        _, alive = psutil.wait_procs(survivors, timeout=20)
        for process in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()


def _is_executor(process: psutil.Process) -> bool:
    with contextlib.suppress(psutil.Error):
        return "CoarseGrainedExecutorBackend" in " ".join(process.cmdline())
    return False


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None


def _wait_or_kill(process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def leftovers(root: Path) -> list[str]:
    """Processes (other than this one) whose command line or working directory is under `root`."""
    me = os.getpid()
    marker = str(root)
    found = []
    for process in psutil.process_iter(["pid", "cmdline", "cwd", "status"]):
        info = process.info
        if info["pid"] == me or info["status"] == psutil.STATUS_ZOMBIE:
            continue
        command = " ".join(info["cmdline"] or [])
        if marker in command or (info["cwd"] or "").startswith(marker):
            found.append(f"{info['pid']}: {command[:300]}")
    return found


def app_dirs(worker: Worker) -> list[Path]:
    """The application folders a worker made (one per Spark application it ran executors for)."""
    return sorted(worker.work_dir.glob("app-*")) if worker.work_dir.exists() else []


def shipped_jars(worker: Worker) -> set[str]:
    """Names of the jars executors of this worker fetched from the driver (`spark.jars`)."""
    return {jar.name for app in app_dirs(worker) for jar in app.glob("*/*.jar")}


def master_log_mentions(cluster: StandaloneCluster, pattern: str) -> list[str]:
    log = cluster.root / "logs" / "master.log"
    return re.findall(pattern, log.read_text(errors="replace")) if log.exists() else []
