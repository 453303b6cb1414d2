"""The cluster a benchmark runs on: the running one (``--existing``) or a private one.

A private cluster (temp home, free ports, token auth as always) is started for the run and
stopped after it, so a benchmark never disturbs a user's cluster unless asked to.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cluster import local, local_datacenters
from cluster.settings import Settings, get_settings


def log(message: str) -> None:
    """Progress on stderr: stdout carries only the JSON rows."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def cluster(existing: bool, datacenters: tuple[str, ...] = ()) -> Iterator[Settings]:
    """The cluster to run on: the current settings' (must be running) or a private one,
    with a node per datacenter when ``datacenters`` are named (``aimass up --datacenters``)."""
    if existing:
        settings = get_settings()
        if not local.is_running(settings):
            raise SystemExit(
                f"No cluster answers at {settings.dashboard_url}; run `aimass up` or drop "
                "--existing to let the benchmark start its own."
            )
        local.connect_clients(settings)
        yield settings
        return
    with tempfile.TemporaryDirectory(prefix="aimass-bench-") as home:
        settings = Settings(
            home=Path(home),
            token_path=Path(home) / "token",
            gcs_port=local.free_port(),
            dashboard_port=local.free_port(),
            serve_port=local.free_port(),
            prometheus="off",  # measured as the baselines run: nothing else scraping
        )
        local.connect_clients(settings)
        log(f"starting a private Ray cluster at {settings.gcs_address}")
        try:
            local.up(settings)  # inside the try: a start that times out is still cleaned up
            if datacenters:
                local_datacenters.start(settings, list(datacenters))
            yield settings
        finally:
            local.down(settings)
            shutil.rmtree(settings.ray_temp_dir, ignore_errors=True)  # this cluster's only
