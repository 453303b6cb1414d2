"""Deploy-time checks of a model API config against the cluster's datacenters.

``serve deploy`` accepts a config whose replicas can never be placed: a Predictor pinned by
``label_selector`` to a region without nodes, or more minimum replicas than a datacenter
has CPUs for, waits for nodes forever. ``aimass deploy`` runs ``check_placement`` first and
refuses such a config, naming the field, the value and the fix.
"""

from __future__ import annotations

from collections import defaultdict

from cluster.topology import REGION_LABEL

PREDICTOR = "Predictor-"  # serve_apps: one Predictor-<region> deployment per datacenter


def check_placement(config: dict, cpus_by_datacenter: dict[str, float]) -> list[str]:
    """Problems of ``config`` on a cluster with ``cpus_by_datacenter`` (CPUs of the nodes
    of each region); an empty list when it can be placed.

    Checks each application's ``args.datacenters`` (each must have nodes; its Predictor
    deployments must be the ones listed, each pinned to its own region), tenant residency
    in the gateway's ``user_config.datacenters.tenants``, and that the minimum replicas
    pinned to a datacenter fit its CPUs.
    """
    problems: list[str] = []
    known = ", ".join(sorted(cpus_by_datacenter)) or "none"
    for a, app in enumerate(config.get("applications", [])):
        where = f"applications[{a}]"
        datacenters = (app.get("args") or {}).get("datacenters") or []
        for i, dc in enumerate(datacenters):
            if dc not in cpus_by_datacenter:
                problems.append(
                    f"{where}.args.datacenters[{i}]: no node is in datacenter {dc!r} "
                    f"(datacenters with nodes: {known})"
                )
        deployments = app.get("deployments", [])
        problems += _predictors_match(where, datacenters, deployments)
        problems += _tenants_known(where, datacenters, deployments)
        problems += _minimums_fit(where, deployments, cpus_by_datacenter)
    return problems


def _predictors_match(where: str, datacenters: list[str], deployments: list[dict]) -> list[str]:
    problems = []
    for d, dep in enumerate(deployments):
        name = dep.get("name", "")
        if not name.startswith(PREDICTOR):
            continue
        dc = name.removeprefix(PREDICTOR)
        if dc not in datacenters:
            problems.append(
                f"{where}.deployments[{d}].name: {name!r} has no datacenter in args.datacenters "
                f"({', '.join(datacenters) or 'none'}): add {dc!r} there or remove it"
            )
        selector = (dep.get("ray_actor_options") or {}).get("label_selector")
        if "ray_actor_options" in dep and selector != {REGION_LABEL: dc}:
            problems.append(
                f"{where}.deployments[{d}].ray_actor_options.label_selector: {selector!r}; "
                f"ray_actor_options replaces the code's, so give {{{REGION_LABEL}: {dc}}} "
                f"or {name}'s replicas may land outside {dc}"
            )
    return problems


def _tenants_known(where: str, datacenters: list[str], deployments: list[dict]) -> list[str]:
    problems = []
    for d, dep in enumerate(deployments):
        policy = ((dep.get("user_config") or {}).get("datacenters")) or {}
        for tenant, places in (policy.get("tenants") or {}).items():
            for i, dc in enumerate(places):
                if dc not in datacenters:
                    problems.append(
                        f"{where}.deployments[{d}].user_config.datacenters.tenants.{tenant}[{i}]:"
                        f" {dc!r} is not one of args.datacenters "
                        f"({', '.join(datacenters) or 'none'})"
                    )
    return problems


def _minimums_fit(
    where: str, deployments: list[dict], cpus_by_datacenter: dict[str, float]
) -> list[str]:
    needed: dict[str, float] = defaultdict(float)
    fields: dict[str, list[str]] = defaultdict(list)
    for d, dep in enumerate(deployments):
        options = dep.get("ray_actor_options") or {}
        dc = (options.get("label_selector") or {}).get(REGION_LABEL)
        if dc is None or dc not in cpus_by_datacenter:
            continue
        scaling = dep.get("autoscaling_config")
        if scaling:
            replicas, field = scaling.get("min_replicas", 1), "autoscaling_config.min_replicas"
        else:
            replicas, field = dep.get("num_replicas", 1), "num_replicas"
        needed[dc] += replicas * options.get("num_cpus", 1)
        fields[dc].append(f"{where}.deployments[{d}].{field}")
    return [
        f"{' + '.join(fields[dc])}: the minimum replicas pinned to {dc} need {cpus:g} CPUs; "
        f"its nodes have {cpus_by_datacenter[dc]:g}: lower the minimums or add nodes to {dc}"
        for dc, cpus in needed.items()
        if cpus > cpus_by_datacenter[dc] + 1e-9
    ]


def cpus_by_datacenter(nodes: list[dict]) -> dict[str, float]:
    """CPUs of the live nodes of each region, from ``ray.nodes()``'s entries."""
    cpus: dict[str, float] = defaultdict(float)
    for node in nodes:
        region = (node.get("Labels") or {}).get(REGION_LABEL)
        if node.get("Alive") and region:
            cpus[region] += node.get("Resources", {}).get("CPU", 0.0)
    return dict(cpus)
