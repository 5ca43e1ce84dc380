"""A merged export that stock tools load without peft, with the real labels; model cards; bad input."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT

from peft_helpers.cli import main

STOCK = """
import sys, json
sys.modules["peft"] = None  # stock transformers only: importing peft would fail
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline
folder = sys.argv[1]
model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
tokenizer = AutoTokenizer.from_pretrained(folder)
texts = json.loads(sys.argv[2])
with torch.no_grad():
    logits = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits
classify = pipeline("text-classification", model=folder, tokenizer=folder, device=-1)
print(json.dumps({"id2label": model.config.id2label, "pad": model.config.pad_token_id, "logits": logits.tolist(),
                  "pipeline": [r["label"] for r in classify(texts)]}))
"""


def _train(tmp_path, model, data, *extra):
    out = tmp_path / "adapter"
    assert main(["run", "--model", str(model), "--data-dir", str(data), "--batch-size", "8", "--output-dir", str(out),
                 "--checkpoint-dir", str(tmp_path / "runs"), *extra]) == 0
    return out


@pytest.fixture(scope="module")
def four_class_adapter(tmp_path_factory):
    """A tiny BERT trained on a 4-class CSV whose class names come from classes.txt (as AG News)."""
    from conftest import make_tiny_bert

    tmp_path = tmp_path_factory.mktemp("four")
    bert = make_tiny_bert(tmp_path / "bert")
    words = ["good", "bad", "film", "great"]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "news.csv").write_text("\n".join(f'"{i % 4 + 1}","{words[i % 4]} {words[(i + 1) % 4]}"' for i in range(80)))
    (tmp_path / "data" / "classes.txt").write_text("World\nSports\nBusiness\nSci/Tech\n")
    return _train(tmp_path, bert, tmp_path / "data"), tmp_path


@pytest.mark.e2e
@pytest.mark.core
@pytest.mark.parametrize("kind", ["gpt2-two-labels", "bert-four-labels"])
def test_merged_export_loads_without_peft_with_labels_and_same_predictions(kind, tiny_gpt2, rt_dir, four_class_adapter, tmp_path):
    if kind == "gpt2-two-labels":
        adapter = _train(tmp_path, tiny_gpt2, rt_dir, "--train-size", "32", "--eval-size", "16")
        names = ["neg", "pos"]
    else:
        adapter, _ = four_class_adapter
        names = ["World", "Sports", "Business", "Sci/Tech"]
    out = tmp_path / "merged"
    assert main(["export", str(adapter), str(out), "--merge"]) == 0
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "tokenizer_config.json", "README.md"}
    assert not list(out.glob("*.bin")) and not (out / "adapter_config.json").exists()
    texts = ["good film", "bad film great", "a film"]
    proc = subprocess.run([sys.executable, "-c", STOCK, str(out), json.dumps(texts)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    stock = json.loads(proc.stdout.strip().splitlines()[-1])
    assert list(stock["id2label"].values()) == names and stock["pad"] is not None
    from peft_helpers.inference import predict
    from peft_helpers.persistence import load_adapter

    ours = predict(*load_adapter(adapter, device="cpu")[:2], texts)
    assert stock["pipeline"] == ours.labels
    import numpy as np
    import torch

    expected = torch.log_softmax(torch.tensor(stock["logits"]), -1).numpy()
    np.testing.assert_allclose(expected, np.log(ours.probabilities), atol=1e-4)
    card = (out / "README.md").read_text()
    assert "pipeline(\"text-classification\"" in card and names[-1] in card
    assert "num_labels" in (adapter / "README.md").read_text()  # the adapter's own card says how to load it


@pytest.mark.parametrize("case, message", [
    ("not-an-adapter", "is not a PEFT adapter"),
    ("exists", "already holds files: pass --overwrite"),
    ("no-merge", "add --merge"),
    ("base-unavailable", "model folder /nonexistent/base does not exist"),
], ids=["not-an-adapter", "exists", "no-merge", "base-unavailable"])
def test_export_bad_input_one_line(case, message, four_class_adapter, tmp_path, capsys):
    adapter, _ = four_class_adapter
    out = tmp_path / "merged"
    if case == "exists":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    source = tmp_path if case == "not-an-adapter" else adapter
    if case == "base-unavailable":  # a copy of the adapter whose recorded base model is gone
        import shutil

        source = tmp_path / "moved"
        shutil.copytree(adapter, source)
        meta = json.loads((source / "peft_helpers.json").read_text())
        (source / "peft_helpers.json").write_text(json.dumps({**meta, "base_model": "/nonexistent/base"}))
    args = ["export", str(source), str(out)] + ([] if case == "no-merge" else ["--merge"])
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and message in err
    if case == "exists":
        assert (out / "keep.txt").read_text() == "mine" and len(list(out.iterdir())) == 1
    else:
        assert not out.exists()
    assert not list(tmp_path.glob(".merged.*"))  # no half-written folder


def test_push_to_hub_without_network_keeps_the_folder(four_class_adapter, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    adapter, _ = four_class_adapter
    out = tmp_path / "merged"
    assert main(["export", str(adapter), str(out), "--merge", "--push-to-hub", "someone/some-model"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: could not push to the Hub")
    assert (out / "model.safetensors").is_file()
