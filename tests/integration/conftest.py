"""Fixtures of the integration tier: clusters of several real nodes on this host."""

from __future__ import annotations

import os

import pytest
import ray
from ray.cluster_utils import Cluster

from cluster import local
from cluster.settings import Settings
from cluster.topology import REGION_LABEL


@pytest.fixture(scope="module")
def ray_start_3_nodes_2_datacenters(tmp_path_factory):
    """A head and a worker in eu-west, a worker in us-east (1 CPU each, token auth on);
    the driver connected. Yields (cluster, [eu worker, us worker])."""
    home = tmp_path_factory.mktemp("shards-home")
    settings = Settings(home=home, token_path=home / "token")
    local.ensure_token(settings.token_path)
    saved = dict(os.environ)
    local.connect_clients(settings)
    node = {"num_cpus": 1, "node_ip_address": "127.0.0.1", "object_store_memory": 80 << 20}
    cluster = Cluster(
        initialize_head=True,
        head_node_args={**node, "include_dashboard": False, "labels": {REGION_LABEL: "eu-west"}},
    )
    try:
        workers = [
            cluster.add_node(**node, labels={REGION_LABEL: dc}) for dc in ("eu-west", "us-east")
        ]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level="ERROR")
        yield cluster, workers
    finally:
        ray.shutdown()
        cluster.shutdown()
        os.environ.clear()
        os.environ.update(saved)
        # Ray cached this cluster's token: later modules' drivers connect with their own.
        local.reload_client_auth()
