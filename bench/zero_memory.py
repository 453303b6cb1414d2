"""ZeRO memory benchmark: per-rank model-state bytes of DeepSpeed ZeRO 0-3 vs the ZeRO paper.

    .venv/bin/python -m bench.zero_memory            # 3-8 minutes on 2 shared cores
    .venv/bin/python -m bench.zero_memory --no-fp32  # the bf16 (paper) rows only

What is measured: the bytes of model state one rank holds (parameters + gradients +
optimizer state, the ZeRO paper's "model states") for each ZeRO stage, on N = 2 Ray Train
workers (TorchTrainer, CPU, gloo) on the embedded local cluster (a private one, or with
``--existing`` the running cluster). Inside one worker group, for each stage: a fresh GPT
(``small`` preset widened to n_embd 384: Psi ~ 7.2 M parameters, so alignment padding and
small persistent tensors stay a few percent), DeepSpeed initialised with the training loop's
own ``deepspeed_config`` and torch AdamW, one optimizer step, then the forward and backward
of the next step; at that point (gradients reduced, optimizer state live) the tensors
DeepSpeed holds are walked and each distinct storage is counted once:

- parameters: the module's parameter storages (stages 1-2: the flat bit16 buffer the
  parameters are views of; stage 3: each parameter's partition ``ds_tensor``, plus the
  small parameters ZeRO-3 keeps whole below ``stage3_param_persistence_threshold``);
- gradients: ``param.grad`` and the optimizer's gradient partitions (``averaged_gradients``,
  ``grads_in_partition``, ``grad_partitions_flat_buffer``; in stages 1-2 each rank's
  buffer holds whole every parameter its partition touches, so the one parameter that
  straddles the partition boundary is held by both ranks);
- optimizer state: Adam's ``exp_avg``/``exp_avg_sq``/``step`` and the fp32 master
  partitions the wrapper keeps (``single_partition_of_fp32_groups``,
  ``fp32_partitioned_groups_flat``, the FP16 optimizer's fp32 groups).

Communication buckets (``ipg`` buffers: ZeRO-3 allocates ``reduce_bucket_size`` = 5e8
elements up front, 1 GB in bf16, whatever the model) are not model state: they are reported
as ``buffers_bytes``, outside the ratio, as is anything else the walk finds (``other_bytes``).
A flat buffer is labelled in ``detail`` by the first tensor found on it (stages 1-3 keep
all parameters in one flat buffer, so ``module.wte.weight`` there stands for all of them).
Each rank's figure comes back through an all-gather; the row takes the larger rank.

Baseline: the ZeRO paper's formulas (Rajbhandari et al., arXiv 1910.02054) for mixed-precision
Adam, K = 12 (fp32 master copy 4 + Adam m, v 8) on top of bf16 parameters 2 and gradients 2:
stage 0: 16 Psi; stage 1: 4 Psi + 12 Psi/N; stage 2: 2 Psi + 14 Psi/N; stage 3: 16 Psi/N.
DeepSpeed's CPU accelerator reports bf16 support (``is_bf16_supported()`` is True and gloo
reduces bf16), so the ``bf16`` rows run real bf16 mixed precision and use these formulas.

The ``fp32`` rows (default on; extra, not in the headline) run the same stages with
``bf16`` off, as the project's training loop does on CPU, against the formula DeepSpeed's
design implies for fp32: parameters 4 Psi and gradients 4 Psi; Adam m, v 8 Psi; and in
stages 1-3 DeepSpeed still clones an fp32 partition for the optimizer (a copy, not a view
of the parameters), so K = 12 there and 8 at stage 0 (the plain torch optimizer steps the
parameters themselves): stage 0: 16 Psi; stage 1: 8 Psi + 12 Psi/N; stage 2: 4 Psi + 16 Psi/N;
stage 3: 20 Psi/N. The rows also carry the paper's mixed-precision figure for comparison.

``ratio`` = measured / predicted bytes per row. The headline row ``zero_memory`` (printed
last) takes the bf16 stage whose ratio lies farthest from 1. Goal: within 0.85-1.15.
DeepSpeed's ZeRO-1 with one micro-batch per step reduces gradients into the rank's
partition during backward (like ZeRO-2), so it measures below the paper's stage-1 formula.
"""

from __future__ import annotations

import argparse
import gc
import re
import time
from dataclasses import asdict, dataclass

import ray
import torch

from bench import _deepspeed_bench as dsb
from bench._cluster import cluster, log
from bench._report import emit, machine_info, write_results
from cluster import storage

NAME = "zero_memory"
LOW, HIGH = 0.85, 1.15
GOAL = f"within {LOW}-{HIGH}"
STAGES = (0, 1, 2, 3)
CATEGORIES = ("parameters", "gradients", "optimizer_state")


@dataclass(kw_only=True, frozen=True, slots=True)
class BenchConfig:
    preset: str = "small"
    n_embd: int = 384
    """Width override of the preset: Psi ~ 7.2 M at 4 layers."""
    n_layer: int = 4
    batch_size: int = 2
    workers: int = 2
    fp32: bool = True
    """Also measure the fp32 rows (DeepSpeed's fp32 design formula)."""
    seed: int = 0


def paper_bytes(stage: int, psi: int, n: int) -> float:
    """The ZeRO paper's mixed-precision Adam model states per rank, K = 12."""
    return {0: 16, 1: 4 + 12 / n, 2: 2 + 14 / n, 3: 16 / n}[stage] * psi


def fp32_bytes(stage: int, psi: int, n: int) -> float:
    """fp32 params 4 and grads 4, Adam m, v 8, plus DeepSpeed's fp32 partition clone 4
    in stages 1-3 (stage 0 steps the parameters themselves)."""
    return {0: 16, 1: 8 + 12 / n, 2: 4 + 16 / n, 3: 20 / n}[stage] * psi


FORMULAS = {
    "bf16": {0: "16 Psi", 1: "4 Psi + 12 Psi/N", 2: "2 Psi + 14 Psi/N", 3: "16 Psi/N"},
    "fp32": {0: "16 Psi", 1: "8 Psi + 12 Psi/N", 2: "4 Psi + 16 Psi/N", 3: "20 Psi/N"},
}


class _Walk:
    """Distinct tensor storages DeepSpeed holds, each counted once, by category."""

    def __init__(self) -> None:
        self.seen: dict[
            int, tuple[str, str, str, int]
        ] = {}  # ptr -> (category, path, dtype, bytes)
        self._visited: set[int] = set()

    def add(self, tensor: torch.Tensor, category: str, path: str) -> None:
        if tensor.device.type == "meta":  # shape-only metadata DeepSpeed keeps, no storage
            return
        storage_ = tensor.untyped_storage()
        if storage_.nbytes() == 0 or storage_.data_ptr() in self.seen:
            return
        self.seen[storage_.data_ptr()] = (category, path, str(tensor.dtype), storage_.nbytes())

    def optimizer(self, obj, path: str, depth: int = 0) -> None:
        """Every tensor reachable from the optimizer wrapper, classified by where it sits."""
        if depth > 8 or id(obj) in self._visited:
            return
        if isinstance(obj, torch.Tensor):
            self.add(obj, self._category(path), path)
            if isinstance(obj.grad, torch.Tensor):
                self.add(obj.grad, "gradients", path + ".grad")
            return
        self._visited.add(id(obj))
        if isinstance(obj, dict):
            for key, value in obj.items():
                label = "param" if isinstance(key, torch.Tensor) else key
                self.optimizer(value, f"{path}[{label}]", depth + 1)
        elif isinstance(obj, list | tuple):
            for i, value in enumerate(obj):
                self.optimizer(value, f"{path}[{i}]", depth + 1)
        elif (
            hasattr(obj, "__dict__")
            and not isinstance(obj, torch.nn.Module)  # the module is walked on its own
            and type(obj).__module__.startswith(("deepspeed", "torch.optim"))
        ):
            for key, value in vars(obj).items():
                self.optimizer(value, f"{path}.{key}", depth + 1)

    @staticmethod
    def _category(path: str) -> str:
        if ".state[" in path:
            return "optimizer_state"  # Adam's exp_avg, exp_avg_sq, step
        if "ipg" in path or "bucket" in path:
            return "buffers"
        if "param_groups" in path or "fp32" in path:
            return "optimizer_state"  # the fp32 master partition the optimizer steps
        if "grad" in path:
            return "gradients"
        return "other"

    def totals(self) -> dict:
        out = dict.fromkeys((*CATEGORIES, "buffers", "other"), 0)
        top: dict[str, int] = {}
        for category, path, dtype, nbytes in self.seen.values():
            out[category] += nbytes
            key = f"{category}: {_generic(path)} ({dtype})"
            top[key] = top.get(key, 0) + nbytes
        out["model_states"] = sum(out[c] for c in CATEGORIES)
        out["detail"] = dict(sorted(top.items(), key=lambda kv: -kv[1])[:12])
        return out


def _generic(path: str) -> str:
    return re.sub(r"\[\d+\]|\.blocks\.\d+", "", path)


def model_state_bytes(engine) -> dict:
    """Walk the module's parameters (and stage 3's partitions), their gradients, then the
    optimizer wrapper and the torch optimizer inside it."""
    walk = _Walk()
    for name, p in engine.module.named_parameters():
        partition = getattr(p, "ds_tensor", None)
        if isinstance(partition, torch.Tensor):
            walk.add(partition, "parameters", f"module.{name}.ds_tensor")
        walk.add(p.data, "parameters", f"module.{name}")
        if isinstance(p.grad, torch.Tensor):
            walk.add(p.grad, "gradients", f"module.{name}.grad")
    basic = getattr(engine.optimizer, "optimizer", engine.optimizer)
    walk.optimizer(basic, "optimizer")  # the torch AdamW: its state and master params first
    walk.optimizer(engine.optimizer, "wrapper")
    return walk.totals()


def train_func(config: dict) -> None:
    """On each Ray Train worker: every (precision, stage) in turn, one engine at a time."""
    import ray.train
    import torch.distributed as dist

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    bench = BenchConfig(**config["bench"])
    torch.set_num_threads(1)
    results = []
    for precision in ("bf16", "fp32") if bench.fp32 else ("bf16",):
        for stage in STAGES:
            cfg = dsb.gpt_train_config(
                f"{NAME}_{precision}_{stage}",
                preset=bench.preset,
                zero_stage=stage,
                batch_size=bench.batch_size,
                n_embd=bench.n_embd,
                n_layer=bench.n_layer,
            )
            psi = dsb.num_params(cfg)
            engine = dsb.init_engine(cfg, world, bf16=precision == "bf16")
            gen = torch.Generator().manual_seed(bench.seed + rank)
            block = engine.module.cfg.block_size
            tokens = torch.randint(0, 256, (bench.batch_size, block + 1), generator=gen)
            dsb.train_step(engine, tokens)  # one optimizer step: the optimizer state exists
            _, loss = engine(tokens[:, :-1], tokens[:, 1:])
            engine.backward(loss)  # gradients of the next step, reduced as DeepSpeed keeps them
            measured = model_state_bytes(engine)
            measured["optimizer_class"] = type(engine.optimizer).__name__
            gathered: list = [None] * world
            dist.all_gather_object(gathered, measured)
            results.append({"precision": precision, "stage": stage, "psi": psi, "ranks": gathered})
            engine.destroy()
            del engine
            gc.collect()
    dsb.report_json(results, rank)


def rows_from(results: list[dict], n: int) -> list[dict]:
    rows = []
    for r in results:
        precision, stage, psi = r["precision"], r["stage"], r["psi"]
        worst = max(r["ranks"], key=lambda m: m["model_states"])
        predicted = (paper_bytes if precision == "bf16" else fp32_bytes)(stage, psi, n)
        ratio = worst["model_states"] / predicted
        rows.append(
            {
                "name": f"{NAME}.{precision}_stage{stage}",
                "ratio": round(ratio, 3),
                "goal": GOAL,
                "goal_met": LOW <= ratio <= HIGH,
                "ratio_of": "measured / predicted model-state bytes, larger rank",
                "stage": stage,
                "precision": precision,
                "psi": psi,
                "world_size": n,
                "measured": {
                    "bytes": worst["model_states"],
                    "per_psi": round(worst["model_states"] / psi, 3),
                    **{c: worst[c] for c in CATEGORIES},
                    "buffers_bytes": worst["buffers"],
                    "other_bytes": worst["other"],
                    "per_rank_bytes": [m["model_states"] for m in r["ranks"]],
                    "optimizer_class": worst["optimizer_class"],
                    "detail": worst["detail"],
                },
                "predicted": {
                    "bytes": round(predicted),
                    "per_psi": round(predicted / psi, 3),
                    "formula": FORMULAS[precision][stage],
                    "source": "ZeRO paper"
                    if precision == "bf16"
                    else "DeepSpeed fp32 design (see docstring)",
                },
                "paper_bytes": round(paper_bytes(stage, psi, n)),
            }
        )
    return rows


def headline(rows: list[dict]) -> dict:
    paper = [r for r in rows if r["precision"] == "bf16"]
    worst = max(paper, key=lambda r: abs(r["ratio"] - 1))
    return {
        "name": NAME,
        "ratio": worst["ratio"],
        "goal": GOAL,
        "goal_met": all(r["goal_met"] for r in paper),
        "ratio_of": "bf16 measured / ZeRO-paper bytes, the stage farthest from 1",
        "worst_stage": worst["stage"],
        "psi": worst["psi"],
        "world_size": worst["world_size"],
        "stage_ratios": {r["stage"]: r["ratio"] for r in paper},
        "measured_bytes": {r["stage"]: r["measured"]["bytes"] for r in paper},
        "predicted_bytes": {r["stage"]: r["predicted"]["bytes"] for r in paper},
        "formulas": FORMULAS["bf16"],
    }


def measure(bench: BenchConfig, storage_root: str) -> tuple[list[dict], float]:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        train_func,
        train_loop_config={"bench": asdict(bench)},
        scaling_config=ScalingConfig(num_workers=bench.workers, use_gpu=False),
        run_config=RunConfig(
            name=f"{NAME}-{int(time.time())}",
            storage_path=storage.join(storage_root, "ray_train"),
        ),
    )
    t0 = time.monotonic()
    result = trainer.fit()
    return dsb.result_json(result), time.monotonic() - t0


def parse_args(argv: list[str] | None) -> tuple[BenchConfig, bool]:
    defaults = BenchConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default=defaults.preset, help="GPT preset")
    parser.add_argument("--n-embd", type=int, default=defaults.n_embd, help="width override")
    parser.add_argument("--n-layer", type=int, default=defaults.n_layer)
    parser.add_argument("--no-fp32", action="store_true", help="skip the fp32 rows")
    parser.add_argument("--existing", action="store_true", help="use the running cluster")
    args = parser.parse_args(argv)
    bench = BenchConfig(
        preset=args.preset, n_embd=args.n_embd, n_layer=args.n_layer, fp32=not args.no_fp32
    )
    return bench, args.existing


def main(argv: list[str] | None = None) -> None:
    bench, existing = parse_args(argv)
    with cluster(existing) as settings:
        ray.init(address=settings.gcs_address, logging_level="ERROR")
        try:
            log(f"ZeRO stages {STAGES} on {bench.workers} Ray Train workers")
            results, fit_s = measure(bench, settings.storage_root)
        finally:
            ray.shutdown()
    machine = machine_info()
    rows = rows_from(results, bench.workers)
    extra = {"config": asdict(bench), "fit_s": round(fit_s, 1), "machine": machine}
    collected: list[dict] = []
    for r in [*rows, headline(rows)]:
        emit(r | extra, collected)
    log(f"wrote {write_results(NAME, collected)}")


if __name__ == "__main__":
    main()
