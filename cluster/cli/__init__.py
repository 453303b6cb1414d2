"""Entrypoints, above every other layer: they compose jobs, Serve applications and the rest.

- ``aimass``: the ``aimass`` command (``up``, ``status``, ``down``, ``keys``, ``models``).
- ``demo``: ``make demo`` (``python -m cluster.cli.demo``), the whole path on the local cluster.
- ``deploy``, ``query``, ``jobs_client``: clients of the cluster and the model API that the
  demo, the benchmarks and the tests share (``serve deploy``, HTTP queries, the Jobs API).
"""

__all__ = ["aimass", "console", "demo", "deploy", "jobs_client", "query"]
