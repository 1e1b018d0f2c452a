"""``python -m lstm_fast``: one argparse tree, every command reachable and documented."""

from __future__ import annotations

import subprocess
import sys

import pytest
from lstm_fast import __main__ as cli


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # undo the line wrapping
    for command in cli.COMMANDS:
        assert command.name in out and command.help in out
    for option in ("--quick", "--shapes", "--threads", "--repeats", "--impls"):
        assert option in out


@pytest.mark.parametrize("command", [c.name for c in cli.COMMANDS])
def test_each_command_has_its_own_help(capsys, command):
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    assert exit_.value.code == 0
    assert f"usage: python -m lstm_fast {command}" in capsys.readouterr().out


def test_check_agrees_with_the_reference(capsys):
    assert cli.main(["check"]) == 0
    out = capsys.readouterr().out
    assert "15 arrays" in out and out.rstrip().endswith("OK")


def test_bench_runs_one_cell_per_pass(capsys):
    assert cli.main(["bench", "--quick", "--shapes", "S", "--impls", "lstm_fast"]) == 0
    out = capsys.readouterr().out
    assert "S: B=1 T=100 I=128 H=128" in out
    assert "\nS     fwd " in out and "\nS     fwd+bwd " in out
    assert "Check:" not in out  # bench alone does not run the check


@pytest.mark.parametrize(
    "argv",
    [
        ["bench", "--shapes", "Q"],
        ["bench", "--threads", "0"],
        ["bench", "--repeats", "0"],
        ["bench", "--impls", "numba"],
        ["--shapes", "S", "check"],  # the main job's options do not belong to check
        ["--threads", "2", "demo"],
        ["demo", "--seq-len", "0"],
        ["nosuchcommand"],
    ],
)
def test_bad_options_are_usage_errors(capsys, argv):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_python_m_lstm_fast_main_job():
    """No command: the check, then the table (what .ci/run and the README run)."""
    result = subprocess.run(
        [sys.executable, "-m", "lstm_fast", "--quick", "--shapes", "S", "--impls", "lstm_fast"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "Check: one forward + backward" in result.stdout
    assert "\nS     fwd+bwd " in result.stdout
