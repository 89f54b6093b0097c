"""The images as compose runs them, through podman on the host's network.

What a container gets is read from docker-compose.yml, never copied: its image name, its environment
(with `${VAR:-default}` resolved to the default, `${VAR:?...}` to a value the test gives) and its
healthcheck, which runs inside the container with `podman exec` as its image's USER. A test then
points the few addresses compose names (redpanda:9092, clickhouse:8123) at what it started on the
host. Every container's output goes to a file under LOG_DIR, never to the terminal.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.support.names import unique_name

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
# Written by docker/standins/build.sh (`make test-containers`): NAME=image, one per base image.
BUILD_ARGS = ROOT / ".cache" / "standins" / "build-args"
LOG_DIR = ROOT / ".cache" / "containers" / "logs"
# The images compose builds, one Dockerfile target each; the store writer runs the processor's.
TARGETS = ("processor", "jupyter", "producer")
# A compose variable: ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?message}, ${NAME?message}.
_VARIABLE = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m)$")


def services() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())["services"]
    return loaded


def interpolate(value: str, given: Mapping[str, str]) -> str:
    """A compose value with its variables resolved as `docker compose` would from `given` (the .env)."""
    def one(match: re.Match[str]) -> str:
        name, operator, argument = match.groups()
        if name in given:
            return given[name]
        if operator in (":-", "-"):
            return str(argument)
        raise KeyError(f"compose needs {name} ({argument or 'no default'}): give it to the test")

    return _VARIABLE.sub(one, value.replace("$$", "\0")).replace("\0", "$")


def service_env(service: str, given: Mapping[str, str] | None = None,
                overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment compose gives `service`, then the test's `overrides` (addresses, topic names)."""
    raw = services()[service].get("environment", {})
    env = {name: interpolate(str(value), given or {}) for name, value in raw.items()}
    env.update(overrides or {})
    return env


def seconds(duration: str) -> float:
    match = _DURATION.match(duration)
    assert match, f"unsupported compose duration {duration!r}"
    number, unit = float(match.group(1)), match.group(2)
    return number / 1000 if unit == "ms" else number * 60 if unit == "m" else number


def healthcheck(service: str) -> tuple[list[str], float]:
    """The argv of `service`'s compose healthcheck, run inside its container, and its timeout in seconds."""
    check = services()[service]["healthcheck"]
    test = check["test"]
    if test[0] == "CMD":
        argv = [str(word) for word in test[1:]]
    elif test[0] == "CMD-SHELL":
        argv = ["/bin/sh", "-c", str(test[1])]
    else:
        raise AssertionError(f"{service}: unsupported healthcheck form {test[0]!r}")
    return argv, seconds(str(check.get("timeout", "30s")))


def podman(*args: str, timeout_s: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout_s, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args[:3])} failed ({result.returncode}): {result.stderr[-2000:]}")
    return result


def build_args() -> list[str]:
    assert BUILD_ARGS.is_file(), f"{BUILD_ARGS} is missing: run `make test-containers` (it builds the stand-ins)"
    return [f"--build-arg={line.strip()}" for line in BUILD_ARGS.read_text().splitlines() if line.strip()]


def build(target: str, log: Path) -> tuple[str, float]:
    """`target` of docker/Dockerfile built on the stand-in bases, tagged as compose names it; its seconds."""
    image = str(services()[target]["image"])
    started = time.monotonic()
    with log.open("w") as out:
        # --pull=never: the stand-ins are local, and nothing may be looked up in a registry.
        result = subprocess.run(["podman", "build", "--pull=never", "--network=host", "--file", str(DOCKERFILE),
                                 "--target", target, "--tag", image, *build_args(), str(ROOT)],
                                stdout=out, stderr=subprocess.STDOUT, timeout=3600, check=False)
    assert result.returncode == 0, f"building {target} failed, see {log}:\n{log.read_text()[-3000:]}"
    return image, time.monotonic() - started


@dataclass
class Container:
    name: str
    service: str
    image: str
    log: Path

    def running(self) -> bool:
        state = podman("inspect", "--format", "{{.State.Running}}", self.name, check=False)
        return state.stdout.strip() == "true"

    def host_pid(self) -> int:
        """The container's first process as the host sees it (signals from inside cannot reach PID 1)."""
        return int(podman("inspect", "--format", "{{.State.Pid}}", self.name).stdout.strip())

    def logs(self) -> str:
        result = podman("logs", self.name, check=False)
        return result.stdout + result.stderr

    def exec(self, *argv: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
        return podman("exec", self.name, *argv, timeout_s=timeout_s, check=False)

    def check_health(self) -> tuple[int, str]:
        """One run of the compose healthcheck in the container: its exit status (-1: over its timeout)."""
        argv, timeout_s = healthcheck(self.service)
        started = time.monotonic()
        try:
            result = self.exec(*argv, timeout_s=timeout_s + 30)
        except subprocess.TimeoutExpired:
            return -1, "the check hung"
        # 125-127: podman could not start the check at all (no container, no such command), which
        # says nothing about the service: a failing check must be the check's own verdict.
        assert result.returncode < 125, f"{self.service}: the healthcheck did not run: {result.stderr[-1500:]}"
        if result.returncode == 0 and time.monotonic() - started > timeout_s + 10:
            return -1, "the check passed, but only after its timeout"
        return result.returncode, (result.stdout + result.stderr)[-1500:]

    def wait_health(self, healthy: bool, within_s: float) -> tuple[int, str]:
        """Run the healthcheck until it passes (`healthy`) or fails; the last outcome."""
        deadline = time.monotonic() + within_s
        while True:
            code, output = self.check_health()
            if (code == 0) == healthy:
                return code, output
            assert self.running(), f"{self.name} exited:\n{self.logs()[-3000:]}"
            assert time.monotonic() < deadline, (
                f"{self.service}: healthcheck {'never passed' if healthy else 'kept passing'} in {within_s:.0f}s"
                f" (last exit {code}: {output})\n{self.logs()[-3000:]}")
            time.sleep(1)

    def freeze(self) -> None:
        os.kill(self.host_pid(), signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.host_pid(), signal.SIGCONT)


@dataclass
class Pods:
    """Starts containers as compose would (host network aside) and removes every one, and its volumes,
    when the test ends, however it ends; their output is kept in LOG_DIR."""
    log_dir: Path
    started: list[Container] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)

    def volume(self, hint: str) -> str:
        name = unique_name(f"pulse-test-{hint}")
        podman("volume", "create", name)
        self.volumes.append(name)
        return name

    def run(self, service: str, image: str, env: Mapping[str, str], tmp: Path, command: Sequence[str] = (),
            mounts: Sequence[str] = ()) -> Container:
        name = unique_name(f"pulse-test-{service}")
        # An env file rather than --env: the passwords stay out of the process list.
        env_file = tmp / f"{name}.env"
        env_file.write_text("".join(f"{key}={value}\n" for key, value in env.items()))
        container = Container(name, service, image, self.log_dir / f"{service}-{name}.log")
        self.started.append(container)
        podman("run", "--detach", "--name", name, "--network=host", f"--env-file={env_file}",
               *[f"--volume={mount}" for mount in mounts], image, *command)
        return container

    def cleanup(self) -> None:
        for container in self.started:
            if container.running():
                # A frozen container takes a stop signal only once it runs again.
                with contextlib.suppress(OSError, AssertionError, ValueError):
                    container.thaw()
            with container.log.open("w") as out:
                out.write(container.logs())
            podman("rm", "--force", "--time=10", container.name, check=False, timeout_s=120)
        for volume in self.volumes:
            podman("volume", "rm", "--force", volume, check=False)
