"""cluster.yaml: valid for Ray's cluster launcher, head runs no work, two labelled datacenters,
the same topology as the KubeRay manifests (cluster/kuberay/).

Validation calls Ray's own launcher check (the JSON schema in ray/autoscaler/ray-schema.json
plus its cross-field rules); nothing here starts Ray or contacts a cloud.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray._private.label_utils import validate_node_labels
from ray.autoscaler._private.util import prepare_config, validate_config

from cluster.topology import REGION_ENV, REGION_LABEL, ZONE_ENV, ZONE_LABEL, Datacenter

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_YAML = ROOT / "cluster.yaml"
KUBERAY = ROOT / "cluster" / "kuberay" / "raycluster.yaml"


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def _env_values(commands: list[str], name: str) -> set[str]:
    """Values assigned to environment variable ``name`` (NAME=value) in shell commands."""
    pattern = re.compile(rf"\b{re.escape(name)}=([A-Za-z0-9_-]+)")
    return {value for command in commands for value in pattern.findall(command)}


def _datacenter(config: dict, node_type: str) -> Datacenter:
    """The datacenter a node type's initialization commands write for ``ray start``."""
    node = config["available_node_types"][node_type]
    commands = node.get("initialization_commands", config.get("initialization_commands", []))
    regions, zones = _env_values(commands, REGION_ENV), _env_values(commands, ZONE_ENV)
    assert len(regions) == 1 and len(zones) == 1, (
        f"{node_type} must set exactly one {REGION_ENV} and one {ZONE_ENV}: {regions}, {zones}"
    )
    return Datacenter(region=regions.pop(), zone=zones.pop())


def _worker_types(config: dict) -> list[str]:
    return [name for name in config["available_node_types"] if name != config["head_node_type"]]


def _is_gpu(config: dict, node_type: str) -> bool:
    return config["available_node_types"][node_type]["resources"].get("GPU", 0) >= 1


def test_raw_config_passes_ray_launcher_validation(config: dict) -> None:
    validate_config(config)


def test_config_with_ray_defaults_passes_validation(config: dict) -> None:
    # What `ray up` validates: the config merged with the provider's defaults.yaml.
    validate_config(prepare_config(copy.deepcopy(config)))


@pytest.mark.parametrize(
    "path",
    [(), ("available_node_types", "ray.worker.cpu.eu-west-a"), ("provider", "security_group")],
    ids=["top-level", "node-type", "provider.security_group"],
)
def test_validator_rejects_unknown_keys(config: dict, path: tuple[str, ...]) -> None:
    bad = copy.deepcopy(config)
    target = bad
    for key in path:
        target = target.setdefault(key, {})
    target["not_a_ray_key"] = True
    with pytest.raises(jsonschema.ValidationError, match="not_a_ray_key"):
        validate_config(bad)


def test_head_runs_no_work(config: dict) -> None:
    head = config["available_node_types"][config["head_node_type"]]
    assert config["head_node_type"] == "ray.head.default"
    assert head["resources"]["CPU"] == 0
    assert head["resources"].get("GPU", 0) == 0


def test_worker_types_are_named_after_their_kind_and_datacenter(config: dict) -> None:
    for name in _worker_types(config):
        kind = "gpu" if _is_gpu(config, name) else "cpu"
        assert name == f"ray.worker.{kind}.{_datacenter(config, name).region}"


def test_worker_types_span_two_datacenters(config: dict) -> None:
    datacenters = {name: _datacenter(config, name) for name in _worker_types(config)}
    assert len({dc.region for dc in datacenters.values()}) >= 2, datacenters
    # Every datacenter has both CPU and GPU workers.
    for region in {dc.region for dc in datacenters.values()}:
        types = [n for n, dc in datacenters.items() if dc.region == region]
        kinds = {"gpu" if _is_gpu(config, n) else "cpu" for n in types}
        assert kinds == {"cpu", "gpu"}, (region, types)


def test_describes_the_same_topology_as_the_kuberay_manifests(config: dict) -> None:
    """The same datacenters (regions and zones), head's included, and per datacenter the same
    CPU and GPU roles with the same scaling bounds as cluster/kuberay/ (whose test checks that
    its RayService shares the RayCluster's topology)."""
    spec = yaml.safe_load(KUBERAY.read_text())["spec"]

    def labelled(labels: dict) -> Datacenter:
        return Datacenter(region=labels[REGION_LABEL], zone=labels[ZONE_LABEL])

    def gpus(group: dict) -> int:
        ray_container = group["template"]["spec"]["containers"][0]
        return int(ray_container["resources"].get("limits", {}).get("nvidia.com/gpu", 0))

    groups = {
        (labelled(g["labels"]), gpus(g) >= 1): (g["minReplicas"], g["maxReplicas"])
        for g in spec["workerGroupSpecs"]
    }
    types = {
        (_datacenter(config, n), _is_gpu(config, n)): (
            config["available_node_types"][n]["min_workers"],
            config["available_node_types"][n]["max_workers"],
        )
        for n in _worker_types(config)
    }
    assert types == groups
    head = _datacenter(config, config["head_node_type"])
    assert head == labelled(spec["headGroupSpec"]["labels"])


def test_start_commands_load_labels_and_use_token_auth(config: dict) -> None:
    env_file = "~/.aimass_node.env"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = [c for c in config[key] if "ray start" in c]
        assert start, key
        for command in start:
            assert "RAY_AUTH_MODE=token" in command
            assert f". {env_file}" in command and "set -a" in command
    # Every node type's datacenter commands write the file the start commands source.
    for name in config["available_node_types"]:
        node = config["available_node_types"][name]
        commands = node.get("initialization_commands", config["initialization_commands"])
        assert all(env_file in c for c in commands), name
    assert "--dashboard-host=127.0.0.1" in " ".join(config["head_start_ray_commands"])
    assert "~/.ray/auth_token" in config["file_mounts"]


def test_node_labels_use_no_reserved_keys(config: dict) -> None:
    for node in config["available_node_types"].values():
        validate_node_labels(node.get("labels", {}))


def test_sum_of_min_workers_within_max(config: dict) -> None:
    nodes = config["available_node_types"].values()
    assert sum(n.get("min_workers", 0) for n in nodes) <= config["max_workers"]
    assert sum(n.get("max_workers", 0) for n in nodes) <= config["max_workers"]


def test_nodes_start_with_the_serve_settings_of_the_local_cluster(config: dict) -> None:
    """Serve's switches (admission middleware, throughput profile) are read where Ray
    starts: a launched cluster gets the same as `aimass up`'s."""
    from cluster.local import SERVE_ENV

    for commands in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = " ".join(config[commands])
        for name, value in SERVE_ENV.items():
            assert f"{name}={value}" in start, (commands, name)
