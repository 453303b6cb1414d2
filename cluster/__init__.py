"""The bottom layer: settings, datacenters, storage and the embedded local cluster.

It imports nothing else of aimass; every other package may import it.

- ``settings``: one typed object read from ``AIMASS_*`` variables (``get_settings``).
- ``topology``: datacenters and the Ray node labels that name them (label keys live here only).
- ``storage``: the one storage URI (a folder, ``s3://…``, ``gs://…``) through pyarrow.
- ``local``: the embedded cluster (``up``, ``down``, ``is_running``), token auth on.
- ``provenance``: the git commit a model's lineage records.
- ``edge``: the edge across clusters: its spec, the HAProxy configuration generated from it,
  and runtime changes (weights, drain, residency) through ``haproxy``.
- ``haproxy``: the HAProxy process (check, start, reload, stop) and its runtime API.
- ``exceptions``: ``ClusterError``.

``cluster.cli`` is not part of this layer: it holds the entrypoints (the ``aimass`` command,
``make demo``) at the top of the stack, above jobs and Serve applications.
"""

from cluster.exceptions import ClusterError
from cluster.settings import Settings, get_settings
from cluster.topology import Datacenter

__all__ = ["ClusterError", "Datacenter", "Settings", "get_settings"]
