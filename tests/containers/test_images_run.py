"""Pulse's three images built from docker/Dockerfile and run for real, as compose runs them.

They build on stand-ins of the pinned base images (docker/standins/, what they can and cannot prove:
docs/operations.md) and run with podman on the host's network, against what the project starts on
the host: the embedded Kafka broker, the Binance double and ClickHouse's HTTP interface over chDB.
Each service gets compose's own environment with only the addresses changed, its image's USER, and
its compose healthcheck runs inside it: passing while it works, failing once it does not.
Opt-in (`make test-containers`): it needs root and podman, which `make test` does not.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from pulse.broker.local_kafka import LocalKafkaBroker, end_offsets
from pulse.settings import KafkaSettings, PulseSettings
from pulse.storage.clickhouse import ChdbEngine, ChdbTransport
from tests.containers.podman import Container, Pods, service_env, services
from tests.support.binance_double import double_in_thread
from tests.support.clickhouse_http import ClickHouseHttp
from tests.support.names import unique_name
from tests.support.pipeline import publish_recording
from tests.support.processor_process import WINDOWS_SQL
from tests.support.producer_harness import consume_all, expected_ids, fresh_topics, ids_by_symbol, recorded_tape
from tests.support.recordings import SPOT_RAW, USDM_RAW, recording
from tests.support.reference import assert_windows_match, reference_windows, trades_from_recording

# The first test builds the images: minutes on a cold cache, hence more than the suite's 900 s.
pytestmark = [pytest.mark.containers, pytest.mark.timeout(3600)]

PASSWORD = "containers-test-writer"
TOKEN = "containers-test-token"
# What .env must give compose (its `${VAR:?...}` variables); everything else keeps compose's default.
DOT_ENV = {"CLICKHOUSE_WRITER_PASSWORD": PASSWORD, "JUPYTER_TOKEN": TOKEN}
IMAGE_UID = "10001"  # docker/Dockerfile's `useradd --uid`
HOST_USER = 1000  # a developer's uid on the host, owner of the notebooks folder


def kafka_env(bootstrap: str, topics: KafkaSettings) -> dict[str, str]:
    """Compose's redpanda:9092 and topic names, pointed at this test's broker and topics."""
    trades = topics.trades_topic
    return {"PULSE_KAFKA__BOOTSTRAP_SERVERS": bootstrap, "PULSE_KAFKA__TRADES_TOPIC": trades,
            "PULSE_KAFKA__DEAD_LETTER_TOPIC": topics.dead_letter_topic, "PULSE_KAFKA__GAPS_TOPIC": topics.gaps_topic,
            "PULSE_KAFKA__METRICS_TOPIC": f"{trades}.metrics", "PULSE_KAFKA__REJECTS_TOPIC": f"{trades}.rejects"}


def clickhouse_env(endpoint: ClickHouseHttp, database: str) -> dict[str, str]:
    """Compose's clickhouse:8123 pointed at the endpoint; user and password stay compose's."""
    return {"PULSE_CLICKHOUSE__HOST": "127.0.0.1", "PULSE_CLICKHOUSE__PORT": str(endpoint.port),
            "PULSE_CLICKHOUSE__DATABASE": database}


def process_owner(container: Container) -> str:
    """The uid the container's command runs as."""
    result = container.exec("stat", "-c", "%u", "/proc/1")
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def assert_goes_unhealthy_when_frozen(container: Container) -> None:
    """The service stops answering (SIGSTOP from the host): the check must fail within its timeout,
    and pass again once the service runs on."""
    container.freeze()
    try:
        code, output = container.check_health()
        assert code != 0, f"{container.service}: healthcheck passed with the service frozen: {output}"
    finally:
        container.thaw()
    container.wait_health(healthy=True, within_s=60)


def test_producer_image_publishes_every_trade_of_the_binance_double(images: dict[str, str], pods: Pods,
                                                                    kafka: LocalKafkaBroker, tmp_path: Path) -> None:
    topics = fresh_topics(kafka.bootstrap)
    tape = recorded_tape()
    with double_in_thread(tape, frames_per_s=2000) as double:
        env = service_env("producer", DOT_ENV, {
            **kafka_env(kafka.bootstrap, topics),
            "PULSE_PRODUCER__SYMBOLS": ",".join(sorted(double.by_symbol)),
            "PULSE_PRODUCER__WS_BASE_URL": double.ws_host_url, "PULSE_PRODUCER__REST_BASE_URL": double.rest_base_url,
            # The double's tape ends; a quiet connection stays up rather than reconnecting meanwhile.
            "PULSE_PRODUCER__STALL_TIMEOUT_S": "600"})
        producer = pods.run("producer", images["producer"], env, tmp_path)
        deadline = time.monotonic() + 180
        while sum(asyncio.run(end_offsets(kafka.bootstrap, topics.trades_topic)).values()) < len(tape):
            assert producer.running(), producer.logs()[-3000:]
            assert time.monotonic() < deadline, f"not every trade reached Kafka:\n{producer.logs()[-3000:]}"
            time.sleep(1)
        producer.wait_health(healthy=True, within_s=60)
        assert process_owner(producer) == IMAGE_UID
    # Binance gone: the producer is disconnected and says so.
    producer.wait_health(healthy=False, within_s=60)

    trades = asyncio.run(consume_all(kafka.bootstrap, topics.trades_topic))
    got, want = ids_by_symbol(trades), expected_ids()
    assert set(got) == set(want)
    for symbol, ids in want.items():
        assert got[symbol] == ids, f"{symbol}: ids differ from the recording (order, loss or duplicates)"


def _stored(local: ChdbTransport, reference: dict[Any, Any], within_s: float, *containers: Container) -> None:
    """Wait until the table equals the reference (Real-Time Mode updates windows as trades come)."""
    deadline = time.monotonic() + within_s
    while True:
        rows = local.query_arrow(WINDOWS_SQL).to_pylist() if _has_table(local) else []
        try:
            assert_windows_match(rows, reference)
            return
        except AssertionError as mismatch:
            for container in containers:
                assert container.running(), f"{container.name} exited:\n{container.logs()[-3000:]}"
            if time.monotonic() > deadline:
                logs = "\n".join(c.logs()[-2000:] for c in containers)
                raise AssertionError(f"{len(rows)} windows, not the reference's {len(reference)}: {mismatch}\n"
                                     f"{logs}") from mismatch
            time.sleep(2)


def _has_table(local: ChdbTransport) -> bool:
    found = local.query_arrow(f"SELECT count() AS n FROM system.tables WHERE database = '{local.database}'"
                              " AND name = 'pulse_metrics_latest'").to_pylist()
    return bool(found[0]["n"])


def test_processor_and_store_writer_images_fill_pulse_metrics_as_the_reference(
        images: dict[str, str], pods: Pods, kafka: LocalKafkaBroker, chdb_engine: ChdbEngine,
        base_settings: PulseSettings, tmp_path: Path) -> None:
    topics = fresh_topics(kafka.bootstrap)
    database = unique_name("pulse_containers")
    local = ChdbTransport(base_settings.chdb_path, database)  # empty: `pulse process --apply-schema` fills it
    endpoint = ClickHouseHttp(chdb_engine, user="pulse_writer", password=PASSWORD).start()
    job = base_settings.override(kafka=topics.model_dump())
    try:
        path = recording(SPOT_RAW)
        published = publish_recording(job, path)
        # Compose starts a new checkpoint at the live end; the trades are in the topic already.
        overrides = {**kafka_env(kafka.bootstrap, topics), **clickhouse_env(endpoint, database),
                     "PULSE_SPARK__STARTING_OFFSETS": "earliest"}
        processor = pods.run("processor", images["processor"], service_env("processor", DOT_ENV, overrides), tmp_path,
                             mounts=[f"{pods.volume('processor-data')}:/var/lib/pulse"])
        processor.wait_health(healthy=True, within_s=300)
        writer = services()["store-writer"]
        store = pods.run("store-writer", images["processor"], service_env("store-writer", DOT_ENV, overrides),
                         tmp_path, command=[str(word) for word in writer["command"]])
        store.wait_health(healthy=True, within_s=120)
        assert process_owner(processor) == IMAGE_UID and process_owner(store) == IMAGE_UID

        trades = trades_from_recording(path)
        _stored(local, reference_windows(trades), 300, processor, store)
        (total,) = local.query_arrow("SELECT sum(trade_count) AS n FROM pulse_metrics FINAL").to_pylist()
        assert int(total["n"]) == published == len(trades)

        # ClickHouse down while trades keep coming: the writer's inserts fail and its check turns red.
        endpoint.down()
        publish_recording(job, recording(USDM_RAW))
        store.wait_health(healthy=False, within_s=120)
        assert_goes_unhealthy_when_frozen(processor)
    finally:
        endpoint.stop()


NOTEBOOK = {"nbformat": 4, "nbformat_minor": 5, "metadata": {},
            "cells": [{"cell_type": "markdown", "id": "saved-by-test", "metadata": {},
                       "source": "Saved through the jupyter image"}]}


def _put(url: str, body: dict[str, Any], token: str | None) -> int:
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"token {token}"} if token else {})
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="PUT")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as refused:
        return int(refused.code)


def test_jupyter_image_saves_a_notebook_into_the_mounted_folder(images: dict[str, str], pods: Pods,
                                                                tmp_path: Path) -> None:
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    # A host user's folder: the entrypoint adopts its owner, so the saved file is theirs.
    os.chown(notebooks, HOST_USER, HOST_USER)
    # Kafka and ClickHouse stay compose's names: saving a notebook reaches neither.
    mounts = [f"{notebooks}:/home/pulse/notebooks", f"{pods.volume('jupyter-data')}:/home/pulse/.pulse"]
    jupyter = pods.run("jupyter", images["jupyter"], service_env("jupyter", DOT_ENV), tmp_path, mounts=mounts)
    jupyter.wait_health(healthy=True, within_s=120)
    assert process_owner(jupyter) == str(HOST_USER)

    port = services()["jupyter"]["ports"][0].rsplit(":", 1)[1]
    url = f"http://127.0.0.1:{port}/api/contents/saved-in-container.ipynb"
    body = {"type": "notebook", "format": "json", "content": NOTEBOOK}
    assert _put(url, body, token=None) == 403, "saving without JUPYTER_TOKEN must be refused"
    assert not (notebooks / "saved-in-container.ipynb").exists()
    assert _put(url, body, token=TOKEN) == 201
    saved = notebooks / "saved-in-container.ipynb"
    # nbformat stores a cell's source as a list of lines on disk.
    assert "".join(json.loads(saved.read_text())["cells"][0]["source"]) == "Saved through the jupyter image"
    assert saved.stat().st_uid == HOST_USER
    assert_goes_unhealthy_when_frozen(jupyter)
