"""Smoke test of ``python -m lstm_fast demo`` with tiny sizes."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from lstm_fast import demo


def test_quick_demo_runs_both_tasks(capsys):
    assert demo.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "(a) Adding problem, T = 12" in out
    assert "test MSE on 1000 fresh sequences" in out
    assert "(b) Character model on the Zen of Python" in out
    assert "epoch   2/2 [########################] loss" in out
    sample = out.split("LSTM.step):\n")[1]
    assert sample.startswith("    | Beautiful is")


def test_options_override_quick(capsys, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("abcabcabd " * 20, encoding="utf-8")
    assert (
        demo.main(
            ["--quick", "--task", "char", "--text", str(text), "--epochs", "1", "--prompt", "ab"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "Adding" not in out and "epoch   1/1" in out and "200 characters, 5 symbols" in out


def test_adding_batch_targets_are_the_marked_sums():
    x, target = demo.adding_batch(np.random.default_rng(0), 16, 100)
    assert x.shape == (16, 100, 2) and target.shape == (16, 1)
    assert (x[:, :, 1].sum(axis=1) == 2).all()
    assert (x[:, :50, 1].sum(axis=1) == 1).all()  # one marker in each half
    np.testing.assert_allclose((x[:, :, 0] * x[:, :, 1]).sum(axis=1), target[:, 0], rtol=1e-6)


def test_zen_of_python_is_decoded_without_printing(capsys):
    text = demo.zen_of_python()
    assert text.startswith("The Zen of Python, by Tim Peters")
    assert "Beautiful is better than ugly." in text
    assert capsys.readouterr().out == ""


def test_python_m_lstm_fast_demo():
    result = subprocess.run(
        [sys.executable, "-m", "lstm_fast", "demo", "--quick", "--task", "adding"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "Adding problem" in result.stdout
