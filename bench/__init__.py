"""Benchmarks: ``python -m bench.<name>``, each a ratio against a baseline measured in the
same run (see PERFORMANCE.md for the output contract)."""
