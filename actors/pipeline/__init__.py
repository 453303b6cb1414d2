"""Pipeline-stage actors: a GPT split by layers over stage actors in a placement group.

``config`` says how (stages, split points, micro-batches, memory budget, placement);
``plan`` which layers and tensors each stage holds (balanced by parameter bytes, pure);
``stage`` the slice (``StageModule``) and the actor class that loads and runs it;
``group`` the actors of one version (start, pipelined submit, whole-group restart,
placement); ``staged`` the ``StagedGPT`` the Generator calls as it calls a ``GPT``.
"""

from __future__ import annotations

from actors.pipeline.config import DEFAULT_NAMESPACE, PipelineConfig
from actors.pipeline.group import (
    GroupState,
    StageGroup,
    StagePlacement,
    placement,
    stage_name,
)
from actors.pipeline.plan import StageSpec, check_budget, plan_stages
from actors.pipeline.stage import PackageSource, PipelineStage, StageModule, build_stage
from actors.pipeline.staged import StagedGPT

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
    "StagedGPT",
    "build_stage",
    "check_budget",
    "placement",
    "plan_stages",
    "stage_name",
]
