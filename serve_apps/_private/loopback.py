"""Keep Serve's inter-deployment gRPC server off interfaces the node does not use.

Ray 2.60 starts each replica's inter-deployment gRPC server on ``[::]:0``, every
interface, while Ray's other servers bind to the node IP (ray-project/ray#59852). A
request arriving there reaches a deployment directly, past the gateway's API keys. Until
Ray binds it like the rest, replicas built from this package bind it to the node IP (on
the embedded cluster: 127.0.0.1). Other replicas reach it at the node IP, as they do now.
"""

from __future__ import annotations

import logging

logger = logging.getLogger("ray.serve")


def bind_replica_grpc_to_node_ip() -> None:
    """Patch the replica's bind call; a no-op if Ray no longer has it."""
    try:
        from ray.serve._private import replica
    except ImportError:
        return
    original = getattr(replica, "add_port_to_grpc_server", None)
    if original is None or getattr(original, "_aimass_node_ip", False):
        return

    def add_port(server, address: str):
        if address.startswith("[::]:"):
            import ray

            ip = ray.util.get_node_ip_address()
            host = f"[{ip}]" if ":" in ip else ip
            address = f"{host}:{address.rsplit(':', 1)[1]}"
        return original(server, address)

    add_port._aimass_node_ip = True
    replica.add_port_to_grpc_server = add_port
