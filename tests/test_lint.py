"""The code base passes its ruff configuration (pyproject.toml), notebook included."""

import subprocess
import sys

from conftest import ROOT


def test_ruff_passes():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
