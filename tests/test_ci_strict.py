"""tests/ci_strict.py: with CI=true a skipped test (a missing prerequisite) fails the run;
without it, it is a skip. Run on a throwaway test file by a real pytest subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

CASES = '''
import pytest


def test_runs():
    assert True

def test_needs_a_tool():
    pytest.skip("needs frobnicate (apt-get install frobnicate)")

@pytest.mark.skipif(True, reason="needs gizmo")
def test_marked():
    pass

@pytest.mark.xfail(reason="known")
def test_expected_failure():
    assert False
'''


def run(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_cases.py").write_text(CASES)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = str(HERE)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "ci_strict",
                           "-p", "no:cacheprovider", str(tmp_path / "test_cases.py")],
                          capture_output=True, text=True, env=env, cwd=tmp_path)


def test_skips_fail_under_ci(tmp_path: Path) -> None:
    p = run(tmp_path, "true")
    assert p.returncode == 1, p.stdout
    # a skip in the call phase is a failure, a skip mark (setup phase) an error: both fail
    assert "1 failed, 1 passed, 1 xfailed, 1 error" in p.stdout, p.stdout
    assert "needs frobnicate (apt-get install frobnicate)" in p.stdout
    assert "needs gizmo" in p.stdout


def test_skips_stay_skips_locally(tmp_path: Path) -> None:
    p = run(tmp_path, None)
    assert p.returncode == 0, p.stdout
    assert "1 passed, 2 skipped, 1 xfailed" in p.stdout, p.stdout
