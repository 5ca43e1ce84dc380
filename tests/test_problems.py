"""Multi-label classification and regression: loading, metrics, bad input, and a run end to end for each."""

import json

import numpy as np
import pytest
from conftest import SHARED, make_tiny_bert

from peft_helpers.cli import main
from peft_helpers.data import label_names, load_data, problem_of
from peft_helpers.errors import UserError
from peft_helpers.metrics import multilabel_metrics, regression_metrics, tune_threshold

SEMEVAL = SHARED / "data" / "semeval2018_ec"
EMOTIONS = "anger,anticipation,disgust,fear,joy,love,optimism,pessimism,sadness,surprise,trust"
DEV_AS_TEST = {"test": "dev", "validation": "none"}


def test_several_0_1_columns_load_as_multi_label_with_texts_that_have_none():
    data = load_data(SEMEVAL, text_column="Tweet", label_column=EMOTIONS, splits=DEV_AS_TEST)
    assert problem_of(data["train"]) == "multi-label" and label_names(data) == EMOTIONS.split(",")
    assert (len(data["train"]) + len(data["validation"]), len(data["test"])) == (6838, 886)
    rows = list(data["train"]["label"]) + list(data["validation"]["label"])
    assert sum(not r for r in rows) == 204  # the README's count of training tweets without an emotion


def test_a_float_column_with_many_values_loads_as_regression_with_a_text_pair():
    data = load_data(SHARED / "data" / "stsb", text_column="sentence1", text_pair_column="sentence2",
                     label_column="score", splits=DEV_AS_TEST)
    assert problem_of(data["test"]) == "regression" and label_names(data) == ["score"]
    assert len(data["test"]) == 1500 and data["train"][0]["text_pair"] and 0 <= min(data["test"]["label"])


def test_multilabel_metrics_by_hand():
    labels = np.array([[1, 0, 1], [0, 0, 0], [0, 1, 0], [1, 1, 0]])
    predicted = np.array([[1, 0, 0], [0, 0, 0], [0, 1, 0], [1, 0, 1]])
    m = multilabel_metrics(labels, predicted, ["a", "b", "c"])
    # Jaccard per text: 1/2, 1 (no label, none predicted), 1, 1/3
    assert m["jaccard"] == pytest.approx((0.5 + 1 + 1 + 1 / 3) / 4)
    assert m["exact_match"] == 0.5
    assert m["micro_f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 2))  # tp 3, fp 1, fn 2
    assert [r["support"] for r in m["per_label"]] == [2, 2, 1]


def test_regression_metrics_and_a_constant_prediction():
    m = regression_metrics([0.0, 1.0, 2.0, 3.0], [0.1, 0.9, 2.5, 2.9])
    assert m["pearson"] > 0.95 and m["spearman"] == pytest.approx(1.0)
    assert m["mae"] == pytest.approx((0.1 + 0.1 + 0.5 + 0.1) / 4)
    assert regression_metrics([0.0, 1.0], [2.0, 2.0])["pearson"] == 0.0


def test_the_threshold_is_the_best_on_the_rows_it_is_given():
    labels = np.array([[1, 0], [0, 1], [1, 1]])
    logits = np.log(np.array([[0.3, 0.1], [0.1, 0.25], [0.35, 0.3]]) / (1 - np.array([[0.3, 0.1], [0.1, 0.25], [0.35, 0.3]])))
    assert tune_threshold(logits, labels) == 0.25  # every true label at >= 0.25, every false one below


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("name, content, args, message", [
    ("ml.csv", "text,a,b\nfine film,1,0\ndull,0,2\n", ["--label-column", "a,b"],
     r"multi-label column 'b' holds '2' at ml.csv data row 2 .*must hold 0 or 1"),
    ("reg.csv", "text,score\n" + "".join(f"t{i},{i / 3:.2f}\n" for i in range(30)) + "t,high\n",
     ["--label-column", "score", "--problem", "regression"], r"regression target 'high' at reg.csv data row 31 .*not a number"),
    ("const.csv", "text,score\n" + "".join(f"t{i},2.5\n" for i in range(30)), ["--label-column", "score",
                                                                                "--problem", "regression"],
     r"regression target is constant \(2.5\)"),
], ids=["multi-label-not-0-1", "regression-not-a-number", "regression-constant"])
def test_bad_multi_label_and_regression_labels_end_in_one_line_and_exit_2(tmp_path, capsys, name, content, args,
                                                                          message):
    path = _write(tmp_path, name, content)
    assert main(["data", "--data-dir", str(path), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    import re

    assert re.search(message, err[0]), err[0]


def test_a_label_list_naming_an_unknown_label_is_refused(tmp_path):
    folder = tmp_path / "lists"
    folder.mkdir()
    rows = [{"text": f"t{i}", "label": ["joy"] if i % 2 else ["sadness", "joy"]} for i in range(20)]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "test.jsonl").write_text(json.dumps({"text": "x", "label": ["envy"]}) + "\n")
    with pytest.raises(UserError, match=r"test.jsonl line 1 names label 'envy', which the train split never shows"):
        load_data(folder)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.mark.e2e
@pytest.mark.core
def test_multi_label_run_tunes_saves_and_reloads_its_threshold(tiny_bert, tmp_path, in_tmp):
    from peft_helpers.config import RunConfig
    from peft_helpers.inference import load_for_prediction, predict
    from peft_helpers.workflow import run

    words = ["good", "bad", "film", "great", "dull"]
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(120):
        text = " ".join(rng.choice(words, 4))
        rows.append({"text": text, "label": sorted({w for w in ("good", "dull") if w in text})})
    path = _write(tmp_path, "ml.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    results = run(RunConfig(model=str(tiny_bert), data_dir=str(path), epochs=2, learning_rate=1e-2,
                            output_dir="adapter"))
    assert results["problem"] == "multi-label" and results["label_names"] == ["dull", "good"]
    assert 0.05 <= results["threshold"] <= 0.95 and set(results["finetuned"]) >= {"jaccard", "micro_f1", "exact_match"}
    assert results["reload_max_logit_diff"] <= 1e-5
    saved = json.loads((in_tmp / "adapter" / "peft_helpers.json").read_text())
    assert saved["problem"] == "multi-label" and saved["threshold"] == results["threshold"]
    model, tokenizer = load_for_prediction("adapter")
    out = predict(model, tokenizer, ["good good film", "dull"])
    assert all(isinstance(labels, list) for labels in out.labels) and out.probabilities.shape == (2, 2)
    assert out.labels == [[n for n, p in zip(out.label_names, row) if p >= results["threshold"]]
                          for row in out.probabilities]
    # the merged export: a stock pipeline gives one sigmoid per label (top_k=None), the threshold is in its config
    from transformers import pipeline

    from peft_helpers.export import export_merged

    export_merged("adapter", "merged")
    config = json.loads((in_tmp / "merged" / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    assert config["decision_threshold"] == results["threshold"]
    scores = pipeline("text-classification", model="merged", top_k=None, device="cpu")(["good good film", "dull"])
    for row, probabilities in zip(scores, out.probabilities):
        by_label = {s["label"]: s["score"] for s in row}
        np.testing.assert_allclose([by_label[n] for n in out.label_names], probabilities, atol=1e-5)


@pytest.mark.e2e
@pytest.mark.parametrize("scale_targets", [False, True], ids=["raw-targets", "scaled-targets"])
def test_regression_run_on_a_text_pair_reports_correlations(tiny_bert, tmp_path, in_tmp, scale_targets):
    from peft_helpers.config import RunConfig
    from peft_helpers.workflow import run

    words = ["good", "bad", "film", "great", "dull"]
    rng = np.random.default_rng(1)
    lines = ["a\tb\tscore"]
    for _ in range(120):
        a, b = rng.choice(words, 3), rng.choice(words, 3)
        lines.append(f"{' '.join(a)}\t{' '.join(b)}\t{len(set(a) & set(b)) * 1.25 + rng.uniform(0, 0.5):.2f}")
    path = _write(tmp_path, "pairs.tsv", "\n".join(lines) + "\n")
    results = run(RunConfig(model=str(tiny_bert), data_dir=str(path), text_column="a", text_pair_column="b",
                            label_column="score", epochs=2, learning_rate=1e-2, output_dir="adapter",
                            scale_targets=scale_targets))
    assert ("target_scaling" in results) == scale_targets
    assert results["problem"] == "regression" and results["label_names"] == ["score"]
    assert set(results["finetuned"]) == {"pearson", "spearman", "mse", "mae"}
    assert results["finetuned"]["mse"] < results["baseline"]["mse"]
    assert (in_tmp / "adapter" / "scatter.png").is_file()
    if scale_targets:  # trained on standardized targets, the saved head predicts the original scale
        saved = json.loads((in_tmp / "adapter" / "peft_helpers.json").read_text())
        assert saved["target_scaling"] == results["target_scaling"] and results["target_scaling"]["mean"] > 1
        assert abs(results["finetuned"]["mae"]) < results["target_scaling"]["mean"]
    assert results["reload_max_logit_diff"] <= 1e-5


@pytest.mark.e2e
def test_predict_takes_pairs_for_an_adapter_trained_on_pairs(tiny_bert, tmp_path, in_tmp, capsys):
    import pandas as pd

    from peft_helpers.config import RunConfig
    from peft_helpers.inference import load_for_prediction, predict
    from peft_helpers.workflow import run

    lines = ["a\tb\tscore"] + [f"good film {i}\t{'good ' * (i % 3)}film\t{(i % 3) * 2 + i / 100:.2f}" for i in range(60)]
    run(RunConfig(model=str(tiny_bert), data_dir=str(_write(tmp_path, "pairs.tsv", "\n".join(lines) + "\n")),
                  text_column="a", text_pair_column="b", label_column="score", epochs=1, output_dir="adapter"))
    model, tokenizer = load_for_prediction("adapter")
    expected = predict(model, tokenizer, ["good film", "a film"], text_pairs=["good good film", "film"]).labels
    assert expected != predict(model, tokenizer, ["good film", "a film"]).labels  # the pair is read
    capsys.readouterr()
    assert main(["predict", "adapter", "--pairs", "good film", "good good film", "a film", "film"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert [float(line.split()[0]) for line in printed] == pytest.approx(expected, abs=1e-3)
    assert printed[0].endswith("good film  |  good good film")
    pd.DataFrame({"first": ["good film", "a film"], "second": ["good good film", "film"]}).to_csv("in.csv", index=False)
    assert main(["predict", "adapter", "--input", "in.csv", "--output", "out.csv", "--text_column", "first",
                 "--text_pair_column", "second"]) == 0
    assert list(pd.read_csv("out.csv")["predicted_label"]) == pytest.approx(expected, abs=1e-5)
    for argv, message in [(["good film"], "was trained on text pairs"), (["--pairs", "one"], "two by two")]:
        capsys.readouterr()  # the progress bars of the predictions above
        assert main(["predict", "adapter", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err


@pytest.mark.e2e
def test_scaled_targets_on_a_head_without_a_bias_are_divided_by_std_only(tiny_gpt2, tmp_path, in_tmp):
    from peft_helpers.config import RunConfig
    from peft_helpers.workflow import run

    lines = ["text,score"] + [f"{'great ' * (i % 5)}film number {i},{10 + (i % 5) + i / 100:.3f}" for i in range(60)]
    path = _write(tmp_path, "reg.csv", "\n".join(lines) + "\n")
    results = run(RunConfig(model=str(tiny_gpt2), data_dir=str(path), label_column="score", epochs=1,
                            output_dir="adapter"))
    assert results["target_scaling"]["mean"] == 0.0 and results["target_scaling"]["std"] > 1
    assert results["reload_max_logit_diff"] <= 1e-5


@pytest.mark.e2e
@pytest.mark.parametrize("kind", ["linear_probe", "full"])
def test_baselines_train_and_score_regression_on_the_targets_scale(tiny_bert, tmp_path, in_tmp, kind):
    from peft_helpers.baselines import run_baseline
    from peft_helpers.config import RunConfig

    lines = ["text\tscore"] + [f"{'good ' * (i % 4)}film\t{10 + 2 * (i % 4) + (i % 7) / 10:.2f}" for i in range(80)]
    path = _write(tmp_path, "reg.tsv", "\n".join(lines) + "\n")
    results = run_baseline(kind, RunConfig(model=str(tiny_bert), data_dir=str(path), label_column="score",
                                           epochs=3, learning_rate=1e-2, output_dir="b"))
    assert results["problem"] == "regression" and results["finetuned"]["mae"] < 2.5  # not off by the mean (~13)


def test_a_named_split_file_that_is_missing_is_refused():
    with pytest.raises(UserError, match=r"holds no devel.csv/.tsv/.txt/.json/.jsonl/.parquet for the split named .devel."):
        load_data(SEMEVAL, text_column="Tweet", label_column=EMOTIONS, splits={"test": "devel"})


@pytest.mark.e2e
def test_compare_names_its_score_column_after_the_problem(tiny_bert, tmp_path, capsys):
    import pandas as pd

    lines = ["text\tscore"] + [f"{'good ' * (i % 4)}film\t{10 + 2 * (i % 4) + (i % 7) / 10:.2f}" for i in range(80)]
    path = _write(tmp_path, "reg.tsv", "\n".join(lines) + "\n")
    out = tmp_path / "compare"
    assert main(["compare", "--model", str(tiny_bert), "--data_dir", str(path), "--label_column", "score",
                 "--epochs", "1", "--methods", "lora", "--baselines", "linear_probe", "--compare_dir", str(out)]) == 0
    table = pd.read_csv(out / "comparison.csv")
    assert "accuracy" not in table and table["pearson"].between(-1, 1).all() and table["macro_f1"].isna().all()
    assert "| pearson |" in (out / "comparison.md").read_text() and (out / "comparison.png").is_file()
