"""What the README's docker quickstart and docs/operations.md promise, against the stack's files."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

from tests.stack.test_compose import ROOT, services
from tests.stack.test_images import _dockerignore_allows, chain, last

README = (ROOT / "README.md").read_text()
OPERATIONS = (ROOT / "docs" / "operations.md").read_text()


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    following = re.search(r"^#{1,2} ", text[start + len(heading):], flags=re.MULTILINE)
    return text[start: start + len(heading) + following.start()] if following else text[start:]


DOCKER_QUICKSTART = _section(README, "## Quickstart with Docker")


def _published(service: str) -> set[str]:
    return {port["published"] for port in services()[service].get("ports", [])}


def test_quickstart_lists_every_url_and_what_it_shows() -> None:
    rows = [line for line in DOCKER_QUICKSTART.splitlines() if line.startswith("| **")]
    shows = {}
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        link = re.search(r"<(http://127\.0\.0\.1:\d+[^>]*)>", cells[0])
        assert link, row
        shows[link.group(1)] = cells[1]
    expected = {f"http://127.0.0.1:{port}{path}" for service, path in
                (("grafana", ""), ("console", ""), ("clickhouse", "/play"), ("jupyter", ""))
                for port in _published(service) if port != "9000"}
    assert set(shows) == expected
    for url, what in shows.items():
        assert len(what.split()) >= 8, f"{url}: say what it shows"
    # The host-side endpoints that are no web UI are named below the table.
    assert "localhost:19092" in DOCKER_QUICKSTART and "http://127.0.0.1:9108/metrics" in DOCKER_QUICKSTART


def test_quickstart_says_what_to_do_where_binance_refuses_the_region() -> None:
    assert "HTTP 451" in DOCKER_QUICKSTART
    (block,) = [b for b in re.findall(r"```bash\n(.*?)```", DOCKER_QUICKSTART, flags=re.DOTALL) if "replay" in b]
    (run,) = [line for line in block.replace("\\\n", " ").splitlines() if "compose run" in line]
    words = shlex.split(run)
    service = words[words.index("--rm") + 1]
    command = words[words.index("--rm") + 2:]
    assert service == "producer" and command[:2] == ["pulse", "produce"]
    # The recording is in the image, where the relative path points (the image's WORKDIR).
    recording = command[command.index("--input") + 1]
    assert (ROOT / recording).is_file() and _dockerignore_allows(recording)
    assert last("producer", "WORKDIR") == "/opt/pulse"
    assert ("COPY", "pulse ./pulse") in [i for stage in chain("producer") for i in stage.body]
    # Every option it uses is one `pulse produce` has.
    usage = subprocess.run([sys.executable, "-m", "pulse.cli", "produce", "--help"], capture_output=True,
                           text=True, check=True, cwd=ROOT).stdout
    for option in (word for word in command if word.startswith("--")):
        assert option in usage, f"`pulse produce` has no {option}"
    assert "replay" in usage


def test_operations_doc_says_when_each_clickhouse_password_applies() -> None:
    credentials = _section(OPERATIONS, "## Credentials")
    # The admin's password reaches the image's own entrypoint variable, which rewrites the admin into
    # users.d on every start; the writer's and reader's only reach the init script, which runs once.
    clickhouse = services()["clickhouse"]["environment"]
    assert clickhouse["CLICKHOUSE_PASSWORD"] == "change-me-admin"
    assert {k for k, v in clickhouse.items() if v in ("change-me-writer", "change-me-reader")} == \
        {"PULSE_WRITER_PASSWORD", "PULSE_READER_PASSWORD"}
    assert re.search(r"admin follows `\.env` on every start", credentials)
    assert "users.d" in credentials
    sentences = re.split(r"(?<=[.:])\s+(?=[A-Z*-])", re.sub(r"\s+", " ", credentials))
    for sentence in (s for s in sentences if "once" in s):
        assert "admin" not in sentence.lower() and "ClickHouse users" not in sentence, sentence
    assert re.search(r"writer and the reader keep their first passwords", credentials)
