"""The terminal console of aimass's commands."""

from __future__ import annotations

import sys

from rich.console import Console


def make_console() -> Console:
    """A rich console; when output is piped (CI, `| grep`), wide enough that tables and
    reports keep one record per line instead of wrapping at rich's default 80 columns."""
    return Console(width=None if sys.stdout.isatty() else 200)
