"""Any dataset: by name through datasets.load_dataset (tested offline with local Parquet and save_to_disk folders),
text pairs and joined columns, truncation sides, per-class analysis, class weights."""

import json

import numpy as np
import pytest
import torch
from conftest import GPT2_TOKENIZER
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from transformers import AutoTokenizer

from peft_helpers.cli import main
from peft_helpers.config import RunConfig
from peft_helpers.data import load_data, load_run_data, tokenize, truncation_summary
from peft_helpers.errors import UserError
from peft_helpers.metrics import per_class_metrics
from peft_helpers.reporting import confident_mistakes
from peft_helpers.training import balanced_class_weights, weighted_loss

TOPICS = ["business", "entertainment", "politics", "sport", "tech"]


def _bbc_like(n=100, with_names=True):
    """The shape of SetFit/bbc-news: text, integer label, label_text; train and test splits only."""
    rows = {"text": [f"article {i} about {TOPICS[i % 5]}" for i in range(n)], "label": [i % 5 for i in range(n)]}
    if with_names:
        rows["label_text"] = [TOPICS[i % 5] for i in range(n)]
    return DatasetDict({"train": Dataset.from_dict(rows), "test": Dataset.from_dict({k: v[:20] for k, v in rows.items()})})


def test_parquet_folder_through_load_dataset_with_label_text_names(tmp_path, capsys):
    folder = tmp_path / "bbc"
    folder.mkdir()
    for split, ds in _bbc_like().items():
        ds.to_parquet(str(folder / f"{split}.parquet"))
    data = load_data(dataset=str(folder))
    assert data["train"].features["label"].names == TOPICS  # from the label_text column
    assert {s: len(d) for s, d in data.items()} == {"train": 90, "validation": 10, "test": 20}  # validation carved
    out = capsys.readouterr().out
    assert "Label names from the 'label_text' column" in out and "carved validation 10" in out


def test_save_to_disk_folder_with_classlabel_and_split_names(tmp_path):
    features = Features({"sentence": Value("string"), "y": ClassLabel(names=["neg", "pos"])})
    rows = {"sentence": [f"s {i}" for i in range(40)], "y": [i % 2 for i in range(40)]}
    DatasetDict({"fit": Dataset.from_dict(rows, features=features),
                 "dev": Dataset.from_dict(rows, features=features)}).save_to_disk(str(tmp_path / "saved"))
    cfg = RunConfig(dataset=str(tmp_path / "saved"), text_column="sentence", label_column="y", train_split="fit",
                    validation_split="dev", test_split="none")
    data = load_run_data(cfg)
    assert data["train"].features["label"].names == ["neg", "pos"]
    assert (len(data["train"]), len(data["validation"]), len(data["test"])) == (36, 40, 4)


@pytest.mark.parametrize("kwargs, message", [
    (dict(text_column="body"), r"has no column 'body' \(columns: text, label, label_text\)"),
    (dict(splits={"validation": "dev"}), r"has no split 'dev' \(splits: train, test\)"),
], ids=["missing-column", "unknown-split"])
def test_named_dataset_bad_input(tmp_path, kwargs, message):
    _bbc_like().save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(UserError, match=message):
        load_data(dataset=str(tmp_path / "saved"), **kwargs)


def test_unknown_config_is_refused_with_the_available_ones(tmp_path):
    folder = tmp_path / "pq"
    folder.mkdir()
    Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]}).to_parquet(str(folder / "train.parquet"))
    with pytest.raises(UserError, match=r"BuilderConfig 'nonexistent' not found. Available: \['default'\]"):
        load_data(dataset=str(folder), dataset_config="nonexistent")


def test_hidden_test_labels_are_refused_with_the_way_out(tmp_path):
    features = Features({"text": Value("string"), "label": ClassLabel(names=["a", "b"])})
    train = Dataset.from_dict({"text": [f"t{i}" for i in range(20)], "label": [i % 2 for i in range(20)]}, features=features)
    test = Dataset.from_dict({"text": ["x", "y"], "label": [-1, -1]}, features=features)
    DatasetDict({"train": train, "test": test}).save_to_disk(str(tmp_path / "glue-like"))
    with pytest.raises(UserError, match="test split has 2 unlabeled rows .* pass --test-split none"):
        load_data(dataset=str(tmp_path / "glue-like"))
    assert len(load_data(dataset=str(tmp_path / "glue-like"), splits={"test": "none"})["test"]) == 2


@pytest.mark.parametrize("args, message", [
    (["--dataset", "no-such-org/no-such-dataset"], "unreachable|was not found"),
    (["--dataset", "x", "--data-dir", "."], "not both"),
    (["--text-pair-column", "text"], "text_pair_column is the text column"),
    (["--truncation", "middle"], "truncation='middle' is invalid"),
    (["--class-weights", "inverse"], "class_weights='inverse' is invalid"),
], ids=["unknown-dataset", "dataset-and-data-dir", "pair-equals-text", "bad-truncation", "bad-class-weights"])
def test_dataset_flags_bad_input_one_line(capsys, args, message):
    import re

    assert main(["data", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.count("\n") == 0 and re.search(message, err), err


def test_pairs_and_joined_columns_from_a_local_csv(tmp_path):
    rows = [f"title {i},body {i},{'ab'[i % 2]}" for i in range(30)]
    (tmp_path / "pairs.csv").write_text("title,body,label\n" + "\n".join(rows))
    pairs = load_data(tmp_path / "pairs.csv", text_column="title", text_pair_column="body")
    row = pairs["train"][0]
    assert row["text"].startswith("title ") and row["text_pair"] == row["text"].replace("title", "body")
    joined = load_data(tmp_path / "pairs.csv", text_column="title+body")
    assert joined["train"][0]["text"] == f"title {joined['train'][0]['text'].split()[1]} body {joined['train'][0]['text'].split()[1]}"
    tokenizer = AutoTokenizer.from_pretrained(GPT2_TOKENIZER)
    tokenizer.pad_token = tokenizer.eos_token
    encoded = tokenize(pairs, tokenizer, 64)
    first = pairs["train"][0]
    assert encoded["train"][0]["input_ids"] == tokenizer(first["text"], first["text_pair"])["input_ids"]


LONG = " ".join(f"w{i}" for i in range(300))  # about 600 GPT-2 tokens


@pytest.mark.parametrize("side", ["head", "tail", "head+tail"])
def test_truncation_sides(side):
    tokenizer = AutoTokenizer.from_pretrained(GPT2_TOKENIZER)
    tokenizer.pad_token = tokenizer.eos_token
    data = DatasetDict({s: Dataset.from_dict({"text": [LONG, "short"], "label": [0, 1]}) for s in ("train", "test")})
    full = tokenizer(LONG)["input_ids"]
    kept = tokenize(data, tokenizer, 32, truncation=side)["train"][0]["input_ids"]
    assert len(kept) <= 32
    if side == "head":
        assert kept == full[:32]
    elif side == "tail":
        assert kept == full[-32:]
    else:  # the first quarter and the last three quarters of the budget
        assert kept == full[:8] + full[-24:]
    summary = truncation_summary(data, tokenizer, 32)
    assert summary.loc["train", "truncated"] == 1 and summary.loc["train", "longest"] == len(full)
    assert summary.loc["train", "mean tokens cut"] == len(full) - 32


def test_per_class_metrics_and_confident_mistakes():
    labels = np.array([0, 0, 1, 1, 2])
    logits = np.array([[5, 0, 0], [0, 9, 0], [0, 5, 0], [0, 0, 1], [0, 0, 3]], dtype=float)
    rows = per_class_metrics(labels, logits.argmax(-1), ["a", "b", "c"])
    assert [r["support"] for r in rows] == [2, 2, 1]
    assert rows[0] == {"label": "a", "precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    table = confident_mistakes(["t0", "t1", "t2", "t3", "t4"], labels, logits, ["a", "b", "c"])
    assert table["text"].tolist() == ["t1", "t3"]  # surest mistake first
    assert table.iloc[0][["true", "predicted"]].tolist() == ["a", "b"] and table["probability"].iloc[0] > 0.99


def test_balanced_class_weights_reweight_the_loss(tiny_gpt2):
    weights = balanced_class_weights([0] * 9 + [1], 2)
    torch.testing.assert_close(weights, torch.tensor([10 / 18, 10 / 2]))
    from peft_helpers.modeling import load_model

    model, tokenizer = load_model(str(tiny_gpt2), ["neg", "pos"], seed=0, device="cpu")
    inputs = tokenizer(["a fine film", "an awful film"], padding=True, return_tensors="pt")
    labels = torch.tensor([0, 1])
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(output_dir="unused", report_to="none")
    trainer = Trainer(model=model, args=args, compute_loss_func=weighted_loss(weights))  # the stock Trainer's hook
    device = next(model.parameters()).device
    inputs, labels = {k: v.to(device) for k, v in inputs.items()}, labels.to(device)
    loss = trainer.compute_loss(model, {**inputs, "labels": labels})
    with torch.no_grad():
        logits = model(**inputs).logits
    torch.testing.assert_close(loss.detach(), torch.nn.functional.cross_entropy(logits, labels, weight=weights.to(device)))
    assert not torch.isclose(loss.detach(), torch.nn.functional.cross_entropy(logits, labels))


def test_skewed_data_with_class_weights_end_to_end(tmp_path, in_tmp):
    """90% 'pos': without class weights the tiny model answers 'pos' always; with them it finds the 'neg' reviews."""
    from conftest import make_tiny_bert

    bert = make_tiny_bert(tmp_path / "bert")
    rows = [f"{'bad film' if i % 10 == 0 else 'good film'},{'neg' if i % 10 == 0 else 'pos'}" for i in range(300)]
    (tmp_path / "skewed.csv").write_text("text,label\n" + "\n".join(rows))
    recall = {}
    for weights in ([], ["--class-weights", "balanced"]):
        out = tmp_path / f"adapter{len(weights)}"
        assert main(["run", "--model", str(bert), "--data-dir", str(tmp_path / "skewed.csv"), *weights,
                     "--learning-rate", "3e-2", "--output-dir", str(out)]) == 0
        results = json.loads((out / "results.json").read_text())
        per_class = {row["label"]: row for row in results["per_class"]}
        assert per_class["neg"]["support"] == 3 and isinstance(results["confident_mistakes"], list)
        recall[results["config"]["class_weights"]] = per_class["neg"]["recall"]
    assert recall == {None: 0.0, "balanced": 1.0}


def test_head_and_tail_with_a_wordpiece_tokenizer(tmp_path):
    from conftest import make_tiny_bert

    tokenizer = AutoTokenizer.from_pretrained(make_tiny_bert(tmp_path / "bert"))
    words = ["good"] * 40 + ["bad"] * 40 + ["film"] * 40
    data = DatasetDict({s: Dataset.from_dict({"text": [" ".join(words)], "label": [0]}) for s in ("train", "test")})
    full = tokenizer(" ".join(words))["input_ids"]  # [CLS] 120 words [SEP]
    kept = tokenize(data, tokenizer, 22, truncation="head+tail")["train"][0]["input_ids"]
    assert kept == full[:1 + 5] + full[-1 - 15:]  # [CLS], 5 head tokens, 15 tail tokens, [SEP]
