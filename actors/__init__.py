"""Long-lived Ray actors: plain classes, made remote where they are created."""

from __future__ import annotations


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
