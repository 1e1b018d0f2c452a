"""``python -m lstm_fast explain``: the worked example's numbers, the gradient-flow
curves, and the PNG or (without matplotlib) the text chart."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from lstm_fast import __main__ as cli
from lstm_fast import explain


def test_worked_example_numbers_come_from_the_engine():
    ex = explain.worked_example()
    np.testing.assert_array_equal(ex.z_f, [92.0, 177.0, 136.0])
    np.testing.assert_array_equal(ex.z_i, [22.0, 43.0, 64.0])
    np.testing.assert_array_equal(ex.f, [1.0, 1.0, 1.0])  # saturated in float64
    np.testing.assert_allclose(ex.i, [1.0, 1.0, 1.0], atol=1e-9)
    np.testing.assert_array_equal(ex.c_new, explain.C_PREV)  # f = 1, g = tanh(0) = 0
    # The printed figures need the other bias; the sums themselves are 21, 42, 63.
    v = np.concatenate([explain.X, explain.H_PREV])
    np.testing.assert_array_equal(explain.W_I @ v + explain.B_I_PRINTED, explain.PRINTED_Z_I)


def test_worked_example_shows_the_arithmetic(capsys):
    explain.show_worked_example(explain.worked_example())
    out = capsys.readouterr().out
    assert "z_f[0] = 1·1 + 2·2 + 3·3 + 4·4 + 5·5 + 6·6 + 1" in out
    assert "= 1 + 4 + 9 + 16 + 25 + 36 + 1 = 92" in out
    assert "= 5 + 12 + 21 + 32 + 45 + 60 + 2 = 177" in out
    assert "= 3 + 8 + 15 + 24 + 35 + 48 + 3 = 136" in out
    assert "lstm_fast: z_f = [92.0, 177.0, 136.0],  f = σ(z_f) = [1.0, 1.0, 1.0]" in out
    assert "= 3 + 6 + 9 + 12 + 15 + 18 + 1 = 64" in out
    assert "lstm_fast: z_i = [22.0, 43.0, 64.0]" in out
    assert "prints z_i = [22, 42, 62]: that does not add up" in out
    assert "W_i·[x, h_prev] are [21, 42, 63]" in out
    assert "needs b_i = [1, 0, -1]" in out
    assert "1 - 1.1e-40" in out  # σ(92)


def test_tanh_rnn_gradients_match_finite_differences():
    # dL/dh at the last step back to the first, checked through the input of step 0:
    # L = sum(h_T), and dL/dx_0 = (dh_0 * (1 - h_0^2)) @ W.
    rng = np.random.default_rng(3)
    steps, batch, inputs, hidden = 6, 2, 3, 4
    x = rng.standard_normal((steps, batch, inputs))
    w, u = rng.standard_normal((hidden, inputs)), rng.standard_normal((hidden, hidden))
    b = rng.standard_normal(hidden)
    h, dh = explain.tanh_rnn_gradients(x, w, u, b, np.ones((batch, hidden)))
    analytic = (dh[0] * (1.0 - h[0] ** 2)) @ w
    numeric = np.zeros_like(analytic)
    eps = 1e-6
    for r in range(batch):
        for j in range(inputs):
            xp, xm = x.copy(), x.copy()
            xp[0, r, j] += eps
            xm[0, r, j] -= eps
            lp = explain.tanh_rnn_gradients(xp, w, u, b, np.ones((batch, hidden)))[0][-1].sum()
            lm = explain.tanh_rnn_gradients(xm, w, u, b, np.ones((batch, hidden)))[0][-1].sum()
            numeric[r, j] = (lp - lm) / (2 * eps)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-9)


def test_gradient_flow_curves():
    curves = {c.mark: explain._relative(c) for c in explain.gradient_flow(60, 16, seed=0)}
    assert set(curves) == {"=", "a", "0", "1", "r"}
    for r in curves.values():
        assert r.shape == (60,) and r[0] == 1.0
    np.testing.assert_allclose(curves["="], 1.0, rtol=1e-12)  # the carousel alone
    assert 0.3 < curves["a"].min() and curves["a"].max() < 30  # no vanishing
    assert curves["0"][-1] < 1e-8 and curves["r"][-1] < 1e-8  # vanishing
    assert curves["0"][-1] < curves["1"][-1] < 1e-2  # bias 1 decays slower, still decays


def test_gradient_flow_is_deterministic_with_the_seed():
    a = explain.gradient_flow(20, 8, seed=5)
    b = explain.gradient_flow(20, 8, seed=5)
    c = explain.gradient_flow(20, 8, seed=6)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.norm, y.norm)
    assert not np.array_equal(a[1].norm, c[1].norm)


def test_text_chart_has_decade_labels_and_every_mark():
    curves = explain.gradient_flow(30, 8, seed=0)
    lines = explain.text_chart(curves)
    assert any(line.lstrip().startswith("1e+00 |") for line in lines)
    body = "".join(line.split("|", 1)[1] for line in lines if "|" in line)
    for mark in "a01r":
        assert mark in body
    assert lines[-1].rstrip().endswith("29 steps back")


def test_quick_run_writes_the_png(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "flow.png"
    assert cli.main(["explain", "--quick", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"Plot written to {out}" in text
    assert "T = 30, H = 8" in text
    assert "29 steps back" not in text  # no text chart when the PNG is written
    for k in ("0", "1", "5", "10", "25", "29"):
        assert any(line.split()[:1] == [k] for line in text.splitlines())


def test_without_matplotlib_the_text_chart(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib: ImportError
    out = tmp_path / "flow.png"
    assert cli.main(["explain", "--quick", "--steps", "40", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert not out.exists()
    assert "matplotlib is not installed" in text
    assert "39 steps back" in text and "1e+00 |" in text
    table = [line.split() for line in text.splitlines()]
    row = next(r for r in table if r[:1] == ["39"])  # k = T - 1
    assert float(row[1]) == pytest.approx(1.0)  # the carousel alone


def test_no_plot_prints_the_chart(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["explain", "--quick", "--no-plot"]) == 0
    assert "29 steps back" in capsys.readouterr().out
    assert not (tmp_path / "explain.png").exists()


def test_python_m_lstm_fast_explain(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "lstm_fast", "explain", "--quick", "--no-plot", "--seed", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "(1) The forget-gate worked example" in result.stdout
    assert "(2) Gradient flow through time: T = 30, H = 8" in result.stdout
    assert "explain" in [c.name for c in cli.COMMANDS]
