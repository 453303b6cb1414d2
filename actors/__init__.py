"""Long-lived Ray actors, one responsibility each: plain classes, made remote where created.

- ``rate_limiter``: the global per-key quota every gateway replica leases from.
- ``release``: releases (config, the controller actor that decides them, the gateway's client).
- ``shard_store``: a dataset's shards held by replica actors across nodes and datacenters.
- ``pipeline``: pipeline-stage actors (a GPT split by layers over a placement group).
- ``serve_singleton``: the one named, detached actor of a class in the Serve namespace.
"""

from __future__ import annotations

__all__ = ["pipeline", "rate_limiter", "release", "serve_singleton", "shard_store"]


def serve_singleton(cls: type, name: str, **options):
    """The one named, detached actor ``name`` of class ``cls`` in the Serve namespace,
    created by whoever asks first (every later caller gets the same one). Restarted by Ray
    when it dies; costs no CPU slot."""
    import ray
    from ray.serve._private.constants import SERVE_NAMESPACE

    return (
        ray.remote(cls)
        .options(
            name=name,
            namespace=SERVE_NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
            num_cpus=0,
            max_restarts=-1,
            **options,
        )
        .remote()
    )
