"""The benchmark scripts that make BENCHMARKS.md's tables, run on a tiny model (end to end: subprocesses)."""

import importlib.util
import subprocess
import sys

import pytest
import torch
from conftest import ROOT


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.e2e
def test_bench_compares_the_pipeline_with_the_common_recipe(tiny_gpt2, rt_dir, tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# Benchmarks\n\nbefore\n\n<!-- bench:begin -->\nold\n<!-- bench:end -->\n\nafter\n")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--model", str(tiny_gpt2),
                           "--data-dir", str(rt_dir), "--train-size", "64", "--eval-size", "32", "--batch-size", "8",
                           "--max-length", "64", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert "before" in text and "after" in text and "old" not in text  # only its own section is replaced
    rows = [line for line in text.splitlines() if line.startswith(("| pipeline", "| common"))]
    assert len(rows) == 2
    pipeline, common = ([cell.strip() for cell in row.split("|")[1:-1]] for row in rows)
    # length-grouped batches pad far less than padding every text to max_length
    assert float(pipeline[4]) > float(common[4]) and float(common[4]) < 0.7


@pytest.mark.parametrize("bf16_units", [False, True])
def test_cpu_description_names_torchs_kernel_level_and_bf16_units(monkeypatch, bf16_units):
    """The demo's rate line and bench.py's hardware line tell two CPUs of one name apart."""
    from peft_helpers import hardware

    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: bf16_units)
    level = torch.backends.cpu.get_cpu_capability()
    assert hardware.cpu_instructions() == (f"{level} with bf16 units" if bf16_units else level)
    assert hardware.cpu_description().endswith(f"; {hardware.cpu_instructions()}")
    assert f"({hardware.cpu_description()})" in _load("bench").hardware_line()
    assert hardware.matmul_gflops(n=64, repeats=2) > 0
