"""The CI rule in tests/conftest.py: with VIDBATCH_FAIL_ON_SKIP=1 (set by .ci/run) a skipped test
fails, unless it is marked `may_skip(reason)`; without the variable a skip stays a skip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import FAIL_ON_SKIP

ROOT = Path(__file__).resolve().parents[2]
CASES = """
import pytest

def test_passes():
    pass

def test_skips_in_the_body():
    pytest.skip("no browser here")

@pytest.mark.skipif(True, reason="no codec here")
def test_skipped_by_a_mark():
    pass

@pytest.mark.may_skip(reason="needs macOS")
def test_allowed_to_skip():
    pytest.skip("not macOS")

@pytest.mark.may_skip
def test_allowed_without_a_reason_is_not_allowed():
    pytest.skip("no reason given")

@pytest.mark.xfail(reason="known bug", strict=True)
def test_expected_failure():
    assert False
"""
MODULE_SKIP = 'import pytest\n\npytest.importorskip("no_such_module_anywhere")\n'


def run(tmp_path: Path, strict: bool, **files: str) -> subprocess.CompletedProcess:
    """pytest with the repo's conftest as a plugin, over test files named by `files`."""
    for name, source in files.items():
        (tmp_path / f"{name}.py").write_text(source)
    env = {k: v for k, v in os.environ.items() if k != FAIL_ON_SKIP}
    if strict:
        env[FAIL_ON_SKIP] = "1"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider"]
        + ["-rA", "-q", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def outcomes(summary: str) -> dict[str, str]:
    """Test name -> PASSED/FAILED/ERROR/XFAIL from pytest's -rA short summary."""
    found = {}
    for line in summary.splitlines():
        word, _, rest = line.partition(" ")
        if word in ("PASSED", "FAILED", "ERROR", "XFAIL") and "::" in rest:
            found[rest.split("::", 1)[1].split(" ", 1)[0]] = word
    return found


def test_skips_fail_in_ci_unless_marked_with_a_reason(tmp_path):
    done = run(tmp_path, strict=True, test_cases=CASES)
    out = done.stdout
    assert done.returncode == 1, out
    assert outcomes(out) == {
        "test_passes": "PASSED",
        "test_skips_in_the_body": "FAILED",
        "test_skipped_by_a_mark": "ERROR",  # skipped at setup
        "test_allowed_without_a_reason_is_not_allowed": "FAILED",
        "test_expected_failure": "XFAIL",
    }
    assert "1 skipped" in out and "not macOS" in out  # the one marked with a reason
    assert "no browser here" in out and f"{FAIL_ON_SKIP}=1" in out


def test_skips_stay_skips_outside_ci(tmp_path):
    done = run(tmp_path, strict=False, test_cases=CASES)
    assert done.returncode == 0, done.stdout
    assert "1 passed, 4 skipped, 1 xfailed" in done.stdout


def test_a_module_skipped_whole_fails_in_ci(tmp_path):
    files = {"test_skipped_module": MODULE_SKIP, "test_fine": "def test_fine():\n    pass\n"}
    relaxed = run(tmp_path, strict=False, **files)
    assert relaxed.returncode == 0 and "1 passed, 1 skipped" in relaxed.stdout, relaxed.stdout
    strict = run(tmp_path, strict=True, **files)
    assert strict.returncode != 0, strict.stdout
    assert "no_such_module_anywhere" in strict.stdout and f"{FAIL_ON_SKIP}=1" in strict.stdout
