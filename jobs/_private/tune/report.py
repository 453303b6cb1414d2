"""The experiment's report: one row per trial, best first, as a table (CSV, Markdown, the
job log) and every trial's curve (PNG), next to the experiment and in its MLflow run."""

from __future__ import annotations

import csv
import tempfile
from pathlib import Path

from cluster import storage
from jobs._private.tune.context import EPOCHS, TrialContext, fmt
from jobs.configs import TuneJobConfig


def trial_rows(results, job: TuneJobConfig) -> list[dict]:
    """One row per trial, best first: its values, status, epochs and objective. Trials
    without a score (failed before their first epoch) come last."""
    metric, mode = job.base().objective()
    rows = [trial_row(result, job, metric, mode) for result in results]
    key = f"last_{metric}"
    sign = -1 if mode == "max" else 1
    return sorted(rows, key=lambda r: (r[key] is None, sign * (r[key] or 0)))


def trial_row(result, job: TuneJobConfig, metric: str, mode: str) -> dict:
    """A ``ray.tune.Result``'s row: trial, status, the space's values, epochs, the last and
    the best score."""
    history = result.metrics_dataframe
    last, config = result.metrics or {}, result.config or {}
    scores = history[metric].dropna() if history is not None and metric in history else []
    best = (max(scores) if mode == "max" else min(scores)) if len(scores) else None
    return {
        "trial": last.get("trial_id") or Path(result.path).name.removeprefix("trial_"),
        "status": "ERROR" if result.error else "TERMINATED",
        **{key: fmt(config.get(key)) for key in job.space},
        "epochs": int(last.get(EPOCHS, 0)),
        f"last_{metric}": round(float(last[metric]), 4) if metric in last else None,
        f"best_{metric}": round(float(best), 4) if best is not None else None,
    }


def markdown_table(rows: list[dict]) -> str:
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(row[h]) for h in header) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def curves_png(results, job: TuneJobConfig, best_trial: str | None, path: Path) -> None:
    """Every trial's objective against its epochs; the registered trial drawn bold."""
    import matplotlib

    matplotlib.use("Agg")  # files only: jobs run without a display
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    metric, mode = job.base().objective()
    fig, ax = plt.subplots(figsize=(8, 5))
    for result in results:
        history = result.metrics_dataframe
        if history is None or metric not in history or EPOCHS not in history:
            continue
        trial = (result.metrics or {}).get("trial_id", "?")
        best = trial == best_trial
        ax.plot(
            history[EPOCHS],
            history[metric],
            marker="o",
            linewidth=2.5 if best else 1,
            alpha=1 if best else 0.6,
            label=f"{trial} (registered)" if best else trial,
        )
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{metric} ({mode})")
    ax.set_title(f"{job.name}: {job.scheduler} + {job.search}, {len(results)} trials")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(results, ctx: TrialContext, best_trial: str | None) -> list[dict]:
    """Print the summary table; save it (CSV, Markdown) and the curves (PNG) next to the
    experiment and as artifacts of its MLflow run."""
    rows = trial_rows(results, ctx.job)
    table = markdown_table(rows)
    print("[tune] summary, best first:", flush=True)
    for line in table.splitlines():
        print(f"[tune] {line}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "tune_summary.md").write_text(table)
        with (folder / "tune_summary.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        curves_png(results, ctx.job, best_trial, folder / "tune_curves.png")
        for file in sorted(folder.iterdir()):
            storage.write_bytes(storage.join(ctx.experiment_uri, file.name), file.read_bytes())
        ctx.registry().client.log_artifacts(ctx.parent_run_id, str(folder))
    return rows
