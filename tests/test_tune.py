"""tune: Optuna search on validation, pruning, resume from the study file, the best trial re-trained, bad input."""

import json

import pytest
from conftest import make_tiny_bert

from peft_helpers.cli import main
from peft_helpers.config import RunConfig
from peft_helpers.tune import parse_budget, search_space

optuna = pytest.importorskip("optuna")


@pytest.mark.parametrize("text, seconds", [("20m", 1200), ("1h30m", 5400), ("90s", 90), ("600", 600), ("1.5h", 5400)])
def test_time_budgets(text, seconds):
    assert parse_budget(text) == seconds


def test_search_space_follows_the_method_and_the_architecture():
    assert search_space(RunConfig(method="lora"), "bert", None) == ["learning_rate", "epochs", "r", "alpha", "dropout",
                                                                     "target_modules"]
    assert search_space(RunConfig(method="ia3"), "bert", None) == ["learning_rate", "epochs"]
    assert search_space(RunConfig(method="prompt_tuning"), "gpt2", None) == ["learning_rate", "epochs",
                                                                             "num_virtual_tokens"]
    assert search_space(RunConfig(method="lora"), "t5", "r,learning_rate") == ["r", "learning_rate"]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="module")
def reviews(tmp_path_factory):
    import numpy as np

    folder = tmp_path_factory.mktemp("reviews")
    rng = np.random.default_rng(0)
    lines = ["text,label"]
    for _ in range(160):
        words = rng.choice(["good", "bad", "film", "great", "dull"], 4)
        lines.append(f"{' '.join(words)},{'pos' if ('good' in words) or ('great' in words) else 'neg'}")
    (folder / "reviews.csv").write_text("\n".join(lines) + "\n")
    return folder / "reviews.csv"


def _tune_args(tiny_bert, reviews, out, *extra):
    return ["tune", "--model", str(tiny_bert), "--data-dir", str(reviews), "--output-dir", str(out), "--batch-size", "16",
            *extra]


@pytest.mark.parametrize("extra, message", [
    (["--time-budget", "0.001s"], r"time_budget 0.001 s is less than one trial needs here \(about [\d.]+ s"),
    (["--search", "rank"], r"search parameter 'rank' is not known: use learning_rate, epochs"),
    (["--search", "num_virtual_tokens"], r"does not apply to method lora on bert"),
    (["--time-budget", "soon"], r"time_budget='soon': write it as 20m"),
    (["--trials", "0"], r"trials=0: give at least 1"),
], ids=["budget-too-small", "unknown-parameter", "parameter-of-another-method", "unreadable-budget", "no-trials"])
def test_tune_bad_input_ends_in_one_line_and_exit_2(tiny_bert, reviews, tmp_path, capsys, extra, message):
    import re

    assert main(_tune_args(tiny_bert, reviews, tmp_path / "t", *extra)) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and re.search(message, err[0]), err  # (progress bars of the data loading aside)


@pytest.mark.e2e
@pytest.mark.core
def test_tune_searches_resumes_and_refuses_a_study_of_another_task(tiny_bert, reviews, tmp_path, capsys):
    out = tmp_path / "tune"
    args = _tune_args(tiny_bert, reviews, out, "--trials", "3", "--search", "learning_rate,r,epochs")
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trials"] == 3 and summary["metric"] == "accuracy"
    assert (out / "study.db").is_file() and (out / "trials.csv").is_file() and (out / "history.png").is_file()
    best = json.loads((out / "best" / "peft_helpers.json").read_text())  # a normal adapter
    assert best["config"]["learning_rate"] == pytest.approx(summary["best_settings"]["learning_rate"])
    assert (out / "defaults" / "adapter_model.safetensors").is_file()
    assert set(summary["test"]) == {"best", "defaults"}
    # the same study without --resume is refused; with it, only the missing trials run
    assert main(args) == 2 and "pass --resume" in capsys.readouterr().err
    assert main([*args[:-6], "--trials", "4", "--search", "learning_rate,r,epochs", "--resume"]) == 0
    assert json.loads((out / "summary.json").read_text())["trials"] == 4
    # a study file from another task: other data
    other = reviews.parent / "other.csv"
    other.write_text(reviews.read_text().replace("good", "great"))
    assert main(_tune_args(tiny_bert, other, out, "--trials", "4", "--search", "learning_rate,r,epochs",
                           "--resume")) == 2
    assert "is a study of another task (differs in data)" in capsys.readouterr().err


def test_a_trial_scores_on_validation_and_never_sees_the_test_split(tiny_bert, reviews, tmp_path, monkeypatch):
    from peft_helpers import evaluation, tune
    from peft_helpers.workflow import prepare

    seen = []
    real = evaluation.evaluate

    def spy(model, tokenizer, dataset, *args, **kwargs):
        seen.append(dataset._fingerprint)
        return real(model, tokenizer, dataset, *args, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate", spy)
    p = prepare(RunConfig(model=str(tiny_bert), data_dir=str(reviews), output_dir=str(tmp_path / "t"), batch_size=16))
    study = optuna.create_study(direction="maximize")
    study.optimize(tune.objective(p, ["learning_rate"], "bert", tmp_path / "t"), n_trials=1)
    assert seen == [p.encoded["validation"]._fingerprint]
    assert 0 <= study.trials[0].value <= 1 and study.trials[0].user_attrs["seconds"] > 0
