import json
import re
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

from peft_helpers.cli import main

KEYS = {"model", "dataset", "train_size", "eval_size", "baseline", "finetuned", "trainable_params", "total_params",
        "train_seconds", "adapter_dir"}


@pytest.mark.e2e
@pytest.mark.core
def test_cli_run_end_to_end_writes_results_and_a_stock_loadable_adapter(tiny_gpt2, rt_dir, tmp_path):
    out, results = tmp_path / "saved_adapters" / "tiny", tmp_path / "results.json"
    cmd = [sys.executable, "-m", "peft_helpers", "run", "--model", str(tiny_gpt2), "--data-dir", str(rt_dir),
           "--train-size", "64", "--eval-size", "32", "--batch-size", "8", "--output-dir", str(out),
           "--checkpoint-dir", str(tmp_path / "runs"), "--results", str(results)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "pretrained" in proc.stdout and "fine-tuned" in proc.stdout
    data = json.loads(results.read_text())
    assert KEYS <= set(data)
    assert data == json.loads((out / "results.json").read_text())
    assert (data["train_size"], data["eval_size"], data["adapter_dir"]) == (64, 32, str(out))
    for which in ("baseline", "finetuned"):
        assert set(data[which]) >= {"accuracy", "f1", "precision", "recall"}
        assert all(0 <= data[which][k] <= 1 for k in ("accuracy", "f1", "precision", "recall"))
        assert sum(map(sum, data[which]["confusion_matrix"])) == 32
    assert 0 < data["trainable_params"] < data["total_params"] and data["train_seconds"] > 0
    assert data["reload_max_logit_diff"] <= 1e-5
    assert data["training_arguments"]["per_device_eval_batch_size"] == 32  # 4 x --batch-size, the default
    curve = data["learning_curve"]  # 64 examples / batch 8 = 8 steps, 1 epoch (GPT-2 default)
    assert [r["step"] for r in curve if "loss" in r] == list(range(1, 9))  # 5% of 8 steps rounds up to 1
    assert [(r["step"], r["epoch"]) for r in curve if "eval_accuracy" in r] == [(2, 0.25), (4, 0.5), (6, 0.75), (8, 1.0)]
    assert not (tmp_path / "runs").exists()  # checkpoints are removed once the adapter is safe

    from peft import AutoPeftModelForSequenceClassification
    from transformers import AutoTokenizer

    from peft_helpers.persistence import load_adapter

    stock = AutoPeftModelForSequenceClassification.from_pretrained(str(out)).eval()
    ours, tokenizer, _ = load_adapter(out, device="cpu")
    enc = AutoTokenizer.from_pretrained(str(out))("a gripping, beautifully acted film", return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(stock(**enc).logits, ours(**enc).logits, atol=1e-5, rtol=0)


def _fails(capsys, *args) -> str:
    assert main(list(args)) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    last = err.splitlines()[-1]  # earlier lines are progress bars
    assert last.startswith("error: ") and err.count("error: ") == 1
    return last


@pytest.fixture
def csv(tmp_path):
    def write(rows, header="text,label"):
        path = tmp_path / "data.csv"
        path.write_text("\n".join([header, *rows]))
        return str(path)

    return write


GOOD = ["great fun,pos", "dull and slow,neg"] * 20


def _split_folder(tmp_path):
    folder = tmp_path / "splits"
    folder.mkdir()
    (folder / "train.csv").write_text("text,label\n" + "\n".join(f"t{i},{'pos' if i % 2 else 'neg'}" for i in range(10)))
    (folder / "test.csv").write_text("text,label\nfine,pos\nhmm,meh\n")
    return str(folder)


BAD_INPUTS = {
    "missing-label-column": (lambda t, csv: ["--data-dir", csv(GOOD, "text,stars")], "no column 'label'"),
    "empty-text": (lambda t, csv: ["--data-dir", csv(GOOD + ["   ,pos"])], "empty or missing text"),
    "unknown-test-label": (lambda t, csv: ["--data-dir", _split_folder(t)], r"labels \['meh'\] that are not in"),
    "mixed-labels": (lambda t, csv: ["--data-dir", csv(GOOD + ["odd one,1"])], "labels mix kinds"),
    "train-size-too-large": (lambda t, csv: ["--data-dir", csv(GOOD), "--train-size", "1000"], "split has 32"),
    "train-size-zero": (lambda t, csv: ["--train-size", "0"], "train_size=0"),
    "no-data-dir": (lambda t, csv: ["--data-dir", str(t / "nowhere")], "does not exist"),
    "not-a-model-folder": (lambda t, csv: ["--model", str(t), "--data-dir", csv(GOOD)], "not a model folder"),
    "no-network-for-hub-data": (lambda t, csv: [], "Hub is unreachable.*--data-dir"),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_cli_bad_input_exits_2_with_one_line(case, capsys, csv, tiny_gpt2, tmp_path, in_tmp):
    make_args, message = BAD_INPUTS[case]
    args = make_args(tmp_path, csv)
    model = [] if "--model" in args else ["--model", str(tiny_gpt2)]
    assert re.search(message, _fails(capsys, "run", *model, *args))
    assert not (in_tmp / "saved_adapters").exists()  # nothing was written


def test_cli_refuses_to_overwrite_before_training(capsys, tiny_gpt2, rt_dir, in_tmp):
    out = in_tmp / "saved_adapters" / "x"
    out.mkdir(parents=True)
    (out / "adapter_config.json").write_text("{}")
    err = _fails(capsys, "run", "--model", str(tiny_gpt2), "--data-dir", str(rt_dir), "--output-dir", str(out))
    assert "already holds an adapter: pass --overwrite" in err
    assert (out / "adapter_config.json").read_text() == "{}"


def test_usage_and_unknown_command(capsys):
    assert main([]) == 2 and "usage" in capsys.readouterr().err
    assert main(["--help"]) == 0 and "commands" in capsys.readouterr().out
    assert main(["trian", "--model", "gpt2"]) == 2
    expected = "error: unknown command 'trian': use one of run, demo, predict, data, export, compare, tune (--help lists them)."
    assert capsys.readouterr().err.strip() == expected


def test_unsupported_library_version_is_one_line(capsys, monkeypatch):
    from packaging.version import Version

    from peft_helpers import cli, environment

    real = environment.installed_version
    monkeypatch.setattr(environment, "installed_version", lambda name: Version("4.40.0") if name == "transformers" else real(name))
    assert cli.main(["data"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unsupported library versions (transformers 4.40.0 installed, <6,>=4.46 needed)")
    assert err.endswith("run pip install -r " + str(environment.REQUIREMENTS)) and "\n" not in err


def test_demo_settings_online_and_offline(rt_dir, monkeypatch):
    from peft_helpers.demo import DEMO_OUTPUT_DIR, demo_config, hub_available
    from peft_helpers.errors import UserError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_available() is False
    online = demo_config(None, online=True)
    assert (online.model, online.data_dir, online.train_size, online.output_dir) == ("gpt2", None, None, DEMO_OUTPUT_DIR)
    offline = demo_config(str(rt_dir), online=False)
    assert (offline.model, offline.data_dir, offline.eval_size) == ("minilm", str(rt_dir), None)
    assert (offline.epochs, offline.model_dropout, offline.dropout, offline.validation) == (2.0, 0.0, 0.0, False)
    assert online.validation is True
    with pytest.raises(UserError, match="Hub is unreachable and no local data"):
        demo_config(None, online=False)


def test_predict_command(capsys, tiny_gpt2, rt_dir, tmp_path):
    out = tmp_path / "adapter"
    assert main(["run", "--model", str(tiny_gpt2), "--data-dir", str(rt_dir), "--train-size", "16", "--eval-size", "8",
                 "--batch-size", "8", "--output-dir", str(out), "--checkpoint-dir", str(tmp_path / "runs")]) == 0
    capsys.readouterr()
    assert main(["predict", str(out), "a fine film", "an awful film"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    from peft_helpers.inference import predict
    from peft_helpers.persistence import load_adapter

    expected = predict(*load_adapter(out)[:2], ["a fine film", "an awful film"])
    assert len(lines) == 2
    for line, row in zip(lines, expected.records()):
        assert line.split()[0] == row["label"]
        assert f"p(neg)={row['p(neg)']:.3f}, p(pos)={row['p(pos)']:.3f}" in line
    assert main(["predict", str(tmp_path / "nothing"), "text"]) == 2
    assert main(["predict", str(out), "--pairs", "a fine film", "and a second text"]) == 2  # trained on single texts
    assert "was trained on single texts" in capsys.readouterr().err


def test_demo_command_runs_offline(tiny_gpt2, rt_dir, in_tmp, monkeypatch, capsys):
    from peft_helpers.hardware import cpu_instructions

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    small = in_tmp / "small"
    small.mkdir()
    for kind in ("pos", "neg"):  # 100 reviews of each kind, so the demo's full-data run takes seconds
        lines = (rt_dir / f"rt-polarity.{kind}").read_bytes().splitlines()[:100]
        (small / f"rt-polarity.{kind}").write_bytes(b"\n".join(lines))
    assert main(["demo", "--model", str(tiny_gpt2), "--local-data", str(small)]) == 0
    out = capsys.readouterr().out
    assert f"Demo: model={tiny_gpt2}, data={small}" in out
    # the machine's matrix-product rate comes first (to compare the demo's time between machines), the time last
    if torch.cuda.is_available():  # the card's name instead (found on an H200)
        assert out.index(f"Machine: {torch.cuda.get_device_name()} (GPU)") < out.index("Pretrained")
    else:
        rate = re.search(r"Machine: fp32 matrix products at (\d+) GFLOP/s with (\d+) CPU threads, ([^(]+) \(", out)
        assert rate and int(rate[1]) > 0 and int(rate[2]) == torch.get_num_threads()
        assert out.index(rate[0]) < out.index("Pretrained")
        assert rate[3] == cpu_instructions()  # AVX2, AVX512, ...: the same rate means different machines otherwise
    assert re.search(r"Demo finished in \d+ min \d+ s", out.strip().splitlines()[-1])
    results = json.loads((in_tmp / "saved_adapters" / "demo" / "results.json").read_text())
    assert (results["train_size"], results["eval_size"]) == (160, 20)
    # no validation pass while training: only the training loss on the curve; the three test evaluations remain
    assert results["training_arguments"]["eval_strategy"] == "no"
    assert results["learning_curve"] and not any("eval_loss" in point for point in results["learning_curve"])
    assert "Pretrained accuracy on test" in out and results["finetuned"]["accuracy"] >= 0
    assert results["reload_max_logit_diff"] <= 1e-4  # the reloaded adapter was evaluated on the test split too


def test_tiny_bert_end_to_end_on_a_csv(tmp_path, in_tmp):
    """The path `make demo` takes offline (a BERT-style model), on a local CSV, through the command line."""
    from conftest import make_tiny_bert

    bert = make_tiny_bert(tmp_path / "bert")
    rows = [f"{'good film' if i % 2 else 'bad film'},{'pos' if i % 2 else 'neg'}" for i in range(200)]
    (tmp_path / "reviews.csv").write_text("text,label\n" + "\n".join(rows))
    assert main(["run", "--model", str(bert), "--data-dir", str(tmp_path / "reviews.csv"), "--batch-size", "8",
                 "--learning-rate", "1e-2", "--output-dir", str(tmp_path / "adapter")]) == 0
    results = json.loads((tmp_path / "adapter" / "results.json").read_text())
    assert results["config"]["epochs"] == 3 and results["config"]["r"] == 16  # BERT-family tuned defaults
    assert results["finetuned"]["accuracy"] == 1.0  # "good film" vs "bad film" is learnable even for this model
    assert results["reload_max_logit_diff"] <= 1e-5


def test_training_changes_the_adapter(tiny_gpt2, rt_dir, tmp_path):
    """LoRA's B matrices start at zero: after training they must be non-zero, or nothing was learned (reload and
    resume tests would pass even if the optimizer did nothing)."""
    from safetensors.torch import load_file

    from peft_helpers.config import RunConfig
    from peft_helpers.modeling import create_peft_model, load_model

    assert main(["run", "--model", str(tiny_gpt2), "--data-dir", str(rt_dir), "--train-size", "32", "--eval-size",
                 "16", "--batch-size", "8", "--learning-rate", "1e-2", "--output-dir", str(tmp_path / "a"),
                 "--checkpoint-dir", str(tmp_path / "runs")]) == 0
    trained = load_file(str(tmp_path / "a" / "adapter_model.safetensors"))
    model, _ = load_model(str(tiny_gpt2), ["neg", "pos"], seed=42, device="cpu")
    create_peft_model(model, RunConfig(model=str(tiny_gpt2)).resolved("gpt2")).save_pretrained(tmp_path / "b")
    initial = load_file(str(tmp_path / "b" / "adapter_model.safetensors"))
    assert trained.keys() == initial.keys()
    lora_b = [k for k in trained if "lora_B" in k]
    assert lora_b and all(initial[k].abs().max() == 0 for k in lora_b)
    assert all(trained[k].abs().max() > 0 for k in lora_b)
    head = [k for k in trained if "score" in k]
    assert head and not torch.equal(trained[head[0]], initial[head[0]])


def test_tensorboard_logs_hold_the_validation_accuracy_of_each_validation(tiny_gpt2, rt_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, runs = tmp_path / "adapter", tmp_path / "runs"
    assert main(["run", "--model", str(tiny_gpt2), "--data-dir", str(rt_dir), "--train-size", "32", "--eval-size", "16",
                 "--batch-size", "8", "--epochs", "2", "--report-to", "tensorboard", "--output-dir", str(out),
                 "--checkpoint-dir", str(runs)]) == 0
    assert not runs.exists()  # checkpoints removed; the logs are kept beside the adapter
    events = EventAccumulator(str(tmp_path / "adapter-logs")).Reload()
    accuracy = events.Scalars("eval/accuracy")
    curve = json.loads((out / "results.json").read_text())["learning_curve"]
    assert [round(e.value, 6) for e in accuracy] == [round(r["eval_accuracy"], 6) for r in curve if "eval_accuracy" in r]
    assert len(accuracy) >= 4 and "train/loss" in events.Tags()["scalars"]  # a curve, validated a few times per run


@pytest.mark.parametrize("backend, message", [("tensorbord", "is not known"), ("wandb", "needs the package wandb")])
def test_unknown_or_missing_log_backend_is_one_line(capsys, backend, message):
    assert main(["data", "--report-to", backend]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.e2e
def test_hub_unreachable_through_the_real_http_client(tmp_path):
    """No HF_HUB_OFFLINE: the Hub client really tries, against a closed local port, and whatever HTTP library it
    uses (requests, httpx, httpx2), the demo's check says offline instead of raising."""
    env = {k: v for k, v in __import__("os").environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path))
    code = "from peft_helpers.demo import hub_available; print(hub_available(timeout=3))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "False"


def test_eval_batch_size_changes_the_evaluation_batches_not_the_results(tiny_gpt2, rt_dir, tmp_path, monkeypatch):
    """--eval-batch-size reaches the Trainer's validation and every test evaluation of a run; the metrics, the
    learning curve and the trained adapter are those of a run with the default evaluation batch."""
    from safetensors.torch import load_file

    from peft_helpers import workflow

    sizes = []

    def recording_evaluate(model, tokenizer, dataset, batch_size, *args, **kwargs):
        sizes.append(batch_size)
        return evaluate(model, tokenizer, dataset, batch_size, *args, **kwargs)

    evaluate = workflow.evaluate
    monkeypatch.setattr(workflow, "evaluate", recording_evaluate)
    runs = {}
    for name, extra in (("default", []), ("three", ["--eval-batch-size", "3"])):
        out = tmp_path / name
        assert main(["run", "--model", str(tiny_gpt2), "--data-dir", str(rt_dir), "--train-size", "32", "--eval-size",
                     "16", "--batch-size", "8", "--output-dir", str(out), "--checkpoint-dir", str(tmp_path / "runs"),
                     *extra]) == 0
        runs[name] = json.loads((out / "results.json").read_text()), load_file(str(out / "adapter_model.safetensors"))
    assert sizes == [32] * 3 + [3] * 3  # pretrained, fine-tuned in memory, reloaded
    (default, default_weights), (three, three_weights) = runs["default"], runs["three"]
    assert [r["training_arguments"]["per_device_eval_batch_size"] for r in (default, three)] == [32, 3]
    for which in ("baseline", "finetuned"):
        assert three[which]["confusion_matrix"] == default[which]["confusion_matrix"]
        assert three[which]["accuracy"] == pytest.approx(default[which]["accuracy"])
    validation = [[round(r["eval_accuracy"], 6) for r in run["learning_curve"] if "eval_accuracy" in r]
                  for run in (default, three)]
    assert validation[0] == validation[1] and validation[0]
    for key in default_weights:
        torch.testing.assert_close(three_weights[key], default_weights[key], atol=0, rtol=0)


def test_no_validation_trains_without_validation_passes(tiny_gpt2, rt_dir, tmp_path):
    """--no-validation skips the Trainer's validation passes; the run is otherwise the same until the first
    validation would have run (a validation pass's DataLoader draws a seed from torch's generator, so the later
    batches and dropout masks differ, which is why validation is part of a run's identity for --resume)."""
    runs = {}
    for name, extra in (("validated", []), ("not", ["--no-validation"])):
        out = tmp_path / name
        assert main(["run", "--model", str(tiny_gpt2), "--data-dir", str(rt_dir), "--train-size", "32", "--eval-size",
                     "16", "--batch-size", "8", "--epochs", "2", "--output-dir", str(out), *extra]) == 0
        runs[name] = json.loads((out / "results.json").read_text())
    validated, skipped = runs["validated"], runs["not"]
    assert len([p for p in validated["learning_curve"] if "eval_accuracy" in p]) >= 4
    assert not any("eval_loss" in p for p in skipped["learning_curve"])
    assert [r["training_arguments"]["eval_strategy"] for r in (validated, skipped)] == ["steps", "no"]
    assert validated["learning_curve"][0]["loss"] == skipped["learning_curve"][0]["loss"]  # the first step
