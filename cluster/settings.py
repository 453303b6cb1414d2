"""The cluster's settings: one typed object, read from ``AIMASS_*`` environment variables.

``aimass up`` passes these variables into the environment of the Ray head, so every job,
actor and Serve replica on the cluster sees the same storage, tracking URI and ports
without the user repeating them.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cluster.topology import Datacenter

ENV_PREFIX = "AIMASS_"


class Settings(BaseSettings):
    """Where the cluster keeps its state and where its services listen."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore")

    home: Path = Field(
        default=Path("~/.aimass"),
        description="Local state folder: Ray temp files, logs, the default storage and MLflow db.",
    )
    storage_uri: str = Field(
        default="",
        description="Root for data shards, checkpoints and artifacts: a local path, s3://… or "
        "gs://… (pyarrow filesystems). Empty means <home>/storage.",
    )
    tracking_uri: str = Field(
        default="",
        description="MLflow tracking and registry URI. Empty means a SQLite file "
        "<home>/mlflow.db; on clusters use a tracking server (http://…).",
    )
    token_path: Path = Field(
        default=Path("~/.ray/auth_token"),
        description="Ray auth token file (created with mode 0600 if missing). Ray's own "
        "default path, so `ray job submit` from any shell finds it.",
    )
    host: str = Field(
        default="127.0.0.1",
        description="Address every service binds to; binding wider (0.0.0.0) is explicit.",
    )
    gcs_port: int = Field(default=6379, ge=1024, le=65535, description="Ray GCS port.")
    dashboard_port: int = Field(
        default=8265, ge=1024, le=65535, description="Ray dashboard and Jobs API port."
    )
    serve_port: int = Field(default=8000, ge=1024, le=65535, description="Serve HTTP port.")
    num_cpus: int = Field(
        default=0,
        ge=0,
        description="Logical CPUs the local head offers; 0 means max(4, cores). More than the "
        "cores lets the data pipeline, the gateway and training share a small machine.",
    )
    proxy_max_in_flight: int = Field(
        default=64,
        ge=1,
        description="Requests each Serve HTTP proxy admits at a time; past it, 503 with "
        "Retry-After at once (~ the gateways' concurrency plus Serve's queue: 2 x 16 + 32).",
    )
    prometheus: Literal["auto", "off"] = Field(
        default="auto",
        description="auto: `aimass up` starts Prometheus (scraping the cluster, loading the "
        "alert rules) when it is installed; off: never.",
    )
    prometheus_port: int = Field(
        default=9190,
        ge=1024,
        le=65535,
        description="Port of the cluster's Prometheus (not 9090, where Debian's own service "
        "of the package listens when systemd starts it).",
    )
    prometheus_scrape_s: int = Field(
        default=10, ge=1, le=300, description="Scrape and rule evaluation interval, seconds."
    )
    prometheus_retention: str = Field(default="15d", description="How long metrics are kept.")
    alert_window_s: int = Field(
        default=300, ge=1, description="The rate window of the alert rules, seconds."
    )
    alert_for_s: int = Field(
        default=120, ge=0, description="How long an alert's condition holds before it fires."
    )
    alert_p99_ms: float = Field(
        default=500.0, gt=0, description="The p99 latency budget of a model's answers, ms."
    )
    drift_alert_psi: float = Field(
        default=0.2,
        gt=0,
        description="Population stability index of a model's inputs past which drift alerts "
        "(0.1-0.2 is the usual 'moderate shift', above 0.2 'significant').",
    )
    region: str = Field(default="local", description="Datacenter (Ray region) of the local head.")
    zone: str = Field(default="local-a", description="Availability zone of the local head.")

    @field_validator("home", "token_path")
    @classmethod
    def _expand(cls, path: Path) -> Path:
        return path.expanduser().absolute()

    @cached_property
    def storage_root(self) -> str:
        """The storage URI, defaulting to a folder under ``home``."""
        return self.storage_uri or str(self.home / "storage")

    @cached_property
    def mlflow_uri(self) -> str:
        """The MLflow tracking/registry URI, defaulting to SQLite under ``home``."""
        return self.tracking_uri or f"sqlite:///{self.home / 'mlflow.db'}"

    @property
    def gcs_address(self) -> str:
        return f"{self.host}:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{self.host}:{self.dashboard_port}"

    @property
    def serve_url(self) -> str:
        return f"http://{self.host}:{self.serve_port}"

    @property
    def ray_temp_dir(self) -> Path:
        # Ray puts Unix sockets under its temp dir; their paths must stay short (~107 bytes),
        # so this lives in /tmp rather than under `home`. One per GCS port keeps two local
        # clusters (a demo and a test run) apart.
        return Path("/tmp") / f"aimass-ray-{self.gcs_port}"

    @property
    def datacenter(self) -> Datacenter:
        return Datacenter(region=self.region, zone=self.zone)

    @property
    def head_cpus(self) -> int:
        return self.num_cpus or max(4, os.cpu_count() or 1)

    def as_env(self) -> dict[str, str]:
        """These settings as ``AIMASS_*`` variables, resolved, for processes on the cluster."""
        return {
            f"{ENV_PREFIX}HOME": str(self.home),
            f"{ENV_PREFIX}STORAGE_URI": self.storage_root,
            f"{ENV_PREFIX}TRACKING_URI": self.mlflow_uri,
            f"{ENV_PREFIX}TOKEN_PATH": str(self.token_path),
            f"{ENV_PREFIX}HOST": self.host,
            f"{ENV_PREFIX}GCS_PORT": str(self.gcs_port),
            f"{ENV_PREFIX}DASHBOARD_PORT": str(self.dashboard_port),
            f"{ENV_PREFIX}SERVE_PORT": str(self.serve_port),
            f"{ENV_PREFIX}PROXY_MAX_IN_FLIGHT": str(self.proxy_max_in_flight),
            f"{ENV_PREFIX}REGION": self.region,
            f"{ENV_PREFIX}ZONE": self.zone,
        }

    @property
    def is_loopback(self) -> bool:
        return self.host in ("127.0.0.1", "localhost", "::1")

    def ray_client_env(self) -> dict[str, str]:
        """Variables a Ray process (the head, a CLI, a driver) needs to reach this cluster."""
        env = {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.token_path),
            # The Jobs CLI/SDK read this; RAY_ADDRESS would also redirect `ray.init()`.
            "RAY_API_SERVER_ADDRESS": self.dashboard_url,
        }
        if self.is_loopback:
            # `ray start` and `ray.init` swap a loopback node IP for the machine's reachable
            # one, and Ray's servers bind to the node IP. This switch (Ray's own, meant for
            # local-only clusters) keeps the node IP, and so every server, on loopback; a
            # driver needs it too, to find the raylet of its (loopback) node.
            env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        return env


def get_settings() -> Settings:
    """Settings from the current environment (read fresh: tests and jobs change it)."""
    return Settings()
