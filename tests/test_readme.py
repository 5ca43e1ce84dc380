"""Every test docs/reliability.md names exists (so a row cannot claim a check that is gone), and the README stays
short enough to read."""

import re
import subprocess
import sys

import pytest
from conftest import ROOT


def _named_tests() -> list[str]:
    table = (ROOT / "docs" / "reliability.md").read_text().split("## Cases", 1)[1]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith(("| case", "| ---"))]
    assert len(rows) >= 20
    named = [re.findall(r"`(tests/[^`]+::[^`]+)`", row) for row in rows]
    assert all(named), [row for row, tests in zip(rows, named) if not tests]  # every row names a test
    return [test for tests in named for test in tests]


@pytest.mark.e2e
def test_every_test_named_in_the_failure_table_exists():
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "", "-p", "no:cacheprovider"],
                          cwd=ROOT, capture_output=True, text=True)
    collected = {line.strip() for line in proc.stdout.splitlines()}
    missing = [test for test in _named_tests() if test not in collected and not any(
        c.startswith(test + "[") for c in collected)]
    assert not missing, missing


def test_readme_is_short_with_short_lines():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200 and all(len(line) <= 120 for line in lines)
