"""Submit a job through Ray's Jobs API (what `ray job submit` does) and follow it."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

from ray.job_submission import JobStatus, JobSubmissionClient

from cluster.exceptions import ClusterError
from cluster.provenance import GIT_SHA_ENV, git_sha
from cluster.settings import Settings

# The jobs' own progress lines, e.g. "[train] epoch 3/30 ...", without Ray's prefixes.
_JOBS = "ingest|train|tune|compress|evaluate|release|ensemble|export|batch_predict|pipeline"
_PROGRESS = re.compile(rf"\[({_JOBS})\] .*")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def run_job(
    settings: Settings,
    entrypoint: str,
    working_dir: Path,
    echo: Callable[[str], None] = print,
    timeout_s: float = 1800,
    client: JobSubmissionClient | None = None,
) -> str:
    """Submit ``entrypoint`` with ``working_dir`` uploaded; echo its progress lines.

    Returns the submission id once the job succeeded; raises ClusterError with the end of
    its logs when it failed or ran past ``timeout_s``. ``client``: another cluster's Jobs
    API (its address and token) instead of the one ``settings`` name.
    """
    client = client or JobSubmissionClient(settings.dashboard_url)
    runtime_env = {
        "working_dir": str(working_dir),
        "env_vars": {GIT_SHA_ENV: git_sha(working_dir)},
    }
    job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
    echo(f"submitted {job_id}: {entrypoint}")
    seen, deadline = 0, time.monotonic() + timeout_s
    while True:
        status = client.get_job_status(job_id)
        lines = _ANSI.sub("", client.get_job_logs(job_id)).splitlines()
        for line in lines[seen:]:
            if match := _PROGRESS.search(line):
                echo(match.group(0))
        seen = len(lines)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            break
        if time.monotonic() > deadline:
            client.stop_job(job_id)
            raise ClusterError(f"Job {job_id} ran past {timeout_s:.0f} s and was stopped.")
        time.sleep(1.0)
    if status != JobStatus.SUCCEEDED:
        tail = "\n".join(lines[-30:])
        raise ClusterError(f"Job {job_id} ({entrypoint}) ended {status}:\n{tail}")
    return job_id
