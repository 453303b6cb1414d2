"""Ray Serve applications: one per module ending in ``app = ...``, deployed from
``serve_config.yaml``."""

from serve_apps._private.loopback import bind_replica_grpc_to_node_ip

# Replicas import this package before their servers start: bind them to the node IP.
bind_replica_grpc_to_node_ip()
