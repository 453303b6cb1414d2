"""A fine-tune's warm start inside a real DeepSpeed engine, per ZeRO stage: the workers'
``_start_from_parent`` loads the parent version's weights, fetched from a real registry,
and the first optimizer step keeps them (at a negligible learning rate).

The step is the point: ZeRO keeps an fp32 master copy of the weights apart from the module
and writes it back after each step, so weights loaded into the module alone are replaced by
the fresh ones on the first step (measured without the refresh: 0.64, a fresh init's
distance from the parent's, after one step at lr 1e-9). One rank on gloo, no Ray: the
engine is what is tested. DeepSpeed's CPU backend JIT-builds an op on its first use here
(minutes on a fresh machine, cached after).
"""

from __future__ import annotations

import contextlib
from dataclasses import replace

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from jobs._private.deepspeed_setup import initialize
from jobs._private.loop_config import LoopConfig
from jobs._private.train_loop import _start_from_parent
from jobs.configs import preset
from models import package
from models.registry import Registry
from models.weights import read_tensors, save_weights
from models.zoo import architecture, build_model

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def one_rank_process_group(tmp_path_factory):
    """A gloo process group of one rank, and the rank variables DeepSpeed reads, as Ray
    Train makes them for each worker."""
    init = tmp_path_factory.mktemp("pg") / "store"
    with pytest.MonkeyPatch.context() as env:
        for name in ("RANK", "LOCAL_RANK"):
            env.setenv(name, "0")
        env.setenv("WORLD_SIZE", "1")
        dist.init_process_group("gloo", init_method=f"file://{init}", rank=0, world_size=1)
        yield
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def parent(tmp_path_factory) -> tuple[Registry, str, dict[str, torch.Tensor]]:
    """A digits CNN registered as digits@1 in a registry of its own: (registry, ref, weights)."""
    root = tmp_path_factory.mktemp("registry")
    registry = Registry(f"sqlite:///{root / 'mlflow.db'}", str(root / "artifacts"))
    torch.manual_seed(123)  # not the engine's seed: the fresh model differs from the parent
    folder = root / "package"
    folder.mkdir()
    save_weights(build_model("digits_cnn"), folder / package.WEIGHTS_FILE)
    signature = architecture("digits_cnn").signature_for({})
    package.PackageConfig("digits_cnn", signature, {}, {}).write(folder)
    run = registry.client.create_run(registry.experiment("digits"))
    info = registry.register("digits", run.info.run_id, folder)
    return registry, f"digits@{info.version}", read_tensors(folder / package.WEIGHTS_FILE)


def distance(engine, weights: dict[str, torch.Tensor], zero_stage: int) -> float:
    """The largest difference between the engine's parameters and ``weights``."""
    import deepspeed

    params = list(engine.module.parameters())
    gathered = (
        deepspeed.zero.GatheredParameters(params) if zero_stage == 3 else contextlib.nullcontext()
    )
    with gathered:
        return max(
            (p.detach().float().cpu() - weights[name]).abs().max().item()
            for name, p in engine.module.named_parameters()
        )


@pytest.mark.parametrize("zero_stage", [0, 2, 3])
def test_the_first_step_keeps_the_parents_weights(one_rank_process_group, parent, zero_stage):
    registry, ref, weights = parent
    cfg = replace(
        preset("digits_cnn"), name="warm", zero_stage=zero_stage, lr=1e-9, grad_clip=0.0,
        init_from=ref,
    )  # fmt: skip
    engine, dtype, _ = initialize(cfg, world_size=1, steps_per_epoch=10)
    assert distance(engine, weights, zero_stage) > 0.1  # fresh weights
    loop = LoopConfig(
        train=cfg,
        steps_per_epoch=10,
        tracking_uri=registry.tracking_uri,
        artifact_root=registry.artifact_root,
    )
    _start_from_parent(engine, loop)
    assert distance(engine, weights, zero_stage) == 0

    x, y = torch.rand(32, 64) * 16, torch.randint(0, 10, (32,))
    engine.backward(F.cross_entropy(engine(x.to(dtype)), y))
    engine.step()
    assert distance(engine, weights, zero_stage) < 1e-6
