"""`compare`: methods and baselines on one split into one table and plot, continued where it stopped."""

import json

import pandas as pd
import pytest

from peft_helpers.cli import main
from peft_helpers.compare import markdown
from peft_helpers.config import RunConfig

pytestmark = pytest.mark.e2e

NAMES = "lora,ia3,loha"
BASELINES = "random_head,linear_probe,full,zero_shot"


def _compare(tiny_gpt2, rt_dir, out, capsys, *extra):
    code = main(["compare", "--model", str(tiny_gpt2), "--data_dir", str(rt_dir), "--train_size", "32",
                 "--eval_size", "16", "--batch_size", "8", "--epochs", "1", "--max_length", "64",
                 "--methods", NAMES, "--baselines", BASELINES, "--compare_dir", str(out), *extra])
    return code, capsys.readouterr().out


@pytest.fixture(scope="module")
def compared(tiny_gpt2, rt_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    assert main(["compare", "--model", str(tiny_gpt2), "--data_dir", str(rt_dir), "--train_size", "32",
                 "--eval_size", "16", "--batch_size", "8", "--epochs", "1", "--max_length", "64",
                 "--methods", NAMES, "--baselines", BASELINES, "--compare_dir", str(out)]) == 0
    return out


@pytest.mark.core
def test_table_has_every_entry_with_its_numbers(compared):
    table = pd.read_csv(compared / "comparison.csv")
    assert list(table["method"]) == ["lora", "ia3", "loha", "random_head", "linear_probe", "full", "zero_shot"]
    rows = table.set_index("method")
    assert "Conv1D" in rows.loc["loha", "note"] and pd.isna(rows.loc["loha", "accuracy"])  # does not fit GPT-2
    done = rows.drop(index="loha")
    assert done["accuracy"].between(0, 1).all() and done["macro_f1"].between(0, 1).all()
    assert rows.loc["random_head", "trainable_params"] == rows.loc["zero_shot", "trainable_params"] == 0
    assert rows.loc["linear_probe", "trainable_params"] == 32 * 2  # the tiny GPT-2's score head: n_embd x labels
    assert rows.loc["full", "trainable_%"] == pytest.approx(100)
    assert 0 < rows.loc["ia3", "trainable_params"] < rows.loc["lora", "trainable_params"]
    assert (done.loc[["lora", "ia3", "linear_probe", "full"], "train_s"] > 0).all()
    assert (done["peak_memory_MiB"] > 0).all()
    assert (compared / "comparison.png").stat().st_size > 10_000
    assert (compared / "comparison.md").read_text().startswith("| method | seed | trainable_params")
    for name in ("lora", "ia3", "random_head", "linear_probe", "full", "zero_shot"):
        assert json.loads((compared / f"{name}-seed42" / "results.json").read_text())["method"] == name


def test_finished_entries_are_not_run_again(compared, tiny_gpt2, rt_dir, capsys):
    stamp = (compared / "lora-seed42" / "results.json").stat().st_mtime_ns
    (compared / "ia3-seed42" / "results.json").unlink()  # as if the comparison had stopped during ia3
    code, out = _compare(tiny_gpt2, rt_dir, compared, capsys)
    assert code == 0 and out.count("done before") == 5 and "[2/7] ia3 (seed 42): running" in out
    assert (compared / "lora-seed42" / "results.json").stat().st_mtime_ns == stamp
    assert (compared / "ia3-seed42" / "results.json").is_file()


def test_changed_settings_rerun_the_entry(compared, tiny_gpt2, rt_dir, capsys):
    code, out = _compare(tiny_gpt2, rt_dir, compared, capsys, "--learning_rate", "1e-3", "--baselines", "none",
                         "--methods", "lora")
    assert code == 0 and "[1/1] lora (seed 42): running" in out


def test_unknown_entry_is_refused_in_one_line(tiny_gpt2, rt_dir, tmp_path, capsys):
    code = main(["compare", "--model", str(tiny_gpt2), "--data_dir", str(rt_dir), "--methods", "lora,bitfit",
                 "--compare_dir", str(tmp_path / "c")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "bitfit is not a method or baseline" in err


def test_markdown_formats_numbers_and_gaps():
    table = pd.DataFrame([{"method": "lora", "trainable_params": 147_456, "accuracy": 0.83114, "note": ""},
                          {"method": "loha", "trainable_params": float("nan"), "accuracy": float("nan"),
                           "note": "does not fit"}])
    text = markdown(table)
    assert "| lora | 147,456 | 0.8311 |  |" in text and "| loha |  |  | does not fit |" in text


def test_options_a_method_does_not_take_are_left_out_for_it():
    from peft_helpers.compare import plan

    entries = plan(RunConfig(r=4, model="gpt2"), ["lora", "ia3", "prompt_tuning"], [1, 2], "cmp")
    assert [(e.name, e.seed, e.cfg.r) for e in entries] == [("lora", 1, 4), ("ia3", 1, None), ("prompt_tuning", 1, None),
                                                            ("lora", 2, 4), ("ia3", 2, None), ("prompt_tuning", 2, None)]
    assert entries[0].cfg.output_dir.endswith("lora-seed1")


def test_collect_only_runs_nothing(tiny_gpt2, rt_dir, tmp_path, capsys):
    code, out = _compare(tiny_gpt2, rt_dir, tmp_path / "c", capsys, "--collect_only")
    table = pd.read_csv(tmp_path / "c" / "comparison.csv")
    assert code == 0 and "running" not in out and set(table["note"]) == {"not run"} and len(table) == 7


def test_stopping_the_comparison_stops_the_running_entry(tiny_gpt2, rt_dir, tmp_path):
    """`timeout` or a scheduler sends SIGTERM to the comparison; the entry's own process must not run on unseen."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    out = tmp_path / "c"
    proc = subprocess.Popen([sys.executable, "-m", "peft_helpers", "compare", "--model", str(tiny_gpt2), "--data_dir",
                             str(rt_dir), "--train_size", "400", "--eval_size", "16", "--batch_size", "8",
                             "--methods", "lora", "--baselines", "none", "--compare_dir", str(out)],
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert "running" in proc.stdout.readline() + proc.stdout.readline()
    spec = str(out / "checkpoints" / "lora-seed42.json")

    def entry_processes():
        found = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                if spec in cmdline.read_bytes().decode(errors="replace"):
                    found.append(cmdline.parent.name)
            except OSError:
                pass
        return found

    deadline = time.time() + 30
    while not entry_processes() and time.time() < deadline:
        time.sleep(0.1)
    assert entry_processes(), "the entry's process never started"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) != 0
    deadline = time.time() + 30
    while entry_processes() and time.time() < deadline:
        time.sleep(0.2)
    assert not entry_processes()
