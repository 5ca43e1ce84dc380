import subprocess
import sys

import numpy as np
import pytest
import torch

from peft_helpers.data import load_rotten_tomatoes, subsample, tokenize
from peft_helpers.errors import UserError
from peft_helpers.evaluation import evaluate, predict_logits
from peft_helpers.inference import predict
from peft_helpers.modeling import load_model
from peft_helpers.reporting import (
    comparison_table,
    format_comparison,
    learning_curve,
    plot_learning_curves,
    prediction_table,
    training_curves,
)


@pytest.fixture(scope="module")
def setup(tiny_gpt2, rt_dir):
    model, tokenizer = load_model(str(tiny_gpt2), ["neg", "pos"], seed=0, device="cpu")
    data = tokenize(subsample(load_rotten_tomatoes(rt_dir), 40, 30, seed=0), tokenizer, 64)
    return model.eval(), tokenizer, data


def test_length_sorted_prediction_returns_rows_in_original_order(setup):
    model, tokenizer, data = setup
    test = data["test"]
    assert sorted(test["length"]) != test["length"]  # the split is not already sorted
    batched = predict_logits(model, tokenizer, test, batch_size=7)
    with torch.no_grad():
        one_by_one = np.concatenate(
            [model(input_ids=torch.tensor([row["input_ids"]])).logits.numpy() for row in test]
        )
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5, rtol=0)


def test_evaluate_reports_metrics_of_its_predictions(setup):
    model, tokenizer, data = setup
    result = evaluate(model, tokenizer, data["test"], batch_size=8)
    assert result.labels.tolist() == data["test"]["label"]
    assert result.metrics["accuracy"] == pytest.approx(np.mean(result.predictions == result.labels))
    assert np.array(result.metrics["confusion_matrix"]).sum() == 30
    assert result.samples_per_second > 0


def test_predict_gives_label_names_and_probabilities(setup):
    model, tokenizer, _ = setup
    out = predict(model, tokenizer, ["what a great film", "boring", "x " * 600])  # the last one is truncated
    assert out.probabilities.shape == (3, 2)
    np.testing.assert_allclose(out.probabilities.sum(1), 1, atol=1e-6)
    assert set(out.labels) <= {"neg", "pos"} and out.label_names == ["neg", "pos"]
    assert out.labels == [out.label_names[i] for i in out.probabilities.argmax(1)]
    assert set(out.records()[0]) == {"text", "label", "p(neg)", "p(pos)"}
    with pytest.raises(UserError, match="text 1 is empty"):
        predict(model, tokenizer, ["fine", "  "])
    table = prediction_table(out, out)
    assert list(table.columns) == ["text", "before", "after"] and len(table) == 3


def test_comparison_table_and_curves():
    base = {"accuracy": 0.5, "precision": 0.4, "recall": 0.5, "f1": 0.45}
    tuned = {"accuracy": 0.8, "precision": 0.81, "recall": 0.8, "f1": 0.79}
    table = comparison_table(base, tuned)
    assert table.loc["accuracy", "change (points)"] == pytest.approx(30)
    assert "+34.0p" in format_comparison(base, tuned)
    history = [{"loss": 0.7, "step": 1}, {"loss": 0.6, "step": 2}, {"eval_loss": 0.5, "eval_accuracy": 0.7, "epoch": 1.0}]
    train, evals = training_curves(history)
    assert train["loss"].tolist() == [0.7, 0.6] and evals["eval_accuracy"].tolist() == [0.7]


def test_learning_curve_keeps_loss_and_validation_points_and_plots_them():
    history = [
        {"loss": 0.7, "grad_norm": 3.0, "learning_rate": 1e-4, "epoch": 0.5, "step": 5},
        {"eval_loss": 0.5, "eval_accuracy": 0.7, "eval_f1": 0.69, "eval_runtime": 1.2, "epoch": 1.0, "step": 10},
        {"train_runtime": 9.0, "train_loss": 0.6, "epoch": 1.0, "step": 10},  # the end-of-training summary
    ]
    curve = learning_curve(history)
    assert curve == [
        {"step": 5, "epoch": 0.5, "loss": 0.7, "learning_rate": 1e-4},
        {"step": 10, "epoch": 1.0, "eval_loss": 0.5, "eval_accuracy": 0.7, "eval_f1": 0.69},
    ]
    other = [{"loss": 0.9, "epoch": 0.5, "step": 3}, {"eval_loss": 0.6, "eval_accuracy": 0.6, "epoch": 1.0, "step": 6}]
    fig = plot_learning_curves({"a": curve, "b": other})
    ax_loss, ax_acc = fig.axes
    assert [line.get_label() for line in ax_acc.get_lines()] == ["a", "b"]
    assert ax_acc.get_lines()[0].get_ydata().tolist() == [0.7]
    assert ax_loss.get_lines()[1].get_xdata().tolist() == [0.5]


@pytest.mark.e2e
def test_evaluation_after_mixed_precision_training_runs_in_fp32(tiny_gpt2, rt_dir):
    """accelerate leaves an autocast wrapper on model.forward after bf16/fp16 training (a GPU run); evaluation
    must not score through it, or the in-memory model and its reloaded copy differ (0.03 on an H200). Run in a
    fresh process: accelerate's mixed-precision state is global and the other tests' Trainers already set it."""
    import subprocess
    import sys

    script = f"""
import numpy as np
from accelerate import Accelerator
from peft_helpers.data import load_rotten_tomatoes, subsample, tokenize
from peft_helpers.evaluation import predict_logits
from peft_helpers.modeling import load_model

model, tokenizer = load_model({str(tiny_gpt2)!r}, ["neg", "pos"], device="cpu")
test = tokenize(subsample(load_rotten_tomatoes({str(rt_dir)!r}), 16, 16, 0), tokenizer, 64)["test"]
expected = predict_logits(model, tokenizer, test, batch_size=8)
wrapped = Accelerator(cpu=True, mixed_precision="bf16").prepare_model(model)  # what the Trainer does on a GPU
assert "_original_forward" in wrapped.__dict__
np.testing.assert_array_equal(predict_logits(wrapped, tokenizer, test, batch_size=8), expected)
print("same logits")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "same logits" in done.stdout, done.stderr[-2000:]


# The command line with the process's address space capped at 1 GiB above what the imports took: a batch of 4,096
# reviews needs more than that, so the allocation really fails (on a CPU as on a GPU, memory runs out in the step).
LIMITED_MEMORY_RUN = """
import resource, sys
import datasets, peft, torch, transformers
from peft_helpers.cli import main
vm_kib = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmSize:"))
limit = (vm_kib + 2**20) * 1024
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
sys.exit(main(sys.argv[1:]))
"""


def run_with_memory_cap(run_args: list[str], cwd) -> tuple[subprocess.CompletedProcess, list[str]]:
    """`python -m peft_helpers run ...` under LIMITED_MEMORY_RUN; returns the process and its "error: " lines (the
    error follows the progress bar's carriage return: on a terminal it overwrites the bar, in a pipe it shares the
    bar's line)."""
    proc = subprocess.run([sys.executable, "-c", LIMITED_MEMORY_RUN, "run", *run_args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)
    errors = [line.split("\r")[-1].split("error: ", 1)[-1] for line in proc.stderr.splitlines() if "error: " in line]
    return proc, errors


@pytest.mark.e2e
@pytest.mark.skipif(not sys.platform.startswith("linux") or torch.cuda.is_available(),
                    reason="caps RLIMIT_AS (Linux), which CUDA's address-space reservation would exceed; on a GPU "
                    "benchmarks/gpu_smollm2.py --oom-batch runs out of GPU memory for real")
def test_a_batch_that_does_not_fit_in_memory_says_which_batch_size_to_try(tiny_gpt2, rt_dir, tmp_path):
    proc, errors = run_with_memory_cap(
        ["--model", str(tiny_gpt2), "--data-dir", str(rt_dir), "--train-size", "4096", "--eval-size", "64",
         "--batch-size", "4096", "--epochs", "1", "--output-dir", str(tmp_path / "adapter")], tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(errors) == 1 and "ran out of memory" in errors[0] and "try --batch-size 2048" in errors[0], errors
    assert not (tmp_path / "adapter").exists()


@pytest.mark.e2e
@pytest.mark.skipif(not sys.platform.startswith("linux") or torch.cuda.is_available(),
                    reason="caps RLIMIT_AS (Linux), which CUDA's address-space reservation would exceed")
def test_a_validation_batch_that_does_not_fit_in_memory_names_eval_batch_size(tiny_gpt2, tmp_path):
    """Training fits (batch 4 of short texts), the Trainer's validation does not (one batch of 2,048 texts of 256
    tokens): the one line names --eval-batch-size, not the training batch."""
    import csv
    import random

    rng = random.Random(0)
    words = "good bad film great dull plot actor scene story boring moving funny".split()
    data = tmp_path / "data"
    data.mkdir()
    for split, rows, length in (("train", 32, 8), ("validation", 2048, 300), ("test", 16, 8)):
        with open(data / f"{split}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows((" ".join(rng.choice(words) for _ in range(length)), i % 2) for i in range(rows))
    proc, errors = run_with_memory_cap(
        ["--model", str(tiny_gpt2), "--data-dir", str(data), "--batch-size", "4", "--eval-batch-size", "4096",
         "--max-length", "256", "--epochs", "1", "--output-dir", str(tmp_path / "adapter")], tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(errors) == 1 and errors[0].startswith("validation with batch size 4096 ran out of memory"), errors
    assert "try --eval-batch-size 2048" in errors[0]
    assert not (tmp_path / "adapter").exists()


@pytest.mark.parametrize("what, flag", [("training", "--batch-size"), ("evaluation", "--eval-batch-size")],
                         ids=["training", "evaluation"])
def test_running_out_of_memory_names_the_option_that_sets_that_batch(what, flag):
    """Training batches are --batch-size, a run's evaluation batches --eval-batch-size (4x larger by default): the
    advice names the one that ran out (the end-to-end case is the test above)."""
    from peft_helpers.errors import batch_size_advice

    with pytest.raises(UserError, match=f"^{what} with batch size 64 ran out of memory \\(CUDA out of memory. Tried "
                                        f"to allocate 2.00 GiB\\): try {flag} 32 \\(halve it until it fits\\)"):
        with batch_size_advice(64, what, flag):
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")


@pytest.mark.e2e
@pytest.mark.skipif(torch.cuda.is_available(), reason="breaks the CPU's C++ compiler; CUDA code needs none")
def test_compile_that_cannot_work_here_falls_back_with_one_warning(tiny_gpt2, rt_dir, tmp_path):
    """--compile where torch.compile fails (here: inductor finds no C++ compiler, as on a Windows machine without
    one): one warning line, then the same run without it."""
    import json
    import os

    env = {**os.environ, "CXX": "/nonexistent/g++", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor-cache")}  # nothing cached
    proc = subprocess.run(
        [sys.executable, "-m", "peft_helpers", "run", "--model", str(tiny_gpt2), "--data-dir", str(rt_dir),
         "--train-size", "32", "--eval-size", "16", "--batch-size", "8", "--epochs", "1", "--compile",
         "--output-dir", str(tmp_path / "adapter")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    warnings = [line for line in proc.stderr.splitlines() if "torch.compile" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: torch.compile does not work here"), warnings
    assert "Traceback" not in proc.stderr
    results = json.loads((tmp_path / "adapter" / "results.json").read_text())
    assert results["config"]["compile"] is False and results["reload_max_logit_diff"] <= 1e-4


@pytest.mark.e2e
@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU mixed precision; on a GPU bf16 is the CUDA path")
def test_cpu_bf16_trains_in_mixed_precision_where_the_cpu_has_bf16_units(tiny_gpt2, rt_dir, tmp_path):
    """--precision bf16 on a CPU with AMX / AVX512-BF16: training under bf16 autocast, evaluation and the reload
    check in fp32. A fresh process: accelerate's mixed-precision state is global."""
    import json

    from peft_helpers.hardware import cpu_has_bf16

    if not cpu_has_bf16():
        pytest.skip("this CPU has no bf16 matrix units (the refusal is tested below)")
    results = tmp_path / "results.json"
    done = subprocess.run([sys.executable, "-m", "peft_helpers", "run", "--model", str(tiny_gpt2), "--data-dir",
                           str(rt_dir), "--train-size", "32", "--eval-size", "16", "--batch-size", "8", "--precision",
                           "bf16", "--output-dir", str(tmp_path / "adapter"), "--checkpoint-dir", str(tmp_path / "runs"),
                           "--results", str(results)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads(results.read_text())
    assert record["device"].endswith("bf16 mixed precision)") and record["training_arguments"]["bf16"] is True
    assert record["reload_max_logit_diff"] <= 1e-4  # evaluated in fp32, in memory and reloaded alike


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal of a machine without CUDA")
@pytest.mark.parametrize("setting, value, expected", [
    pytest.param("precision", "bf16", "needs a CUDA GPU or a CPU with bf16 matrix units .*: use auto or fp32 on this",
                 id="bf16-training"),
    pytest.param("precision", "fp16", "needs a CUDA GPU: use auto or fp32 on this machine", id="fp16-training"),
])
def test_half_precision_is_refused_where_this_machine_has_no_units_for_it(setting, value, expected, monkeypatch):
    from peft_helpers import hardware
    from peft_helpers.config import RunConfig

    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: False)
    with pytest.raises(UserError, match=f"^{setting}={value} {expected}"):
        RunConfig(model="x", **{setting: value})


def _trainer_for(model, tokenizer, data, tmp_path, learning_rate):
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from peft_helpers.config import RunConfig
    from peft_helpers.training import training_callbacks

    cfg = RunConfig(model="gpt2", output_dir=str(tmp_path / "a"))
    args = TrainingArguments(output_dir=str(tmp_path / "c"), learning_rate=learning_rate, use_cpu=True,
                             report_to="none", max_steps=1)
    return Trainer(model=model, args=args, train_dataset=data["train"], processing_class=tokenizer,
                   data_collator=DataCollatorWithPadding(tokenizer), callbacks=training_callbacks(cfg))


def _lora(tiny_gpt2, **config):
    from peft import LoraConfig, TaskType, get_peft_model

    model, tokenizer = load_model(str(tiny_gpt2), ["neg", "pos"], seed=0, device="cpu")
    return get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, target_modules=["c_attn"], fan_in_fan_out=True,
                                            modules_to_save=["score"], **config)), tokenizer


def test_a_peft_model_with_nothing_but_the_head_trainable_is_refused(tiny_gpt2, setup, tmp_path):
    """LoraConfig(inference_mode=True), as found in public submissions: the stock Trainer would train the head alone
    (or nothing); the guard in training_callbacks refuses when the Trainer is made, saying what to change."""
    _, _, data = setup
    model, tokenizer = _lora(tiny_gpt2, inference_mode=True)
    for name, param in model.named_parameters():  # the head alone trainable, as some peft versions leave it
        param.requires_grad_("modules_to_save" in name)
    with pytest.raises(UserError, match=r"no trainable adapter weights.*inference_mode=False"):
        _trainer_for(model, tokenizer, data, tmp_path, 5e-4)


@pytest.mark.parametrize("learning_rate, warned", [(2e-5, True), (5e-4, False)])
def test_a_full_fine_tuning_learning_rate_for_lora_warns_once(tiny_gpt2, setup, tmp_path, capsys, learning_rate,
                                                               warned):
    _, _, data = setup
    model, tokenizer = _lora(tiny_gpt2)
    _trainer_for(model, tokenizer, data, tmp_path, learning_rate)
    lines = [line for line in capsys.readouterr().err.splitlines() if "full fine-tuning rate" in line]
    assert len(lines) == (1 if warned else 0)
    if warned:
        assert lines[0].startswith("warning: learning_rate=2e-05") and "at least 5e-05" in lines[0]
