"""Several processes through torchrun (gloo on CPU): the launch trains what one process with the same global batch
trains, prints once, writes once, and refuses processes that loaded different data before training."""

import json
import shutil
import subprocess
import sys

import pytest
from safetensors.torch import load_file

pytestmark = pytest.mark.e2e

SETTINGS = ["--train-size", "64", "--eval-size", "32", "--epochs", "1", "--dropout", "0", "--seed", "42"]


@pytest.fixture(scope="module")
def gpt2_without_dropout(tiny_gpt2, tmp_path_factory):
    """The tiny GPT-2 with its dropout off: random masks are drawn differently by one and by two processes."""
    folder = tmp_path_factory.mktemp("gpt2-no-dropout")
    shutil.copytree(tiny_gpt2, folder, dirs_exist_ok=True)
    config = json.loads((folder / "config.json").read_text())
    config.update(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, summary_first_dropout=0.0)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


LAUNCHERS = {
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"],
    # --multi_gpu is accelerate's name for several local processes; without a GPU they use gloo on the CPU
    "accelerate": [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no", "--num_processes"],
}


def launch(processes: int, program: list[str], cwd, launcher: str = "torchrun") -> subprocess.CompletedProcess:
    return subprocess.run(LAUNCHERS[launcher] + [str(processes), *program], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_two_processes_train_what_one_process_trains(launcher, gpt2_without_dropout, rt_dir, tmp_path):
    common = ["--model", str(gpt2_without_dropout), "--data-dir", str(rt_dir), *SETTINGS]
    one = subprocess.run([sys.executable, "-m", "peft_helpers", "run", *common, "--batch-size", "8",
                          "--output-dir", str(tmp_path / "one")], cwd=tmp_path, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-3000:]
    two = launch(2, ["-m", "peft_helpers", "run", *common, "--batch-size", "4", "--output-dir", str(tmp_path / "two")],
                 cwd=tmp_path, launcher=launcher)
    assert two.returncode == 0, two.stderr[-3000:]

    # printed once, written once
    assert two.stdout.count("Pretrained accuracy on test") == 1 and two.stdout.count("Adapter saved to") == 1
    assert "2 processes, the same data on each; global batch 8 (4 per process)" in two.stdout
    results = [json.loads((tmp_path / d / "results.json").read_text()) for d in ("one", "two")]
    assert results[0]["processes"] == 1 and results[1]["processes"] == 2
    # the same training: every adapter weight within 1e-6 (only the order of the gradient sums differs), the same
    # test predictions: the Trainer's sampler sorts this small split into one group, so N processes with batch b
    # (accelerate deals out consecutive batches) see the examples one process sees with batch N x b
    weights = [load_file(str(tmp_path / d / "adapter_model.safetensors")) for d in ("one", "two")]
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        assert (weights[0][key] - weights[1][key]).abs().max() <= 1e-6, key
    for which in ("baseline", "finetuned"):
        assert results[0][which]["confusion_matrix"] == results[1][which]["confusion_matrix"]
    losses = [[round(p["loss"], 4) for p in r["learning_curve"] if "loss" in p] for r in results]
    assert losses[0] == losses[1]  # the logged loss is the mean over the global batch, not N times it


# Each process parses its own options: this program gives the second one another --train-size, as a node with
# other settings or another copy of the data would.
DISAGREEING = """
import os, sys
from peft_helpers.cli import main

argv = sys.argv[1:]
if os.environ["RANK"] == "1":
    argv[argv.index("--train-size") + 1] = "48"
sys.exit(main(argv))
"""


def test_processes_that_loaded_different_data_are_refused_before_training(tiny_gpt2, rt_dir, tmp_path):
    program = tmp_path / "disagree.py"
    program.write_text(DISAGREEING)
    proc = launch(2, [str(program), "run", "--model", str(tiny_gpt2), "--data-dir", str(rt_dir), *SETTINGS,
                      "--batch-size", "4", "--output-dir", str(tmp_path / "adapter")], cwd=tmp_path)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "loaded different data or settings" in errors[0], proc.stderr[-3000:]
    assert "train 64" in errors[0] and "train 48" in errors[0]
    # refused once the data is loaded: before the evaluations, the adapter and any training step
    assert "Device:" in proc.stdout and "Pretrained accuracy" not in proc.stdout and "'loss'" not in proc.stderr
    assert not (tmp_path / "adapter").exists()


def test_a_stopped_launch_resumes_to_the_uninterrupted_result(gpt2_without_dropout, rt_dir, tmp_path):
    """Both processes stopped after checkpoint 8 of 16 (the first epoch's end); `--resume` under the same launch
    continues from the checkpoint (each process's random state included) and ends exactly where an uninterrupted
    launch ends. (Against one process the weights drift apart by ~1e-3 over these 16 steps at this learning rate: Adam
    turns the last-bit differences of gradients summed in another order into whole steps for near-zero entries.)"""
    import os
    import signal
    import time

    from test_reliability import SLOW_STEPS

    def two(name: str) -> list[str]:
        return ["-m", "peft_helpers", "run", "--model", str(gpt2_without_dropout), "--data-dir", str(rt_dir),
                *SETTINGS, "--epochs", "2", "--save-steps", "4", "--learning-rate", "2e-3", "--batch-size", "4",
                "--output-dir", str(tmp_path / name), "--checkpoint-dir", str(tmp_path / f"runs-{name}")]

    uninterrupted = launch(2, two("a"), cwd=tmp_path)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]

    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SLOW_STEPS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(LAUNCHERS["torchrun"] + ["2", *two("b")], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while not (tmp_path / "runs-b" / "checkpoint-8" / "trainer_state.json").exists():
        assert proc.poll() is None and time.time() < deadline, "the launch ended before it could be interrupted"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # as a scheduler stops a job: the launcher stops both processes
    proc.wait(timeout=60)
    assert not (tmp_path / "b").exists()

    resumed = launch(2, [*two("b"), "--resume"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.count("Resuming from") == 1 and "checkpoint-8" in resumed.stdout
    weights = [load_file(str(tmp_path / d / "adapter_model.safetensors")) for d in ("a", "b")]
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        assert (weights[0][key] == weights[1][key]).all(), key
