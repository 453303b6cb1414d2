"""Pipeline stages placed across nodes and datacenters of a 3-node, 2-datacenter cluster:
``STRICT_SPREAD`` puts each stage on its own node, and per-stage datacenters pin each stage
to a node of its region; the answers stay those of the whole model."""

from __future__ import annotations

import pytest
import torch

from actors.pipeline import PipelineConfig, StagedGPT


@pytest.fixture
def registry(tmp_path):
    from models.registry import Registry

    return Registry(f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "artifacts"))


def serve_staged(registry, register_gpt, name: str, **config) -> tuple[StagedGPT, torch.nn.Module]:
    info, model = register_gpt(registry, name, n_layer=4)
    staged = StagedGPT.from_registry(registry, name, info.version, PipelineConfig(**config))
    return staged, model


def assert_same_answers(staged: StagedGPT, model: torch.nn.Module) -> None:
    idx = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(staged(idx)[0], model(idx)[0], rtol=1e-5, atol=1e-5)
        assert torch.equal(staged.generate(idx, 6, top_k=1), model.generate(idx, 6, top_k=1))


def test_strict_spread_puts_every_stage_on_its_own_node(
    ray_start_3_nodes_2_datacenters, registry, register_gpt
):
    staged, model = serve_staged(
        registry, register_gpt, "spread3", num_stages=3, strategy="STRICT_SPREAD"
    )
    try:
        rows = staged.placement()
        assert len({r.node_id for r in rows}) == 3, rows
        assert sorted(r.datacenter for r in rows) == ["eu-west", "eu-west", "us-east"], rows
        assert_same_answers(staged, model)
    finally:
        staged.shutdown()


def test_each_stage_runs_in_the_datacenter_its_config_names(
    ray_start_3_nodes_2_datacenters, registry, register_gpt
):
    _, workers = ray_start_3_nodes_2_datacenters
    us_east = workers[1].node_id
    staged, model = serve_staged(
        registry, register_gpt, "bydc", num_stages=2, datacenters=("us-east", "eu-west")
    )
    try:
        rows = staged.placement()
        assert [r.datacenter for r in rows] == ["us-east", "eu-west"], rows
        assert rows[0].node_id == us_east and rows[1].node_id != us_east, rows
        assert rows[0].name.endswith(":us-east") and rows[1].name.endswith(":eu-west"), rows
        assert_same_answers(staged, model)
    finally:
        staged.shutdown()
