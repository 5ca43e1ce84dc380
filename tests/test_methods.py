"""Every PEFT method end to end on the tiny GPT-2 and the tiny BERT: train, save, reload with identical predictions
(load_adapter, predict, the stock AutoPeftModelForSequenceClassification), merge where the method has weights
to merge; and each method-specific refusal in one line."""

import numpy as np
import pytest
import transformers
from conftest import make_tiny_bert

from peft_helpers.cli import main
from peft_helpers.config import RunConfig
from peft_helpers.data import load_rotten_tomatoes, subsample, tokenize
from peft_helpers.errors import UserError
from peft_helpers.evaluation import predict_logits
from peft_helpers.export import export_merged
from peft_helpers.inference import predict
from peft_helpers.methods import METHODS, qlora_problem
from peft_helpers.persistence import load_adapter
from peft_helpers.workflow import run

TRANSFORMERS_5 = int(transformers.__version__.split(".")[0]) >= 5
QLORA_PROBLEM = qlora_problem()  # None on a CUDA machine with bitsandbytes


def does_not_fit(arch: str, method: str) -> str | None:
    """Why `method` is refused on the tiny `arch`, or None (the refusals have their own tests below)."""
    if arch == "gpt2" and method in ("loha", "lokr"):
        return "Conv1D"
    if method == "prefix_tuning" and (arch == "bert" or TRANSFORMERS_5):
        return "past_key_values"
    return None


CASES = [pytest.param(arch, m, id=f"{arch}-{m}") for arch in ("gpt2", "bert") for m in METHODS
         if m != "qlora" and does_not_fit(arch, m) is None]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def method_config(model, rt_dir, method, work, **extra) -> RunConfig:
    settings = dict(train_size=32, eval_size=16, batch_size=8, epochs=1, max_length=64) | extra
    return RunConfig(model=str(model), data_dir=str(rt_dir), method=method, output_dir=str(work / "adapter"),
                     checkpoint_dir=str(work / "runs"), **settings)


@pytest.mark.e2e
@pytest.mark.parametrize("arch, method", CASES)
def test_method_trains_saves_and_reloads_identically(arch, method, tiny_gpt2, tiny_bert, rt_dir, tmp_path):
    from peft import AutoPeftModelForSequenceClassification

    model = tiny_gpt2 if arch == "gpt2" else tiny_bert
    cfg = method_config(model, rt_dir, method, tmp_path)
    results = run(cfg)  # run() itself refuses a reload that differs by more than RELOAD_TOLERANCE
    assert results["method"] == method and results["reload_max_logit_diff"] <= 1e-4
    assert 0 < results["trainable_params"] < results["total_params"] and results["adapter_mib"] > 0

    reloaded, tokenizer, meta = load_adapter(cfg.output_dir, device="cpu")
    test = tokenize(subsample(load_rotten_tomatoes(rt_dir), 32, 16, cfg.seed), tokenizer, 64)["test"]
    ours = predict_logits(reloaded, tokenizer, test, batch_size=8)
    names = meta["label_names"]
    stock = AutoPeftModelForSequenceClassification.from_pretrained(
        cfg.output_dir, num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    stock.config.pad_token_id = tokenizer.pad_token_id
    np.testing.assert_allclose(predict_logits(stock.eval(), tokenizer, test, batch_size=8), ours, atol=1e-4)

    texts = list(subsample(load_rotten_tomatoes(rt_dir), 32, 16, cfg.seed)["test"]["text"])[:4]
    assert len(predict(reloaded, tokenizer, texts).labels) == 4
    if METHODS[method].mergeable:
        exported = export_merged(cfg.output_dir, tmp_path / "merged")
        assert exported["max_logit_diff"] <= 1e-4
    else:
        with pytest.raises(UserError, match="no weights to merge"):
            export_merged(cfg.output_dir, tmp_path / "merged")


@pytest.mark.skipif(QLORA_PROBLEM is not None, reason=f"{QLORA_PROBLEM} (runs in benchmarks/gpu_check.sh)")
def test_qlora_trains_saves_and_reloads_on_cuda(tiny_bert, rt_dir, tmp_path):
    """QLoRA on a CUDA GPU with bitsandbytes: the 4-bit base is quantised the same way when the adapter loads, so
    the reload reproduces the trained model; `export --merge` refuses (merging would change the predictions)."""
    import torch

    cfg = method_config(tiny_bert, rt_dir, "qlora", tmp_path)
    results = run(cfg)
    assert results["reload_max_logit_diff"] <= 1e-4 and results["peak_memory_mib"]["gpu"] > 0
    reloaded, tokenizer, _ = load_adapter(cfg.output_dir)
    linear4bit = [m for m in reloaded.modules() if type(m).__name__ == "Linear4bit"]
    assert linear4bit and next(reloaded.parameters()).device.type == "cuda" and torch.cuda.is_available()
    assert len(predict(reloaded, tokenizer, ["good film", "dull"]).labels) == 2
    with pytest.raises(UserError, match="4-bit base"):
        export_merged(cfg.output_dir, tmp_path / "merged")


def test_adalora_ranknum_stays_frozen_when_peft_moves_the_adapter(tiny_bert):
    """On a GPU peft moves each adapter to its layer's device and turns AdaLoRA's constant ranknum into a trainable
    parameter (found on an H200: the reload differed by 0.24). A float64 model makes peft move it on a CPU too."""
    import torch

    from peft_helpers.modeling import create_peft_model, load_model

    cfg = RunConfig(model=str(tiny_bert), method="adalora").resolved("bert")
    model, _ = load_model(str(tiny_bert), ["neg", "pos"], device="cpu")
    peft_model = create_peft_model(model.to(torch.float64), cfg, total_steps=100)
    ranknum = [p for n, p in peft_model.named_parameters() if ".ranknum." in n]
    assert ranknum and not any(p.requires_grad for p in ranknum)
    assert all(p.item() == peft_model.peft_config["default"].init_r for p in ranknum)

    # a model made with get_peft_model itself (as the notebook does) is frozen when training begins
    from peft import get_peft_model

    from peft_helpers.methods import peft_config
    from peft_helpers.training import AdaLoraBudget

    model, _ = load_model(str(tiny_bert), ["neg", "pos"], device="cpu")
    stock = get_peft_model(model.to(torch.float64), peft_config(model, cfg, total_steps=100))
    for name, param in stock.named_parameters():
        if ".ranknum." in name:  # as peft 0.21 leaves it after the move (0.14 does not)
            param.requires_grad_(True)
    AdaLoraBudget().on_train_begin(None, None, None, model=stock)
    assert not any(p.requires_grad for n, p in stock.named_parameters() if ".ranknum." in n)


def test_pissa_adapter_fits_the_original_base(tiny_gpt2, rt_dir, tmp_path):
    """PiSSA rewrites the base weights while training; the saved adapter is converted (rank 2r) to fit the
    original ones, with the trained head kept."""
    import json

    run(method_config(tiny_gpt2, rt_dir, "pissa", tmp_path, r=4))
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["r"] == 8 and saved["init_lora_weights"] is True


@pytest.mark.e2e
def test_prompt_methods_pad_decoders_on_the_left(tiny_gpt2, rt_dir, tmp_path):
    """Prompt tuning hands GPT-2 embeddings, not ids, so its head reads the last position: a pad there would be
    classified. The tokenizer saved with the adapter pads on the left; LoRA keeps right padding."""
    run(method_config(tiny_gpt2, rt_dir, "prompt_tuning", tmp_path / "p"))
    run(method_config(tiny_gpt2, rt_dir, "lora", tmp_path / "l"))
    assert load_adapter(tmp_path / "p" / "adapter", device="cpu")[1].padding_side == "left"
    assert load_adapter(tmp_path / "l" / "adapter", device="cpu")[1].padding_side == "right"


def test_method_defaults_follow_the_method():
    ia3 = RunConfig(method="ia3").resolved("bert")
    lora = RunConfig().resolved("bert")
    prompt = RunConfig(method="prompt_tuning").resolved("gpt2")
    assert ia3.r is None and ia3.alpha is None and ia3.learning_rate == pytest.approx(10 * lora.learning_rate)
    assert prompt.num_virtual_tokens == 20 and prompt.target_modules is None and prompt.r is None
    assert RunConfig(method="vera").resolved("bert").r == 256
    assert RunConfig(method="dora").output_dir.endswith("-dora")


def _cli_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("extra, expected", [
    pytest.param(["--method", "lorax"], "use one of lora, dora", id="unknown-method"),
    pytest.param(["--method", "ia3", "--r", "4"], "r is not an option of method ia3", id="rank-with-ia3"),
    pytest.param(["--method", "lora", "--num_virtual_tokens", "8"], "num_virtual_tokens is not an option",
                 id="virtual-tokens-with-lora"),
    pytest.param(["--method", "loha"], "its layers are Conv1D", id="loha-on-gpt2"),
    pytest.param(["--method", "prompt_tuning", "--num_virtual_tokens", "200"], "exceeds the model's 256 positions",
                 id="too-many-virtual-tokens"),
    pytest.param(["--method", "qlora"], "qlora needs", id="qlora-without-cuda-or-bitsandbytes",
                 marks=pytest.mark.skipif(QLORA_PROBLEM is None, reason="this machine has CUDA and bitsandbytes")),
    pytest.param(["--early_stopping_patience", "2"], "needs a metric to watch", id="patience-without-metric"),
    pytest.param(["--metric_for_best", "loss"], "use accuracy, exact_match, f1", id="unknown-best-metric"),
    pytest.param(["--metric-for-best", "accuracy", "--no-validation"], "drop --no-validation", id="best-without-validation"),
])
def test_method_refusals(extra, expected, tiny_gpt2, rt_dir, in_tmp, capsys):
    err = _cli_error(capsys, ["run", "--model", str(tiny_gpt2), "--data_dir", str(rt_dir), *extra])
    assert expected in err
    assert not (in_tmp / "saved_adapters").exists() and not (in_tmp / "runs").exists()  # refused before any work


def test_prefix_tuning_refused_where_the_classifier_takes_no_cache(tiny_bert, rt_dir, in_tmp, capsys):
    err = _cli_error(capsys, ["run", "--model", str(tiny_bert), "--data_dir", str(rt_dir), "--method", "prefix_tuning",
                              "--max_length", "64"])
    assert "takes no past_key_values" in err and "use prompt_tuning or p_tuning" in err


def _validation_accuracy(adapter_dir, rt_dir, cfg) -> float:
    from peft_helpers.metrics import classification_metrics

    model, tokenizer, _ = load_adapter(adapter_dir, device="cpu")
    data = subsample(load_rotten_tomatoes(rt_dir), cfg.train_size, cfg.eval_size, cfg.seed)
    validation = tokenize(data, tokenizer, cfg.max_length)["validation"]
    logits = predict_logits(model, tokenizer, validation, batch_size=8)
    return classification_metrics(np.asarray(validation["label"]), logits.argmax(-1))["accuracy"]


def test_best_checkpoint_is_the_saved_adapter(tiny_gpt2, rt_dir, tmp_path):
    cfg = method_config(tiny_gpt2, rt_dir, "lora", tmp_path, epochs=3, save_steps=2, learning_rate=5e-3,
                        metric_for_best="accuracy")
    best = run(cfg)["best_checkpoint"]
    evals = [e for e in run_log(cfg) if "eval_accuracy" in e]
    assert len(evals) == 6 and best["value"] == max(e["eval_accuracy"] for e in evals)  # steps 2, 4, ..., 12
    assert best["step"] in [e["step"] for e in evals if e["eval_accuracy"] == best["value"]]
    assert best["epoch"] is not None and best["stopped_at_step"] == best["planned_steps"] == 12
    assert _validation_accuracy(cfg.output_dir, rt_dir, cfg) == pytest.approx(best["value"], abs=1e-9)


def run_log(cfg) -> list[dict]:
    import json
    from pathlib import Path

    return json.loads((Path(cfg.output_dir) / "results.json").read_text())["learning_curve"]


def test_early_stopping_stops_when_validation_stops_improving(tiny_gpt2, rt_dir, tmp_path):
    # A learning rate too small to change any prediction: validation accuracy is flat, so with patience 1 the
    # second evaluation ends training.
    cfg = method_config(tiny_gpt2, rt_dir, "lora", tmp_path, epochs=3, save_steps=2, learning_rate=1e-9,
                        metric_for_best="accuracy", early_stopping_patience=1)
    best = run(cfg)["best_checkpoint"]
    assert best["stopped_at_step"] == 4 < best["planned_steps"] == 12 and best["step"] == 2


def test_export_refuses_a_qlora_adapter_before_loading_it(tiny_bert, rt_dir, tmp_path, capsys):
    """A QLoRA adapter was trained against the 4-bit base: merged into either the 4-bit or the full weights it
    would predict differently. (Here a LoRA adapter recorded as qlora: this machine may have no GPU.)"""
    import json

    cfg = method_config(tiny_bert, rt_dir, "lora", tmp_path)
    run(cfg)
    metadata_file = tmp_path / "adapter" / "peft_helpers.json"
    metadata = json.loads(metadata_file.read_text())
    metadata["config"]["method"] = "qlora"
    metadata_file.write_text(json.dumps(metadata))
    capsys.readouterr()  # the run's own output
    err = _cli_error(capsys, ["export", str(tmp_path / "adapter"), str(tmp_path / "merged"), "--merge"])
    assert "qlora adapter" in err and "share the adapter folder itself" in err
    assert not (tmp_path / "merged").exists()
