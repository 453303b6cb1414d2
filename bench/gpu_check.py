"""GPU validation of the training presets: DeepSpeed ZeRO 0-3, offload, bf16, NCCL, checkpoints.

    python -m bench.gpu_check                 # on a machine with an NVIDIA GPU (~3-6 min)
    python -m bench.gpu_check --cases zero2,ckpt

CI machines have no GPU, so the paths that only exist there (NCCL, bf16 compute, pinned-memory
offload, DeepSpeedCPUAdam built by nvcc's toolchain, the CUDA ONNX Runtime provider) are run
by this command instead of the tests. It needs torch with CUDA, DeepSpeed and safetensors; not
Ray: the engine comes from ``jobs.initialize_deepspeed``, exactly as each Ray Train worker
builds it, on a one-rank NCCL process group made here.

Each case trains the ``gpt_125m`` preset's model (GPT-2 small shape, bf16) for a few steps on
byte tokens of this Python's standard library and prints one row: tokens/s, model TFLOP/s
(6 x params x tokens/s, x 4/3 with activation checkpointing), peak GPU memory and the loss at
the first and last step. ``ratio`` is last loss / first loss; goal: the loss falls (< 1).

- ``zero0``..``zero3``: the ZeRO stages; ``offload``: ZeRO-3 with optimizer (DeepSpeedCPUAdam)
  and parameters offloaded to pinned host memory; ``1b3``: the ``gpt_1b3`` preset (ZeRO-3,
  activation checkpointing, 2048-token context).
- ``ckpt``: ZeRO-3 sharded checkpoint with its SHA-256 manifest, restored into a fresh engine
  through ``weights_only`` loading; ratio = restored loss / saved loss on the same batch
  (goal: 1 within bf16 noise).
- ``onnx``: the small GPT exported to ONNX and run by ONNX Runtime with the best provider
  present (CUDA with onnxruntime-gpu); ratio = 1 + max |torch - ORT| (goal: parity).
"""

from __future__ import annotations

import argparse
import gc
import os
import sysconfig
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from bench._report import emit, machine_info, write_results
from jobs.configs import TrainConfig, preset

CASES = ("zero0", "zero1", "zero2", "zero3", "offload", "1b3", "ckpt", "onnx")
H100_BF16_DENSE_TFLOPS = 989.0  # the peak MFU is quoted against (SXM, no sparsity)


def corpus(limit_bytes: int = 64 << 20) -> np.ndarray:
    """Byte tokens of the running Python's standard library sources (present everywhere)."""
    parts, size = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        data = path.read_bytes()
        parts.append(np.frombuffer(data, dtype=np.uint8))
        size += len(data)
        if size >= limit_bytes:
            break
    return np.concatenate(parts)


def sample(tokens: np.ndarray, batch: int, block: int, rng: np.random.Generator) -> torch.Tensor:
    starts = rng.integers(0, len(tokens) - block - 1, size=batch)
    rows = np.stack([tokens[s : s + block + 1] for s in starts]).astype(np.int64)
    return torch.from_numpy(rows).cuda()


def config_for(case: str) -> TrainConfig:
    base = replace(preset("gpt_125m"), num_workers=1, epochs=1)
    if case.startswith("zero") or case == "ckpt":
        return replace(base, zero_stage=3 if case == "ckpt" else int(case[-1]))
    if case == "offload":
        return replace(base, zero_stage=3, offload_optimizer=True, offload_params=True)
    if case == "1b3":
        return replace(preset("gpt_1b3"), num_workers=1, epochs=1)
    raise ValueError(case)


def train_case(case: str, tokens: np.ndarray, steps: int) -> dict:
    from jobs import initialize_deepspeed as initialize

    cfg = config_for(case)
    torch.cuda.reset_peak_memory_stats()
    engine, dtype, _ = initialize(cfg, world_size=1, steps_per_epoch=steps)
    block = engine.module.cfg.block_size
    params = sum(
        p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in engine.module.parameters()
    )
    rng = np.random.default_rng(0)
    losses, timed_from = [], 3  # the first steps warm up kernels and allocators
    for step in range(steps):
        if step == timed_from:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
        seq = sample(tokens, cfg.batch_size * cfg.grad_accum, block, rng)
        for micro in seq.split(cfg.batch_size):
            _, loss = engine(micro[:, :-1], micro[:, 1:])
            engine.backward(loss)
            engine.step()
        losses.append(loss.item())
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    tokens_per_s = (steps - timed_from) * cfg.batch_size * cfg.grad_accum * block / elapsed
    recompute = 4 / 3 if cfg.model_options.get("activation_checkpointing") else 1.0
    tflops = 6 * params * tokens_per_s * recompute / 1e12
    row = {
        "name": f"gpu_check.{case}",
        "ratio": round(losses[-1] / losses[0], 4),
        "goal": "loss falls: last/first < 1",
        "goal_met": losses[-1] < losses[0],
        "zero_stage": cfg.zero_stage,
        "offload": cfg.offload_optimizer,
        "dtype": str(dtype),
        "params": params,
        "block_size": block,
        "batch": cfg.batch_size * cfg.grad_accum,
        "steps": steps,
        "loss_first": round(losses[0], 4),
        "loss_last": round(losses[-1], 4),
        "tokens_per_s": round(tokens_per_s),
        "model_tflops": round(tflops, 1),
        "mfu_vs_h100_bf16": round(tflops / H100_BF16_DENSE_TFLOPS, 3),
        "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
    }
    del engine
    gc.collect()
    torch.cuda.empty_cache()
    return row


def checkpoint_case(tokens: np.ndarray) -> dict:
    from jobs import initialize_deepspeed as initialize
    from jobs import load_checkpoint_shards as load_shards
    from jobs import save_checkpoint_shard as save_shard
    from jobs import verify_checkpoint as verify

    cfg = config_for("ckpt")
    engine, _, _ = initialize(cfg, world_size=1, steps_per_epoch=10)
    rng = np.random.default_rng(1)
    for _ in range(5):
        seq = sample(tokens, cfg.batch_size, engine.module.cfg.block_size, rng)
        _, loss = engine(seq[:, :-1], seq[:, 1:])
        engine.backward(loss)
        engine.step()
    probe = sample(tokens, cfg.batch_size, engine.module.cfg.block_size, rng)
    with torch.no_grad():
        saved_loss = engine(probe[:, :-1], probe[:, 1:])[1].item()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        save_shard(engine, folder, rank=0, world_size=1, position={"epoch": 0, "step": 5})
        save_s = time.perf_counter() - t0
        verify(folder)
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        del engine
        gc.collect()
        torch.cuda.empty_cache()
        fresh, _, _ = initialize(replace(cfg, seed=cfg.seed + 1), world_size=1, steps_per_epoch=10)
        t0 = time.perf_counter()
        position = load_shards(fresh, folder)
        load_s = time.perf_counter() - t0
    with torch.no_grad():
        restored_loss = fresh(probe[:, :-1], probe[:, 1:])[1].item()
    ratio = restored_loss / saved_loss
    del fresh
    gc.collect()
    torch.cuda.empty_cache()
    return {
        "name": "gpu_check.ckpt",
        "ratio": round(ratio, 5),
        "goal": "restored loss equals saved loss (|ratio - 1| < 1e-3)",
        "goal_met": abs(ratio - 1) < 1e-3,
        "saved_loss": saved_loss,
        "restored_loss": restored_loss,
        "position": position,
        "checkpoint_mib": round(size / 2**20, 1),
        "save_s": round(save_s, 2),
        "load_s": round(load_s, 2),
    }


def onnx_case() -> dict:
    from models.gpt import LogitsOnly
    from models.onnx_export import INPUT_NAME, OUTPUT_NAME, cpu_session, export_onnx
    from models.zoo import build_model

    model = LogitsOnly(build_model("gpt", preset="small")).eval()
    example = torch.randint(0, 256, (4, 64))
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, example, Path(tmp) / "gpt.onnx", dynamic_sequence=True)
        session = cpu_session(path)
        probe = torch.randint(0, 256, (8, 100))
        got = session.run([OUTPUT_NAME], {INPUT_NAME: probe.numpy()})[0]
        t0 = time.perf_counter()
        for _ in range(20):
            session.run([OUTPUT_NAME], {INPUT_NAME: probe.numpy()})
        per_call_ms = (time.perf_counter() - t0) / 20 * 1e3
    with torch.no_grad():
        expected = model(probe).numpy()
    diff = float(np.max(np.abs(expected - got)))
    return {
        "name": "gpu_check.onnx",
        "ratio": round(1 + diff, 6),
        "goal": "parity: max |torch - ORT| < 1e-3",
        "goal_met": diff < 1e-3,
        "providers": session.get_providers(),
        "max_abs_diff": diff,
        "ms_per_call_8x100": round(per_call_ms, 2),
    }


def generate_check(tokens: np.ndarray) -> dict:
    """The trained-from-scratch small model's sampler runs on the GPU (text is noise)."""
    from models.gpt import decode, encode
    from models.zoo import build_model

    model = build_model("gpt", preset="small").cuda().eval()
    prompt = torch.tensor([encode("def main(")], device="cuda")
    t0 = time.perf_counter()
    out = model.generate(prompt, max_new_tokens=64, top_k=20)
    torch.cuda.synchronize()
    return {
        "generated_tokens": out.shape[1] - prompt.shape[1],
        "generate_ms": round((time.perf_counter() - t0) * 1e3, 1),
        "sample": decode(out[0].tolist())[:40],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--cases", default=",".join(CASES), help="comma-separated: " + " ".join(CASES)
    )
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit(
            "bench.gpu_check needs an NVIDIA GPU (torch.cuda.is_available() is False)."
        )
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT="29533", RANK="0", LOCAL_RANK="0", WORLD_SIZE="1"
    )
    dist.init_process_group("nccl", rank=0, world_size=1, device_id=torch.device("cuda", 0))
    torch.cuda.set_device(0)
    tokens, rows = corpus(), []
    machine = machine_info() | {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "nccl": ".".join(map(str, torch.cuda.nccl.version())),
        "bf16": torch.cuda.is_bf16_supported(),
        "backend": dist.get_backend(),
    }
    for case in args.cases.split(","):
        try:
            if case == "ckpt":
                row = checkpoint_case(tokens)
            elif case == "onnx":
                row = onnx_case() | generate_check(tokens)
            else:
                row = train_case(case, tokens, args.steps)
        except Exception as err:  # one broken path must not hide the others' figures
            row = {
                "name": f"gpu_check.{case}",
                "ratio": None,
                "goal": "runs",
                "goal_met": False,
                "error": f"{type(err).__name__}: {err}"[:2000],
            }
        emit(row | {"machine": machine}, rows)
    write_results("gpu_check", rows)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
