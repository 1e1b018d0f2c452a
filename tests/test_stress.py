"""The short form of the stress suite (scripts/stress.py), one test per check.

Each check runs in a child process of its own (a crash or a hang there is a failed
test here, not a dead test run) and asserts its own property against an oracle:
the single-threaded bits, the first call's bits, the NumPy reference, the
exception types of docs/api.md, 'Bad input'. The tests here also read the
figures back, so that a check that silently did nothing fails too. The long form,
``python scripts/stress.py --long``, runs the same checks longer, plus the
interrupt latency, the generated bad-call sweep and the wheel matrix
(RELIABILITY.md).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import ROOT

STRESS = ROOT / "scripts" / "stress.py"

pytestmark = pytest.mark.skipif(
    sys.platform != "linux", reason="reads /proc/self and forks: Linux only"
)


def run_stress(tmp_path, *checks: str) -> dict:
    """``stress.py --check ...``: its summary, by check name; fails on its failures."""
    summary_path = tmp_path / "stress.json"
    cmd = [sys.executable, str(STRESS), "--json", str(summary_path)]
    for check in checks:
        cmd += ["--check", check]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    summary = json.loads(summary_path.read_text())
    results = {r["check"]: r for r in summary["results"]}
    return {"rc": proc.returncode, "output": proc.stdout + proc.stderr, "results": results}


def assert_passed(run: dict, check: str) -> dict:
    result = run["results"][check]
    assert result["status"] == "ok", (
        f"{check}: {result['outcome']}\n"
        + "\n".join(result["failures"])
        + "\n"
        + run["output"][-3000:]
    )
    return result["figures"]


@pytest.mark.timeout(300)
def test_concurrency_with_thread_count_changes(tmp_path):
    """8 threads at once, set_num_threads flipping: the single-threaded bits."""
    run = run_stress(tmp_path, "concurrency")
    figures = assert_passed(run, "concurrency")
    assert figures["mismatches"] == 0 and figures["errors"] == 0
    assert figures["calls"] >= 8 * len(figures["calls_by_job"]), figures
    assert figures["set_num_threads_switches"] >= 10, figures


@pytest.mark.timeout(300)
def test_memory_and_threads_flat_over_many_calls(tmp_path):
    """Valid and failing calls mixed: right exceptions, same bits, flat RSS and threads."""
    run = run_stress(tmp_path, "memory")
    figures = assert_passed(run, "memory")
    assert figures["failing_calls"] > 0 and figures["valid_calls"] > 0
    assert set(figures["exceptions_by_type"]) <= {"TypeError", "ValueError"}, figures
    assert sum(figures["exceptions_by_type"].values()) == figures["failing_calls"]
    assert figures["rss_growth_mb"] <= 4, figures
    assert figures["threads_max"] <= figures["threads_after_warmup"] + 2, figures


@pytest.mark.timeout(300)
def test_fork_under_load(tmp_path):
    """os.fork, multiprocessing fork and spawn while threads compute: right bits."""
    run = run_stress(tmp_path, "fork")
    figures = assert_passed(run, "fork")
    for method in ("os.fork", "fork", "spawn"):
        assert figures["children"][method] == {"ok": figures["children"][method]["ok"]}, figures
        assert figures["children"][method]["ok"] >= 1


@pytest.mark.timeout(300)
def test_allocation_limit(tmp_path):
    """Under RLIMIT_AS every call works or raises MemoryError; the process lives."""
    run = run_stress(tmp_path, "alloc_limit")
    figures = assert_passed(run, "alloc_limit")
    assert set(figures["outcomes"]) <= {"works", "MemoryError"}, figures
    assert figures["outcomes"]["MemoryError"] >= 1 and figures["outcomes"]["works"] >= 1


@pytest.mark.timeout(120)
def test_the_harness_reports_crashes_and_hangs(tmp_path):
    """A child that aborts, and one that never returns, are failures of their own."""
    run = run_stress(tmp_path, "selftest_crash", "selftest_hang")
    assert run["rc"] == 1
    crash, hang = run["results"]["selftest_crash"], run["results"]["selftest_hang"]
    assert crash["outcome"] == "crash" and "SIGABRT" in crash["failures"][0]
    assert hang["outcome"] == "hang" and hang["failures"][0].startswith("hang")
