"""Where code came from: the git commit recorded in a model's lineage."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

GIT_SHA_ENV = "AIMASS_GIT_SHA"
"""Set by whoever submits a job (``cluster.cli.jobs_client``): Ray leaves ``.git`` out of
the working dir it uploads, so a job cannot ask git itself."""


def git_sha(folder: Path | None = None) -> str:
    """The commit of the code: ``AIMASS_GIT_SHA`` when set, else the commit checked out in
    ``folder`` (default: the working directory), else ``"unknown"``."""
    if sha := os.environ.get(GIT_SHA_ENV):
        return sha
    out = subprocess.run(
        ["git", "-C", str(folder or Path.cwd()), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
    )
    return out.stdout.strip() if out.returncode == 0 else "unknown"
