"""`aimass release`: the commands the release controller's messages name exist, and the
CLI refuses to run without a cluster (the commands against one: tests/e2e/test_release.py)."""

from __future__ import annotations

import pytest

from actors.release.controller import ABORT_COMMAND, STATUS_COMMAND
from cluster.cli import aimass


@pytest.mark.parametrize("command", [ABORT_COMMAND, STATUS_COMMAND])
def test_the_commands_the_controller_names_exist(command):
    argv = command.format(model="digits").split()
    assert argv[0] == "aimass"  # the console script of cluster.cli.aimass (pyproject.toml)
    args = aimass.parser().parse_args(argv[1:])
    assert args.run is aimass.cmd_release and args.model == "digits"


def test_aimass_release_needs_a_running_cluster(settings_env, capsys):
    with pytest.raises(SystemExit) as exit_:
        aimass.main(["release", "status"])
    assert exit_.value.code == 1 and "Start one: aimass up" in capsys.readouterr().out
