"""Pipeline-stage actors on the session cluster: equality, budgets, placement, recovery.

Tiny GPTs (a few layers of width 64), registered in a SQLite registry the stage actors read
from the same disk. Each test's group has its own model name, so stage names never clash.
"""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass, field

import pytest
import ray
import torch
from ray._common.test_utils import wait_for_condition

from actors.exceptions import PipelineUnavailable, StageOverBudget
from actors.pipeline import DEFAULT_NAMESPACE, PipelineConfig, StagedGPT, placement

LOAD_CLIENTS = 3
LOAD_AFTER_RECOVERY = 15  # answers each client must still get once the group is back


@pytest.fixture(scope="module")
def ray_client(local_cluster):
    """This process as a driver of the session cluster."""
    ray.init(address=local_cluster.gcs_address, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def registry(tmp_path):
    from models.registry import Registry

    return Registry(f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "artifacts"))


@pytest.fixture
def staged(ray_client):
    """``staged(registry, name, config)``: a started StagedGPT, shut down after the test."""
    started: list[StagedGPT] = []

    def start(registry, name: str, version: int, config: PipelineConfig) -> StagedGPT:
        started.append(StagedGPT.from_registry(registry, name, version, config))
        return started[-1]

    yield start
    for model in started:
        model.shutdown()


def stage_names(model: str) -> list[str]:
    return sorted(
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == DEFAULT_NAMESPACE and a["name"].startswith(f"stage:{model}:")
    )


@pytest.mark.parametrize("strategy", ["PACK", "SPREAD"])
def test_staged_logits_and_greedy_generations_equal_the_model(
    registry, register_gpt, staged, strategy
):
    name = f"eq{strategy.lower()}"
    info, model = register_gpt(registry, name, n_layer=4)
    config = PipelineConfig(num_stages=2, micro_batches=2, strategy=strategy)
    lm = staged(registry, name, info.version, config)
    idx = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(lm(idx)[0], model(idx)[0], rtol=1e-5, atol=1e-5)
        greedy = model.generate(idx[:2, :8], 12, top_k=1)
    assert torch.equal(lm.generate(idx[:2, :8], 12, top_k=1), greedy)

    rows = lm.placement()
    assert [r.name for r in rows] == [f"stage:{name}:1:1of2", f"stage:{name}:1:2of2"]
    assert [r.layers for r in rows] == [(0, 2), (2, 4)]
    assert {r.node_id for r in rows} == {ray.get_runtime_context().get_node_id()}
    assert all(r.datacenter and r.param_bytes > 0 for r in rows)
    assert placement(model=name) == rows  # by name, as `aimass status` finds them


def test_a_model_over_one_stage_budget_is_refused_unsharded_and_served_in_two(
    registry, register_gpt, staged
):
    info, model = register_gpt(registry, "budget", n_layer=4)
    whole = model.cfg.num_params * 4  # float32
    budget = whole * 2 // 3
    with pytest.raises(StageOverBudget, match=f"over its budget of {budget:,} bytes") as err:
        staged(registry, "budget", 1, PipelineConfig(num_stages=1, stage_memory_bytes=budget))
    assert err.value.stage == "1/1" and f"{whole:,}" in str(err.value)
    assert stage_names("budget") == []  # refused before any actor started

    lm = staged(registry, "budget", 1, PipelineConfig(num_stages=2, stage_memory_bytes=budget))
    assert all(r.param_bytes <= budget for r in lm.placement())
    idx = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(lm(idx)[0], model(idx)[0], rtol=1e-5, atol=1e-5)


@dataclass
class Ledger:
    """Every request a client sent and how it ended (thread-safe appends)."""

    ok: list[int] = field(default_factory=list)
    wrong: list[int] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    retried: int = 0


def client(lm: StagedGPT, expected: torch.Tensor, idx: torch.Tensor, ledger: Ledger, stop):
    """Send requests until ``stop``; one client-side retry on PipelineUnavailable."""
    request = 0
    while not stop.is_set():
        request += 1
        for attempt in range(2):
            try:
                logits = lm.logits(idx)
            except PipelineUnavailable as err:
                if attempt == 1:
                    ledger.failed.append(str(err))
                else:
                    ledger.retried += 1
                continue
            good = torch.allclose(logits, expected, rtol=1e-5, atol=1e-5)
            (ledger.ok if good else ledger.wrong).append(request)
            break


def test_a_killed_stage_brings_the_group_back_and_no_request_is_lost(
    registry, register_gpt, staged
):
    info, model = register_gpt(registry, "fault", n_layer=4)
    lm = staged(registry, "fault", 1, PipelineConfig(num_stages=2, micro_batches=2))
    idx = torch.randint(0, 256, (4, 16))
    with torch.no_grad():
        expected = model(idx)[0]
    before = {r.name: r for r in lm.placement()}
    pids = ray.get([ray.get_actor(n, DEFAULT_NAMESPACE).describe.remote() for n in before])

    ledgers = [Ledger() for _ in range(LOAD_CLIENTS)]
    stop = threading.Event()
    threads = [
        threading.Thread(target=client, args=(lm, expected, idx, ledger, stop), daemon=True)
        for ledger in ledgers
    ]
    for thread in threads:
        thread.start()
    try:
        wait_for_condition(lambda: all(len(x.ok) >= 3 for x in ledgers), timeout=60)
        os.kill(pids[1]["pid"], signal.SIGKILL)  # the last stage's process, mid-load
        wait_for_condition(lambda: lm.group.generation >= 2, timeout=120)
        targets = {id(x): len(x.ok) + LOAD_AFTER_RECOVERY for x in ledgers}
        wait_for_condition(lambda: all(len(x.ok) >= targets[id(x)] for x in ledgers), timeout=60)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)

    ok = sum(len(x.ok) for x in ledgers)
    failed = sum(len(x.failed) for x in ledgers)
    assert not any(x.wrong for x in ledgers)
    retried = sum(x.retried for x in ledgers)
    print(f"fault run: {ok} answered, {failed} failed, {retried} client retries")
    assert ok / (ok + failed) >= 0.99, [x.failed for x in ledgers]
    after = ray.get([ray.get_actor(n, DEFAULT_NAMESPACE).describe.remote() for n in before])
    assert {a["pid"] for a in after}.isdisjoint({p["pid"] for p in pids})  # all restarted
    assert [a["weights_sha256"] for a in after] == [p["weights_sha256"] for p in pids]
    assert all(a["weights_sha256"] for a in after)  # reloaded and checked against the manifest
