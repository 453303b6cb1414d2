"""The benchmarks' output contract: one JSON line per row on stdout, and a results file.

Every row carries at least ``name``, ``ratio`` (ours / baseline, as the benchmark's
docstring defines it), ``goal`` (text), ``goal_met`` (bool) and ``machine``; the raw
figures of both sides go alongside. ``bench/results/<name>.jsonl`` keeps the latest run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REQUIRED = ("name", "ratio", "goal", "goal_met", "machine")


def machine_info() -> dict:
    """Cores and GPU of the machine this runs on (call it where the measurement runs)."""
    import torch  # every benchmark has it; imported here so the contract stays light

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cores": os.cpu_count(), "gpu": gpu}


def _plain(value):
    # numpy scalars and arrays, Paths: whatever a benchmark computed, as JSON can hold it.
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def emit(row: dict, rows: list[dict] | None = None) -> dict:
    """Print ``row`` as one JSON line (flushed) and append it to ``rows`` when given.

    Raises:
        ValueError: ``row`` lacks a field of the contract.
    """
    missing = [key for key in REQUIRED if key not in row]
    if missing:
        raise ValueError(f"Benchmark row {row.get('name')!r} lacks {missing}; see PERFORMANCE.md.")
    print(json.dumps(row, default=_plain), flush=True)
    if rows is not None:
        rows.append(row)
    return row


def write_results(name: str, rows: list[dict]) -> Path:
    """Write ``rows`` to ``bench/results/<name>.jsonl``, replacing the previous run's."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.jsonl"
    path.write_text("".join(json.dumps(row, default=_plain) + "\n" for row in rows))
    return path
