"""The ClickHouse cluster variant (clickhouse/cluster) on the ClickHouse engine (chDB), as far as it goes.

Checked, by running it (tests/support/chdb_cluster.py, in a child process with the cluster's config):
- the real config.d/pulse-cluster.xml loads; its macros expand from the environment as the compose
  override sets it (replica name, shard, cluster);
- every statement of the cluster files parses (EXPLAIN AST), and the schema exactly as the
  cluster's init script runs it is created: the Replicated tables register under the Keeper
  paths and replica name a server would use, the Distributed tables point at them over the
  cluster with the intended sharding keys, every view is created; the only statement refused is
  the ALTER of a Replicated table, which needs Keeper;
- with only the replication arguments removed, the cluster schema holds the same data as the
  single-node one: the same columns in every table and view, inserts through the Distributed
  table (with the async-insert settings the job uses), both versions of every window stored
  and every view (FINAL, rollups, signal quality, CVD) giving the same rows as on one node.
Not checked here (no Keeper, no second server): replication between the replicas, Keeper itself,
the inter-server secret at work, distributed_foreground_insert (a users.d profile setting, which
chDB does not read). The compose override is checked in test_cluster_compose.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from tests.support.chdb_cluster import CLUSTER, CLUSTER_SCHEMA, REPLICA, ROOT, SINGLE_SCHEMA, statements

pytestmark = pytest.mark.integration

LOCAL_TABLES = {"pulse_metrics": "ReplicatedReplacingMergeTree", "pulse_rejects": "ReplicatedReplacingMergeTree",
                "pulse_health": "ReplicatedMergeTree"}


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What tests/support/chdb_cluster.py found, run once for the module."""
    workdir = tmp_path_factory.mktemp("chdb-cluster")
    completed = subprocess.run([sys.executable, "-m", "tests.support.chdb_cluster", str(workdir)], cwd=ROOT,
                               capture_output=True, text=True, timeout=300, check=False)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    found: dict[str, Any] = json.loads((workdir / "result.json").read_text())
    return found


def test_the_cluster_config_loads_and_its_macros_expand(result):
    assert result["macros"] == {"cluster": "pulse", "shard": "01", "replica": REPLICA}
    assert result["clusters"] == [{"cluster": "pulse", "host_name": "localhost", "is_local": 1}]


def test_the_cluster_files_replace_single_node_files_by_name():
    # docker-compose.cluster.yml mounts each cluster file over its single-node namesake: a new name
    # would add a file instead of replacing one, and the single-node table would be created too.
    single = {path.name for path in SINGLE_SCHEMA.glob("*.sql")}
    cluster = {path.name for path in CLUSTER_SCHEMA.glob("*.sql")}
    assert cluster and cluster <= single


def test_every_cluster_statement_parses(result):
    assert result["parsed"], "no cluster schema files"
    for name, errors in result["parsed"].items():
        assert errors and all(error is None for error in errors), f"{name}: {errors}"


def test_the_schema_as_the_cluster_runs_it_is_created_up_to_what_needs_keeper(result):
    verbatim = result["verbatim"]
    errors = [(name, error) for name, found in verbatim["errors"].items() for error in found]
    # The ALTER of a Replicated table goes through Keeper, which chDB cannot reach: that one only.
    assert [name for name, _ in errors] == ["03_pulse_health.sql"], errors
    assert all("TABLE_IS_READ_ONLY" in error for _, error in errors), errors
    assert {(r["table"], r["zookeeper_path"], r["replica_name"]) for r in verbatim["replicas"]} == {
        (f"{table}_local", f"/clickhouse/tables/01/verbatim/{table}_local", REPLICA) for table in LOCAL_TABLES}
    objects = verbatim["objects"]
    for table, engine in LOCAL_TABLES.items():
        assert objects[f"{table}_local"] == engine
        assert objects[table] == "Distributed"
        assert verbatim["engines"][table].startswith(f"Distributed('{{cluster}}', 'verbatim', '{table}_local'"), \
            verbatim["engines"][table]
    # Every version of a window must land on one shard, or FINAL could not replace old by new.
    assert verbatim["engines"]["pulse_metrics"].endswith("cityHash64(symbol))")


def test_the_cluster_schema_covers_every_table_and_view_of_the_single_node_schema(result):
    single = result["runnable"]["single"]["objects"]
    cluster = result["verbatim"]["objects"]
    assert set(single) <= set(cluster), f"missing on the cluster: {sorted(set(single) - set(cluster))}"
    assert set(cluster) - set(single) == {f"{table}_local" for table in LOCAL_TABLES}
    for name, kind in single.items():
        assert (cluster[name] == "View") == (kind == "View"), f"{name}: {kind} vs {cluster[name]}"


def test_only_the_replication_arguments_are_left_out_of_the_runnable_variant(result):
    for name, removed in result["stripped_engines"].items():
        assert len(removed) == 1, f"{name}: {removed}"
        assert "'/clickhouse/tables/{shard}/{database}/" in removed[0] and "'{replica}'" in removed[0], removed
    runnable = result["runnable"]
    assert runnable["errors"] == {"single": [], "cluster": []}
    for table in LOCAL_TABLES:
        # Same engine, partitioning and order once replication is set aside.
        assert runnable["cluster"]["engines"][f"{table}_local"] == runnable["single"]["engines"][table]


def test_without_keeper_the_cluster_schema_holds_and_shows_what_one_node_does(result):
    single, cluster = result["runnable"]["single"], result["runnable"]["cluster"]
    for name in single["objects"]:
        assert cluster["columns"][name] == single["columns"][name], f"{name}: columns differ"
    # Both versions of every window were stored (two inserts, two parts) ...
    assert cluster["local_rows"] == single["local_rows"] and single["local_rows"][0]["n"] > 0
    assert single["views"]["pulse_metrics_latest"], "no windows to compare"
    # ... and each view, read through the Distributed table, shows what the single node shows.
    for name, rows in single["views"].items():
        assert cluster["views"][name] == rows, f"{name}: rows differ"
    assert 2 * len(single["views"]["pulse_metrics_latest"]) == single["local_rows"][0]["n"]
    assert {row["version"] for row in cluster["views"]["pulse_metrics_latest"]} == {2}


def test_every_cluster_statement_is_idempotent_like_the_single_node_files():
    for path in sorted(CLUSTER_SCHEMA.glob("*.sql")):
        for sql in statements(path):
            assert "IF NOT EXISTS" in sql, f"{path.name}: {sql[:80]}"


def test_config_files_are_well_formed_and_agree_with_each_other():
    config = ET.parse(CLUSTER / "config.d" / "pulse-cluster.xml").getroot()
    keeper = ET.parse(CLUSTER / "keeper" / "keeper.xml").getroot()
    users = ET.parse(CLUSTER / "users.d" / "pulse-cluster.xml").getroot()
    node = config.find("zookeeper/node")
    assert node is not None
    assert node.findtext("port") == keeper.findtext("keeper_server/tcp_port")
    assert node.findtext("host") == keeper.findtext("keeper_server/raft_configuration/server/hostname") == "keeper"
    replicas = [r.findtext("host") for r in config.findall("remote_servers/pulse/shard/replica")]
    assert replicas == ["clickhouse", "clickhouse-2"]
    assert config.find("remote_servers/pulse/secret").get("from_env") == "CLICKHOUSE_CLUSTER_SECRET"  # type: ignore[union-attr]
    assert config.find("macros/replica").get("from_env") == "CLICKHOUSE_REPLICA"  # type: ignore[union-attr]
    assert config.find("interserver_http_host").get("from_env") == "CLICKHOUSE_REPLICA"  # type: ignore[union-attr]
    assert users.findtext("profiles/default/distributed_foreground_insert") == "1"
