"""Interrupted runs resume to the same result, and the same seed gives the same result."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT
from safetensors.torch import load_file

from peft_helpers.cli import main

pytestmark = pytest.mark.e2e

# Loaded into the killed CLI process only (via PYTHONPATH): slows each training step so that the test can
# kill the process mid-training, after a checkpoint, deterministically enough.
SLOW_STEPS = """
import time, transformers

_step = transformers.Trainer.training_step
def training_step(self, *args, **kwargs):
    time.sleep(0.4)
    return _step(self, *args, **kwargs)
transformers.Trainer.training_step = training_step
"""


def _cmd(tiny_gpt2, rt_dir, tmp_path, name, *extra):
    return [sys.executable, "-m", "peft_helpers", "run", "--model", str(tiny_gpt2), "--data-dir", str(rt_dir),
            "--train-size", "64", "--eval-size", "32", "--batch-size", "8", "--epochs", "2", "--save-steps", "4",
            "--learning-rate", "2e-3", "--output-dir", str(tmp_path / name), "--checkpoint-dir",
            str(tmp_path / f"runs-{name}"), "--results", str(tmp_path / f"{name}.json"), *extra]


def _result(tmp_path, name):
    results = json.loads((tmp_path / f"{name}.json").read_text())
    weights = load_file(str(tmp_path / name / "adapter_model.safetensors"))
    return results, weights


def _same_weights(a, b):
    assert a.keys() == b.keys() and len(a) > 0
    for key in a:
        assert (a[key] == b[key]).all(), key


@pytest.fixture(scope="module")
def reference(tiny_gpt2, rt_dir, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("reference")
    subprocess.run(_cmd(tiny_gpt2, rt_dir, tmp_path, "a"), cwd=ROOT, check=True, capture_output=True)
    return _result(tmp_path, "a")


def test_same_seed_same_results(reference, tiny_gpt2, rt_dir, tmp_path):
    subprocess.run(_cmd(tiny_gpt2, rt_dir, tmp_path, "b"), cwd=ROOT, check=True, capture_output=True)
    results, weights = _result(tmp_path, "b")
    for which in ("baseline", "finetuned"):
        assert results[which] == reference[0][which]
    _same_weights(weights, reference[1])
    assert results["seed"] == 42 and "torch" in results["versions"] and results["device"] == reference[0]["device"]


def test_killed_run_resumes_to_the_same_result(reference, tiny_gpt2, rt_dir, tmp_path, capsys):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SLOW_STEPS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")]))}
    runs = tmp_path / "runs-c"
    proc = subprocess.Popen(_cmd(tiny_gpt2, rt_dir, tmp_path, "c"), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    # 16 steps in all, 8 an epoch: checkpoint 8 is the first epoch's end, from which the stock Trainer's resume
    # replays the uninterrupted run exactly (its sampler draws each epoch's order when the epoch starts)
    while not (runs / "checkpoint-8" / "trainer_state.json").exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before it could be interrupted"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "c").exists()  # no adapter was saved

    # Without --resume the interrupted run is neither resumed nor thrown away silently.
    assert main(_cmd(tiny_gpt2, rt_dir, tmp_path, "c")[3:]) == 2
    assert "holds checkpoints of an interrupted run (checkpoint-8): pass --resume" in capsys.readouterr().err
    assert (runs / "checkpoint-8").is_dir()
    # --resume with other settings would continue a different run: refused, naming the settings.
    assert main(_cmd(tiny_gpt2, rt_dir, tmp_path, "c", "--resume", "--seed", "7")[3:]) == 2
    assert "--resume needs the interrupted run's settings, but they differ (seed: 42 then, 7 now)" in capsys.readouterr().err

    proc = subprocess.run(_cmd(tiny_gpt2, rt_dir, tmp_path, "c", "--resume"), cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Resuming from" in proc.stdout
    results, weights = _result(tmp_path, "c")
    assert results["finetuned"] == reference[0]["finetuned"]
    _same_weights(weights, reference[1])
    assert not runs.exists()


def test_resume_never_replaces_a_finished_adapter(reference, tiny_gpt2, rt_dir, tmp_path, capsys):
    subprocess.run(_cmd(tiny_gpt2, rt_dir, tmp_path, "d", "--seed", "1"), cwd=ROOT, check=True, capture_output=True)
    before = (tmp_path / "d" / "adapter_model.safetensors").read_bytes()
    assert main(_cmd(tiny_gpt2, rt_dir, tmp_path, "d", "--seed", "2", "--resume")[3:]) == 2
    assert "already holds an adapter: pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "d" / "adapter_model.safetensors").read_bytes() == before


def test_leftover_checkpoints_are_refused_before_any_slow_work(tiny_gpt2, rt_dir, tmp_path, capsys, monkeypatch):
    (tmp_path / "runs-e" / "checkpoint-3").mkdir(parents=True)
    (tmp_path / "runs-e" / "checkpoint-3" / "trainer_state.json").write_text("{}")
    import peft_helpers.workflow as workflow

    def no_slow_work(*args, **kwargs):
        raise AssertionError("data or model loaded before the checkpoint check")

    monkeypatch.setattr(workflow, "prepare", no_slow_work)
    assert main(_cmd(tiny_gpt2, rt_dir, tmp_path, "e")[3:]) == 2
    assert "holds checkpoints of an interrupted run" in capsys.readouterr().err
