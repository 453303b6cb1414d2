"""Offline batch inference: ``jobs.batch_predict`` (Ray Data, ONNX Runtime actors) vs one
process running ONNX Runtime over the same Parquet files.

    .venv/bin/python -m bench.batch_predict                 # ~4 min
    .venv/bin/python -m bench.batch_predict --rows 20000    # a quicker run

The model is the digits transformer (3.2 M parameters, ~1 ms of ONNX Runtime per row on one
thread: compute-bound, as batch scoring is), untrained (weights do not change the cost),
registered in a private cluster's registry. The input is ``--rows`` digit images (the
dataset's rows repeated) in ``--files`` Parquet files. Both sides read every file, score it
in batches of ``--batch-size`` with one ONNX Runtime thread per process and write one
Parquet file of predictions per input file:

- ours: ``python -m jobs.batch_predict`` submitted as a job, ``--concurrency`` actors
  sharing the files out (each reads, scores and writes whole files);
  rows/s from the job's own clock (from listing the files to the last shard written: actor
  start-up included) and, apart, from submission to the job's end (``submit_rows_per_s``);
- baseline: one plain Python process (``bench.batch_predict baseline``), its own clock.

``ratio`` = ours rows/s / baseline rows/s; goal >= 1.5 (2 cores: parallel reads and
scoring). The cluster is private (temp home, free ports), started and stopped here.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench._cluster import cluster, log
from bench._report import emit, machine_info, write_results

NAME = "batch_predict"
GOAL = 1.5
REPO = Path(__file__).resolve().parents[1]
MODEL = "bench_transformer"
_RATE = re.compile(r"\[batch_predict\] ([\d,]+) rows in ([\d.]+) s")


def write_inputs(folder: Path, rows: int, files: int) -> None:
    """``rows`` digit images in ``files`` Parquet files (the dataset's rows, repeated)."""
    import pyarrow.parquet as pq
    from sklearn.datasets import load_digits

    from models.dataset import to_table

    x, y = load_digits(return_X_y=True)
    take = np.arange(rows) % len(y)
    folder.mkdir(parents=True)
    for i, part in enumerate(np.array_split(take, files)):
        pq.write_table(to_table(x[part].astype(np.float32), y[part]), folder / f"{i:04d}.parquet")


def register_model(settings, folder: Path) -> str:
    """An untrained digits transformer registered as ``MODEL`` v1; its ONNX file's path."""
    import torch

    from models import package
    from models.onnx_export import export_onnx
    from models.registry import Registry
    from models.weights import save_weights
    from models.zoo import architecture, build_model

    torch.manual_seed(0)
    model = build_model("digits_transformer").eval()
    save_weights(model, folder / package.WEIGHTS_FILE)
    export_onnx(model, torch.rand(2, 64) * 16, folder / package.ONNX_FILE)
    signature = architecture("digits_transformer").signature_for({})
    package.PackageConfig("digits_transformer", signature, {}, {}).write(folder)
    registry = Registry.from_settings(settings)
    run = registry.client.create_run(registry.experiment(MODEL))
    registry.register(MODEL, run.info.run_id, folder)
    return str(folder / package.ONNX_FILE)


def baseline(onnx: str, inputs: Path, output: Path, batch_size: int) -> dict:
    """One process: read, score and write every file in turn, one ONNX Runtime thread."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from models.evaluation import softmax
    from models.onnx_export import INPUT_NAME, OUTPUT_NAME, cpu_session

    session = cpu_session(Path(onnx), threads=1)
    output.mkdir(parents=True, exist_ok=True)
    start, rows = time.monotonic(), 0
    for path in sorted(inputs.glob("*.parquet")):
        table = pq.read_table(path, columns=["features"])
        x = np.asarray(table["features"].combine_chunks().flatten(), np.float32).reshape(-1, 64)
        proba = np.concatenate(
            [
                softmax(session.run([OUTPUT_NAME], {INPUT_NAME: x[i : i + batch_size]})[0])
                for i in range(0, len(x), batch_size)
            ]
        ).astype(np.float32)
        out = pa.table(
            {
                "prediction": proba.argmax(1),
                "probabilities": pa.FixedSizeListArray.from_arrays(
                    pa.array(proba.reshape(-1)), proba.shape[1]
                ),
            }
        )
        pq.write_table(out, output / path.name)
        rows += len(x)
    seconds = time.monotonic() - start
    return {"rows": rows, "seconds": round(seconds, 2), "rows_per_s": round(rows / seconds, 1)}


def ours(settings, inputs: Path, output: Path, args) -> dict:
    from cluster.cli.jobs_client import run_job

    lines: list[str] = []
    entry = (
        f"python -m jobs.batch_predict --model {MODEL}@1 --input {inputs} --output {output} "
        f"--concurrency {args.concurrency} --batch-size {args.batch_size} --threads 1"
    )
    start = time.monotonic()

    def echo(line: str) -> None:
        lines.append(line)
        log(line)

    run_job(settings, entry, REPO, echo, timeout_s=1800)
    wall = time.monotonic() - start
    found = [_RATE.search(line) for line in lines]
    rows, seconds = next((int(m[1].replace(",", "")), float(m[2])) for m in found if m)
    return {
        "rows": rows,
        "seconds": seconds,
        "rows_per_s": round(rows / seconds, 1),
        "submit_seconds": round(wall, 2),
        "submit_rows_per_s": round(rows / wall, 1),
        "concurrency": args.concurrency,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=60_000)
    parser.add_argument("--files", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--existing", action="store_true", help="use the running cluster")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with cluster(args.existing) as settings, tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_inputs(tmp / "in", args.rows, args.files)
        (tmp / "pkg").mkdir()
        onnx = register_model(settings, tmp / "pkg")
        log(f"{args.rows} rows in {args.files} files; baseline first")
        cmd = [sys.executable, "-m", "bench.batch_predict", "baseline", onnx, str(tmp / "in"),
               str(tmp / "base-out"), str(args.batch_size)]  # fmt: skip
        base = json.loads(
            subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True).stdout
        )
        log(f"baseline: {base['rows_per_s']:.0f} rows/s")
        mine = ours(settings, tmp / "in", tmp / "out", args)
        since_submit = mine["submit_rows_per_s"]
        log(f"ours: {mine['rows_per_s']:.0f} rows/s ({since_submit:.0f} from submission)")
    ratio = mine["rows_per_s"] / base["rows_per_s"]
    row = emit(
        {
            "name": NAME,
            "ratio": round(ratio, 3),
            "goal": f">= {GOAL}x one ONNX Runtime process's rows/s",
            "goal_met": ratio >= GOAL,
            "submit_ratio": round(mine["submit_rows_per_s"] / base["rows_per_s"], 3),
            "ours": mine,
            "baseline": base,
            "load": {"rows": args.rows, "files": args.files, "batch_size": args.batch_size},
            "model": "digits_transformer (untrained), 1 ONNX Runtime thread per process",
            "machine": machine_info(),
        }
    )
    log(f"wrote {write_results(NAME, [row])}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "baseline":
        _, _, onnx, inputs, output, batch = sys.argv
        print(json.dumps(baseline(onnx, Path(inputs), Path(output), int(batch))))
    else:
        main()
