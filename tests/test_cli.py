import json
import subprocess
import sys

import pytest
import torch

from peft_helpers.cli import main

from conftest import ROOT

KEYS = {"model", "dataset", "train_size", "eval_size", "baseline", "finetuned", "trainable_params", "total_params",
        "train_seconds", "adapter_dir"}


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
    curve = data["learning_curve"]  # 64 examples / batch 8 = 8 steps, 1 epoch (GPT-2 default)
    assert [r["step"] for r in curve if "loss" in r] == list(range(1, 9))  # 5% of 8 steps rounds up to 1
    assert [(r["step"], r["epoch"]) for r in curve if "eval_accuracy" in r] == [(8, 1.0)]
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


def test_cli_bad_inputs_exit_2_with_one_line(capsys, csv, tiny_gpt2, tmp_path, in_tmp):
    good = ["great fun,pos", "dull and slow,neg"] * 20
    model = ["--model", str(tiny_gpt2)]
    assert "no column 'label'" in _fails(capsys, "run", *model, "--data-dir", csv(good, "text,stars"))
    assert "empty or missing text" in _fails(capsys, "run", *model, "--data-dir", csv(good + ["   ,pos"]))
    assert "not in the label set" in _fails(capsys, "run", *model, "--data-dir", _split_folder(tmp_path))
    assert "not a model folder" in _fails(capsys, "run", "--model", str(tmp_path), "--data-dir", csv(good))
    assert "train_size=0" in _fails(capsys, "run", "--train-size", "0")
    assert "does not exist" in _fails(capsys, "run", "--data-dir", str(tmp_path / "nowhere"))
    assert "split has 32" in _fails(capsys, "run", *model, "--data-dir", csv(good), "--train-size", "1000")
    assert not (in_tmp / "saved_adapters").exists()  # nothing was written


def _split_folder(tmp_path):
    folder = tmp_path / "splits"
    folder.mkdir()
    (folder / "train.csv").write_text("text,label\n" + "\n".join(f"t{i},{'pos' if i % 2 else 'neg'}" for i in range(10)))
    (folder / "test.csv").write_text("text,label\nfine,pos\nhmm,meh\n")
    return str(folder)


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


def test_demo_settings_online_and_offline(rt_dir, monkeypatch):
    from peft_helpers.demo import DEMO_OUTPUT_DIR, demo_config, hub_available
    from peft_helpers.errors import UserError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_available() is False
    online = demo_config(None, online=True)
    assert (online.model, online.data_dir, online.train_size, online.output_dir) == ("gpt2", None, None, DEMO_OUTPUT_DIR)
    offline = demo_config(str(rt_dir), online=False)
    assert (offline.model, offline.data_dir, offline.eval_size) == ("minilm", str(rt_dir), None)
    with pytest.raises(UserError, match="Hub is unreachable and no local data"):
        demo_config(None, online=False)


def test_predict_command(capsys, tiny_gpt2, rt_dir, tmp_path):
    out = tmp_path / "adapter"
    assert main(["run", "--model", str(tiny_gpt2), "--data-dir", str(rt_dir), "--train-size", "16", "--eval-size", "8",
                 "--batch-size", "8", "--output-dir", str(out), "--checkpoint-dir", str(tmp_path / "runs")]) == 0
    capsys.readouterr()
    assert main(["predict", str(out), "a fine film", "an awful film"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].split()[0] in {"neg", "pos"} and "p(pos)=" in lines[0]
    assert main(["predict", str(tmp_path / "nothing"), "text"]) == 2
