"""Pipeline-stage actors: a GPT split by layers over stage actors in a placement group.

``config`` says how (stages, split points, micro-batches, memory budget, placement);
``plan`` which layers and tensors each stage holds (balanced by parameter bytes, pure);
``stage`` the slice (``StageModule``) and the actor class that loads and runs it, with its
KV caches; ``group`` the actors of one version (start, pipelined submit, whole-group restart,
placement); ``staged`` the ``StagedGPT`` the Generator calls as it calls a ``GPT``.

The config names load eagerly; the rest (torch, models) on first use, so that a process
that only reads configs (the gateway validating serve_config.yaml) does not import torch.
"""

from __future__ import annotations

import importlib

from actors.pipeline.config import (
    DEFAULT_NAMESPACE,
    PipelineConfig,
    in_namespace,
    owner_namespace,
)

_LAZY = {
    "GroupState": "group",
    "StageGroup": "group",
    "StagePlacement": "group",
    "placement": "group",
    "stage_name": "group",
    "StageSpec": "plan",
    "check_budget": "plan",
    "plan_stages": "plan",
    "PackageSource": "stage",
    "PipelineStage": "stage",
    "StageModule": "stage",
    "build_stage": "stage",
    "StagedCache": "staged",
    "StagedGPT": "staged",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'actors.pipeline' has no attribute {name!r}")
    return getattr(importlib.import_module(f"actors.pipeline.{_LAZY[name]}"), name)


__all__ = [
    "DEFAULT_NAMESPACE",
    "GroupState",
    "PackageSource",
    "PipelineConfig",
    "PipelineStage",
    "StageGroup",
    "StageModule",
    "StagePlacement",
    "StageSpec",
    "StagedCache",
    "StagedGPT",
    "build_stage",
    "check_budget",
    "in_namespace",
    "owner_namespace",
    "placement",
    "plan_stages",
    "stage_name",
]
