"""Ray Serve applications: one per module ending in ``app = ...``, deployed from
``serve_config.yaml``.

- ``models_api``: the model API (``Gateway`` -> ``Predictor`` / ``Generator``).
- ``admission``: the middleware every Serve HTTP proxy loads (overload refusals).
- ``keys``: API keys (the ``aimass keys`` command shares it); ``schemas``: the HTTP contract
  and the deployments' tunables.
"""

from serve_apps._private.loopback import bind_replica_grpc_to_node_ip

__all__ = ["admission", "gateway", "generator", "keys", "models_api", "predictor", "schemas"]

# Replicas import this package before their servers start: bind them to the node IP.
bind_replica_grpc_to_node_ip()
