"""cluster/kuberay: valid for KubeRay's CRDs, one region's labelled datacenters, token auth on,
and the model API's datacenter config placed on the worker groups that exist.

The manifests are validated against the openAPIV3Schema of KubeRay's own CRDs (v1.7.0,
vendored with its source in tests/unit/data/kuberay/), closed the way the API server treats
undeclared fields; then against the rules the operator keeps in Go and those aimass needs.
Nothing here contacts Kubernetes or starts Ray.
"""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray._private.label_utils import parse_node_labels_string, validate_node_label_syntax
from ray.serve.schema import ServeDeploySchema

from cluster.cli.placement_check import check_placement
from cluster.local import SERVE_ENV
from cluster.topology import REGION_LABEL, ZONE_LABEL, Datacenter, Topology
from serve_apps._private.datacenters import predictor_name
from serve_apps.schemas import GatewayConfig, GeneratorConfig, PredictorConfig

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
KUBERAY = ROOT / "cluster" / "kuberay"
SCHEMAS = Path(__file__).resolve().parent / "data" / "kuberay"
DATACENTER_CONFIG = ROOT / "serve_apps" / "serve_config.datacenters.yaml"
MANIFESTS = {"raycluster.yaml": "rayclusters", "rayservice.yaml": "rayservices"}  # file: CRD
KINDS = {"raycluster.yaml": "RayCluster", "rayservice.yaml": "RayService"}
ZONE_NODE_LABEL = "topology.kubernetes.io/zone"  # Kubernetes' well-known zone label of a node
GPU = "nvidia.com/gpu"
# Variables KubeRay sets from authOptions; a container that sets them itself keeps its own.
AUTH_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def _load(name: str) -> dict:
    return yaml.safe_load((KUBERAY / name).read_text())


def _closed(schema: dict) -> dict:
    """``schema`` with every object that declares its properties closed to others: the API
    server drops undeclared fields (kubectl's strict field validation refuses them), where
    plain JSON Schema would let a misspelt key through."""
    out = dict(schema)
    if "properties" in schema:
        out["properties"] = {name: _closed(sub) for name, sub in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get(
            "x-kubernetes-preserve-unknown-fields"
        ):
            out["additionalProperties"] = False
    if isinstance(schema.get("additionalProperties"), dict):
        out["additionalProperties"] = _closed(schema["additionalProperties"])
    if isinstance(schema.get("items"), dict):
        out["items"] = _closed(schema["items"])
    if "anyOf" in schema:
        out["anyOf"] = [_closed(sub) for sub in schema["anyOf"]]
    return out


@pytest.fixture(scope="module")
def validators() -> dict[str, jsonschema.Draft4Validator]:
    # OpenAPI v3's schema dialect is closest to JSON Schema draft 4; x-kubernetes-* are ignored.
    return {
        name: jsonschema.Draft4Validator(
            _closed(json.loads((SCHEMAS / f"{crd}.v1.schema.json").read_text()))
        )
        for name, crd in MANIFESTS.items()
    }


def _errors(validator: jsonschema.Draft4Validator, manifest: dict) -> list[str]:
    return [
        f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in validator.iter_errors(manifest)
    ]


def _cluster_spec(name: str) -> dict:
    """The RayClusterSpec of a manifest: a RayCluster's spec, a RayService's rayClusterConfig."""
    spec = _load(name)["spec"]
    return spec.get("rayClusterConfig", spec)


def _ray_container(group: dict) -> dict:
    return group["template"]["spec"]["containers"][0]  # KubeRay runs Ray in the first one


def _is_gpu(group: dict) -> bool:
    return int(_ray_container(group)["resources"].get("limits", {}).get(GPU, 0)) > 0


def _ray_cpus(group: dict) -> float:
    """The CPUs Ray advertises for a group's pod: rayStartParams' num-cpus, else the container's
    CPU limit rounded up (KubeRay's rule)."""
    if "num-cpus" in group.get("rayStartParams", {}):
        return float(group["rayStartParams"]["num-cpus"])
    quantity = str(_ray_container(group)["resources"]["limits"]["cpu"])
    return math.ceil(float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity))


def _datacenter(group: dict) -> Datacenter:
    labels = group.get("labels", {})
    return Datacenter(region=labels[REGION_LABEL], zone=labels[ZONE_LABEL])


def _topology(spec: dict) -> dict[str, tuple]:
    """Worker group name -> (datacenter, GPU or not, min, max): what both manifests must share."""
    return {
        g["groupName"]: (_datacenter(g), _is_gpu(g), g["minReplicas"], g["maxReplicas"])
        for g in spec["workerGroupSpecs"]
    }


def _serve_config() -> dict:
    return yaml.safe_load(_load("rayservice.yaml")["spec"]["serveConfigV2"])


both = pytest.mark.parametrize("name", list(MANIFESTS))


@both
def test_manifest_passes_the_kuberay_crd_schema(validators, name: str) -> None:
    manifest = _load(name)
    assert manifest["apiVersion"] == "ray.io/v1"
    assert manifest["kind"] == KINDS[name]
    assert _errors(validators[name], manifest) == []


@both
def test_every_key_is_commented(name: str) -> None:
    key = re.compile(r"^\s*(- )?[\w./<-]+:(\s|$)")  # a mapping key, in a list item or not
    lines = (KUBERAY / name).read_text().splitlines()
    bare = [f"{name}:{n}" for n, line in enumerate(lines, 1) if key.match(line) and "#" not in line]
    assert bare == []


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda s: s["workerGroupSpecs"][0].update(labelz={}), "'labelz' was unexpected"),
        (lambda s: s["workerGroupSpecs"][0].update(minReplicas="one"), "'one' is not of type"),
        (lambda s: s["authOptions"].update(mode="on"), "'on' is not one of"),
        (lambda s: _ray_container(s["headGroupSpec"]).update(imag="x"), "'imag' was unexpected"),
    ],
    ids=["unknown-group-key", "mistyped-replicas", "bad-auth-mode", "unknown-container-key"],
)
def test_the_schema_check_refuses_what_kubernetes_would(validators, edit, expected: str) -> None:
    bad = _load("raycluster.yaml")
    edit(bad["spec"])
    assert any(expected in error for error in _errors(validators["raycluster.yaml"], bad))


@both
def test_token_auth_is_on_with_the_token_from_a_secret(name: str) -> None:
    spec = _cluster_spec(name)
    assert spec["authOptions"] == {"mode": "token", "secretName": "aimass-ray-token"}
    # KubeRay refuses token auth below Ray 2.52; the images run the Ray the project pins.
    version = tuple(int(part) for part in spec["rayVersion"].split("."))
    assert version >= (2, 52, 0)
    assert spec["rayVersion"].rsplit(".", 1)[0] == ray.__version__.rsplit(".", 1)[0]
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        env = {e["name"] for e in _ray_container(group).get("env", [])}
        assert not env & set(AUTH_ENV), (name, env & set(AUTH_ENV))


@both
def test_head_runs_no_work(name: str) -> None:
    head = _cluster_spec(name)["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert "resources" not in head  # KubeRay refuses resources in both places; one is enough
    assert GPU not in _ray_container(head)["resources"].get("limits", {})


@both
def test_every_group_is_labelled_with_its_datacenter_and_placed_in_its_zone(name: str) -> None:
    spec = _cluster_spec(name)
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        assert set(group["labels"]) == {REGION_LABEL, ZONE_LABEL}, group.get("groupName")
        dc = _datacenter(group)  # the names are valid Ray label values
        validate_node_label_syntax(group["labels"])  # what the autoscaler checks
        # KubeRay starts the pod with `ray start --labels=k=v,...` (keys sorted); Ray parses
        # that form checking syntax only, so reserved ray.io/ keys pass (its deprecated JSON
        # form would refuse them).
        flag = ",".join(f"{k}={v}" for k, v in sorted(group["labels"].items()))
        assert parse_node_labels_string(flag) == group["labels"]
        assert "labels" not in group.get("rayStartParams", {})  # KubeRay refuses it there
        assert group["template"]["spec"]["nodeSelector"] == {ZONE_NODE_LABEL: dc.zone}


@both
def test_each_of_two_datacenters_has_cpu_and_gpu_groups(name: str) -> None:
    spec = _cluster_spec(name)
    topology = _topology(spec)
    regions = {dc.region for dc, *_ in topology.values()}
    assert len(regions) >= 2, topology
    for region in regions:
        kinds = {gpu for dc, gpu, *_ in topology.values() if dc.region == region}
        assert kinds == {False, True}, (region, topology)
    for group in spec["workerGroupSpecs"]:
        assert 0 <= group["minReplicas"] <= group["maxReplicas"], group["groupName"]
    # One zone per datacenter, the head's among them.
    zones = {dc.region: dc.zone for dc, *_ in topology.values()}
    assert len(set(zones.values())) == len(zones)
    head = _datacenter(spec["headGroupSpec"])
    assert zones[head.region] == head.zone


def test_the_jobs_cluster_and_the_model_api_share_one_topology() -> None:
    jobs, api = _cluster_spec("raycluster.yaml"), _cluster_spec("rayservice.yaml")
    assert _topology(jobs) == _topology(api)
    assert jobs["headGroupSpec"]["labels"] == api["headGroupSpec"]["labels"]
    for key in ("rayVersion", "authOptions", "enableInTreeAutoscaling", "autoscalerOptions"):
        assert jobs[key] == api[key], key


@both
def test_ray_containers_start_with_the_serve_settings_of_the_local_cluster(name: str) -> None:
    """Serve's switches are read where Ray starts: every pod gets `aimass up`'s."""
    spec = _cluster_spec(name)
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        env = {e["name"]: e.get("value") for e in _ray_container(group)["env"]}
        assert {k: env.get(k) for k in SERVE_ENV} == SERVE_ENV, group.get("groupName")


def test_the_jobs_dashboard_listens_on_loopback_only() -> None:
    head = _cluster_spec("raycluster.yaml")["headGroupSpec"]
    assert head["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    assert {p["name"] for p in _ray_container(head)["ports"]} == {"gcs-server", "dashboard"}


def test_the_model_api_is_valid_for_serve_and_for_its_deployments() -> None:
    config = _serve_config()
    ServeDeploySchema.model_validate(config)
    [app] = config["applications"]
    by_kind = {"Gateway": GatewayConfig, "Generator": GeneratorConfig}
    for dep in app["deployments"]:
        model = by_kind.get(dep["name"], PredictorConfig)
        model.model_validate(dep.get("user_config", {}))
    gateway = GatewayConfig.model_validate(app["deployments"][0]["user_config"])
    Topology.of(app["args"]["datacenters"], gateway.datacenters.rtt_ms)  # names its datacenters


def test_the_model_api_runs_in_the_worker_groups_datacenters() -> None:
    config = _serve_config()
    spec = _cluster_spec("rayservice.yaml")
    [app] = config["applications"]
    groups = {dc.region for dc, *_ in _topology(spec).values()}
    assert app["args"]["datacenters"] == sorted(groups)
    predictors = {d["name"] for d in app["deployments"] if d["name"].startswith("Predictor")}
    assert predictors == {predictor_name(dc) for dc in groups}
    # What `aimass deploy` checks before `serve deploy`, on the nodes the groups keep at their
    # minimum (the head's 0 CPUs included): each datacenter has nodes, each Predictor is pinned
    # to its own, and the minimum replicas fit.
    cpus: dict[str, float] = {_datacenter(spec["headGroupSpec"]).region: 0.0}
    for group in spec["workerGroupSpecs"]:
        region = _datacenter(group).region
        cpus[region] = cpus.get(region, 0.0) + group["minReplicas"] * _ray_cpus(group)
    assert check_placement(config, cpus) == []
    assert all(cpus[dc] > 0 for dc in groups), cpus  # the builder needs a live node in each


def test_the_model_api_listens_where_kuberay_looks() -> None:
    config = _serve_config()
    head = _cluster_spec("rayservice.yaml")["headGroupSpec"]
    ports = {p["name"]: p["containerPort"] for p in _ray_container(head)["ports"]}
    assert config["proxy_location"] == "HeadOnly"
    # The serve Service and the operator's proxy health check reach the head pod's address;
    # the operator deploys through the dashboard behind the head Service.
    assert config["http_options"]["host"] == "0.0.0.0"
    assert ports["serve"] == config["http_options"]["port"]
    assert ports["dashboard"] == 8265
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"


def _shape(config: dict) -> dict:
    """A datacenter Serve config with its datacenter names, and what follows from them, taken
    out: the HTTP host, args.datacenters, the Gateway's round trips, each Predictor's name
    and label_selector (all Predictors must then be the same)."""
    shape = copy.deepcopy(config)
    shape["http_options"].pop("host")
    for app in shape["applications"]:
        app["args"].pop("datacenters")
        predictors = []
        for dep in app["deployments"]:
            if dep["name"] == "Gateway":
                dep["user_config"]["datacenters"].pop("rtt_ms")
            if dep["name"].startswith("Predictor"):
                dep["name"] = predictor_name("<dc>")
                dep["ray_actor_options"]["label_selector"] = {REGION_LABEL: "<dc>"}
                predictors.append(dep)
        assert all(p == predictors[0] for p in predictors), "Predictors differ beyond their dc"
        repeats = [id(p) for p in predictors[1:]]
        app["deployments"] = [d for d in app["deployments"] if id(d) not in repeats]
    return shape


def test_the_model_api_is_the_project_datacenter_config() -> None:
    """serveConfigV2 is serve_apps/serve_config.datacenters.yaml for this cluster's datacenters:
    a change to one that is not made to the other fails here."""
    assert _shape(_serve_config()) == _shape(yaml.safe_load(DATACENTER_CONFIG.read_text()))
