"""The whole workflow as short named steps: resolve -> check -> prepare -> baseline -> add the PEFT method -> train -> save ->
reload and check -> report. `run` chains them for the command line; the notebook runs the same steps one cell
at a time, spelling out the transformers and peft calls.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from datasets import DatasetDict
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, set_seed

from . import distributed
from .config import RunConfig
from .data import PROBLEMS, label_names, load_run_data, problem_of, tokenize, truncation_summary
from .errors import UserError
from .evaluation import EvalResult, check_reload, evaluate
from .metrics import DEFAULT_THRESHOLD, PROBLEM_METRICS, per_class_metrics, tune_threshold
from .modeling import (
    ParameterCount,
    check_method_before_loading,
    count_parameters,
    create_peft_model,
    load_config,
    load_model,
)
from .offline import hub_id, offline_model_name
from .persistence import (
    base_model_metadata,
    check_can_save,
    check_loaded,
    load_adapter,
    make_shareable,
    recover_interrupted_save,
    saving,
    versions,
)
from .reporting import (
    confident_mistakes,
    format_comparison,
    label_balance,
    learning_curve,
    per_class_table,
    plot_regression,
)
from .training import (
    TrainResult,
    compile_problem,
    device_summary,
    initial_adapter_dir,
    prepare_checkpoints,
    remove_checkpoints,
    train,
)

RESULTS_FILE = "results.json"
# The TrainingArguments that decide what a run computes; recorded with the adapter, so runs from the notebook and
# the command line can be compared (tests/test_notebook.py does).
TRAINING_KEYS = ("learning_rate", "num_train_epochs", "per_device_train_batch_size", "per_device_eval_batch_size",
                 "warmup_steps", "lr_scheduler_type", "weight_decay", "seed", "data_seed", "length_column_name",
                 "eval_strategy", "eval_steps", "bf16", "fp16")


def dataset_name(cfg: RunConfig) -> str:
    if cfg.dataset is not None:
        return cfg.dataset + (f" ({cfg.dataset_config})" if cfg.dataset_config else "")
    return "rotten_tomatoes (Hugging Face Hub)" if cfg.data_dir is None else str(cfg.data_dir)


def portable_model_name(model: str) -> str:
    """How the base model is recorded with an adapter: a packaged model by its public Hub id (never a path inside
    this machine's virtual environment), a Hub id as given, a local folder by its absolute path."""
    if offline_model_name(model) or not Path(model).expanduser().exists():
        return hub_id(model)
    return str(Path(model).expanduser().resolve())


def write_json(path: str | Path, payload: dict) -> Path:
    """Write via a temporary file and rename, so a results file is never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=2, default=str)
    make_shareable(tmp)
    os.replace(tmp, path)
    return path


def resolve(cfg: RunConfig) -> RunConfig:
    """Fill in the settings tuned for the model's architecture and the method, and refuse a method that does not
    fit the architecture, reading only its config.json (no weights). With compile, check that torch.compile
    works here; where it does not, warn in one line and train without it."""
    cfg = cfg if cfg.is_resolved() else cfg.resolved(load_config(cfg.model).model_type)
    check_method_before_loading(cfg)
    if cfg.compile and (problem := compile_problem()):
        print(f"warning: torch.compile does not work here ({problem}); training without it.", file=sys.stderr)
        cfg = replace(cfg, compile=False)
    return cfg


def check_before_work(cfg: RunConfig, overwrite: bool, resume: bool) -> str | None:
    """Every refusal that does not need the data or the weights, before anything slow: an adapter already in
    output_dir (only --overwrite replaces it; --resume never does), checkpoints of an interrupted run (--resume
    continues them if the settings match, --overwrite deletes them). Returns the checkpoint to resume from."""
    recover_interrupted_save(cfg.output_dir)
    check_can_save(cfg.output_dir, overwrite)
    return prepare_checkpoints(cfg, resume=resume, fresh=overwrite and not resume)


@dataclass
class Prepared:
    """Everything a run starts from."""

    cfg: RunConfig  # resolved: the architecture's tuned defaults filled in
    data: DatasetDict  # text and labels, subset as configured
    encoded: DatasetDict  # the same rows, tokenized
    model: PreTrainedModel  # pretrained body with a new, seeded classification head
    tokenizer: PreTrainedTokenizerBase
    label_names: list[str]
    problem: str = "single-label"  # data.PROBLEMS
    threshold: float = 0.5  # multi-label: tuned on the validation split after training (tune_decision_threshold)
    target_scaling: dict | None = None  # regression with scale_targets: the train split's mean and std

    def evaluate_test(self, model, desc: str, tokenizer: PreTrainedTokenizerBase | None = None) -> EvalResult:
        """`model` on the run's test split, in its evaluation batch size (every test pass of a run
        and of a baseline goes through here, so they are scored alike)."""
        return evaluate(model, tokenizer or self.tokenizer, self.encoded["test"], self.cfg.eval_batch_size, desc=desc,
                        threshold=self.threshold)

    @property
    def headline(self) -> str:
        """The metric a run is judged by: accuracy, the Jaccard index (multi-label) or Pearson (regression)."""
        return PROBLEM_METRICS[self.problem][0]


def prepare(cfg: RunConfig, device: str | None = None) -> Prepared:
    """Resolve the settings (once), load and subset the data, load the model for its labels, tokenize."""
    cfg = resolve(cfg)
    data = load_run_data(cfg)
    names, problem = label_names(data), problem_of(data["train"])
    check_problem_settings(cfg, problem)
    model, tokenizer = load_model(cfg.model, names, cfg.seed, cfg.max_length, device=device, method=cfg.method,
                                  model_dropout=cfg.model_dropout, problem=problem)
    encoded = tokenize(data, tokenizer, cfg.max_length, cfg.truncation)
    p = Prepared(cfg, data, encoded, model, tokenizer, names, problem)
    if cfg.scale_targets and problem == "regression":
        standardize_targets(p)
    return p


def standardize_targets(p: Prepared) -> None:
    """scale_targets: train and validate on (y - mean) / std of the train split's targets, so that a new head whose
    outputs start near 0 with unit spread meets targets of that scale (STS-B's 0-5 scores with MiniLM and LoRA, 2,000
    pairs: Pearson 0.06 on raw targets, where training settles on the mean, 0.81 standardized). A head without a bias
    (GPT-2's, Llama's `score`) cannot put the mean back: its targets are only divided by std. The test split keeps
    its own scale: fold_target_scaling puts the model back on it after training, before any test evaluation."""
    from .methods import head_name

    labels = np.asarray(p.encoded["train"]["label"], dtype=np.float64)
    has_bias = getattr(getattr(p.model, head_name(p.model)), "bias", None) is not None
    mean, std = float(labels.mean()) if has_bias else 0.0, float(labels.std())
    p.target_scaling = {"mean": mean, "std": std}
    for split in ("train", "validation"):
        p.encoded[split] = p.encoded[split].map(lambda row: {"label": (row["label"] - mean) / std},
                                                desc=f"Scaling {split} targets")
    print(f"Regression targets scaled for training: (y - {mean:.4g}) / {std:.4g} (train split; --no-scale-targets: "
          "raw)")


def fold_target_scaling(p: Prepared, peft_model) -> None:
    """Put a model trained on standardized targets back on their scale: the head's weight times std, its bias
    times std plus the mean (the trained copy peft saves, modules_to_save), so every loader predicts original
    values with no extra step."""
    if p.target_scaling is None:
        return
    import torch

    from .methods import head_name

    base = peft_model.get_base_model() if hasattr(peft_model, "get_base_model") else peft_model  # baselines: plain
    head = getattr(base, head_name(base))
    head = head.modules_to_save[peft_model.active_adapter] if hasattr(head, "modules_to_save") else head
    with torch.no_grad():
        head.weight.mul_(p.target_scaling["std"])
        if head.bias is not None:
            head.bias.mul_(p.target_scaling["std"]).add_(p.target_scaling["mean"])


def check_problem_settings(cfg: RunConfig, problem: str) -> None:
    """Settings that only fit one problem, refused once the data has told which problem it is."""
    if cfg.metric_for_best is not None and cfg.metric_for_best not in PROBLEM_METRICS[problem]:
        raise UserError(f"metric_for_best={cfg.metric_for_best!r} is not a {problem} metric: use one of "
                        f"{', '.join(PROBLEM_METRICS[problem])}.")
    if cfg.class_weights is not None and problem != "single-label":
        raise UserError(f"class_weights weighs the classes of single-label data; this data is {problem}: leave it out.")


def tune_decision_threshold(p: Prepared, model) -> None:
    """Multi-label: the decision threshold with the best Jaccard index on the validation split (never the test
    split), used for the test scores and saved with the adapter for predictions."""
    if p.problem != "multi-label":
        return
    validation = evaluate(model, p.tokenizer, p.encoded["validation"], p.cfg.eval_batch_size,
                          desc="Tuning the threshold")
    p.threshold = tune_threshold(validation.logits, validation.labels)
    print(f"Decision threshold {p.threshold:.2f} (one for every label, best Jaccard on validation)")


def describe(p: Prepared) -> None:
    """What the run works on: splits, label balance, what max_length cuts, the settings."""
    cfg = p.cfg
    print(f"Data: {dataset_name(cfg)}: " + ", ".join(f"{s} {len(d):,}" for s, d in p.data.items()) + f"; labels {p.label_names}")
    print(label_balance(p.data).to_string())
    cut = truncation_summary(p.data, p.tokenizer, cfg.max_length)
    print(f"max_length {cfg.max_length} ({cfg.truncation} kept) truncates " + ", ".join(
        f"{split} {int(row['truncated']):,} of {int(row['examples']):,}" for split, row in cut.iterrows())
        + f"; longest text {int(cut['longest'].max())} tokens")
    options = ", ".join(f"{k}={getattr(cfg, k)}" for k in ("r", "alpha", "dropout", "num_virtual_tokens")
                        if getattr(cfg, k) is not None)
    print(f"Settings: method={cfg.method}, epochs={cfg.epochs:g}, learning_rate={cfg.learning_rate:g}"
          + (f", {options}" if options else "")
          + ("" if cfg.num_virtual_tokens else f", target_modules={cfg.target_modules or 'default'}")
          + ("" if cfg.layers is None else f", layers={cfg.layers}")
          + ("" if cfg.model_dropout is None else f", model_dropout={cfg.model_dropout:g}"))


def training_record(trainer: Trainer) -> dict:
    """The training arguments that matter, and how batches are made (trainer and collator classes)."""
    args = trainer.args.to_dict()
    return {**{k: args[k] for k in TRAINING_KEYS}, "trainer": type(trainer).__name__,
            "data_collator": type(trainer.data_collator).__name__}


def adapter_metadata(peft_model, cfg: RunConfig, names: list[str], trainer: Trainer, baseline: dict,
                     finetuned: dict, threshold: float | None = None) -> dict:
    """What save_adapter writes to peft_helpers.json (the notebook calls this too): with the problem the head
    solves and, for multi-label, the decision threshold predictions use."""
    problem = {v: k for k, v in PROBLEMS.items()}.get(peft_model.config.problem_type, "single-label")
    return {
        **base_model_metadata(peft_model, portable_model_name(cfg.model), names),
        "problem": problem,
        **({"threshold": threshold if threshold is not None else DEFAULT_THRESHOLD} if problem == "multi-label" else {}),
        "config": cfg.to_dict(),
        "training_arguments": training_record(trainer),
        "metrics": {"baseline": baseline, "finetuned": finetuned},
    }


def add_adapter(p: Prepared):
    """Wrap the model with the run's PEFT method (AdaLoRA's schedule needs the run's optimizer steps)."""
    return create_peft_model(p.model, p.cfg, p.cfg.total_steps(len(p.encoded["train"])))


@contextlib.contextmanager
def saving_run(cfg: RunConfig, peft_model, label_names: list[str], trainer: Trainer, baseline: dict, finetuned: dict,
               overwrite: bool = False, best: dict | None = None, threshold: float | None = None,
               target_scaling: dict | None = None):
    """persistence.saving with the run's metadata (peft_helpers.json: base model and its identity, labels,
    settings, training arguments, metrics) and PiSSA's untrained adapter; the block saves with peft's and the
    tokenizer's save_pretrained into the folder it is given. Removes the checkpoints once the adapter is in place."""
    metadata = adapter_metadata(peft_model, cfg, label_names, trainer, baseline, finetuned, threshold)
    if best is not None:
        metadata["best_checkpoint"] = best
    if target_scaling is not None:  # the head was rescaled after training: it predicts the original scale
        metadata["target_scaling"] = target_scaling
    with saving(cfg.output_dir, peft_model, metadata, overwrite, initial_adapter_dir(cfg)) as folder:
        yield folder
    remove_checkpoints(cfg)


def save(p: Prepared, peft_model, trained: TrainResult, baseline: EvalResult, in_memory: EvalResult,
         overwrite: bool) -> Path:
    with saving_run(p.cfg, peft_model, p.label_names, trained.trainer, baseline.metrics, in_memory.metrics,
                    overwrite, trained.best, p.threshold, p.target_scaling) as folder:
        peft_model.save_pretrained(folder)
        p.tokenizer.save_pretrained(folder)
    print(f"Adapter saved to {p.cfg.output_dir}")
    return Path(p.cfg.output_dir)


def verify_reload(reloaded, tokenizer, adapter_dir: str | Path, finetuned: EvalResult, in_memory: EvalResult) -> float:
    """What peft's loaders do not check about a reloaded adapter (persistence.check_loaded: the recorded base and
    labels, every saved tensor in place, the pad token), and that it reproduces the trained model's logits on the
    test split. Returns the largest logit difference."""
    check_loaded(reloaded, tokenizer, adapter_dir)
    return check_reload(finetuned, in_memory)


def reload_and_check(adapter_dir: Path, p: Prepared, in_memory: EvalResult) -> tuple[EvalResult, float]:
    """Load the saved adapter from disk as a user would and evaluate it; it must reproduce the trained model."""
    reloaded, reloaded_tokenizer, _ = load_adapter(adapter_dir)
    finetuned = p.evaluate_test(reloaded, "Evaluating reloaded", reloaded_tokenizer)
    return finetuned, check_reload(finetuned, in_memory)


def results_dict(p: Prepared, baseline: EvalResult, finetuned: EvalResult, params: ParameterCount,
                 trained: TrainResult, max_diff: float, adapter_dir: Path) -> dict:
    cfg = p.cfg
    return {
        "model": cfg.model,
        "method": cfg.method,
        "dataset": dataset_name(cfg),
        "eval_split": "test",
        "train_size": len(p.data["train"]),
        "eval_size": len(p.data["test"]),
        "label_names": p.label_names,
        "problem": p.problem,
        **({"threshold": p.threshold} if p.problem == "multi-label" else {}),
        **({"target_scaling": p.target_scaling} if p.target_scaling else {}),
        "baseline": baseline.metrics,
        "finetuned": finetuned.metrics,
        "trainable_params": params.trainable,
        "total_params": params.total,
        "adapter_mib": round(folder_mib(adapter_dir), 3),
        "peak_memory_mib": peak_memory_mib(),
        "best_checkpoint": trained.best,
        "train_seconds": round(trained.seconds, 2),
        "train_samples_per_second": round(trained.samples_per_second, 2),
        "eval_samples_per_second": round(finetuned.samples_per_second, 2),
        "reload_max_logit_diff": max_diff,
        "adapter_dir": str(adapter_dir),
        "device": device_summary(cfg.precision),
        "processes": distributed.world_size(),
        "seed": cfg.seed,
        "versions": versions(),
        "config": cfg.to_dict(),
        "training_arguments": training_record(trained.trainer),
        "per_class": (per_class_metrics(finetuned.labels, finetuned.predictions, p.label_names)
                      if p.problem == "single-label" else finetuned.metrics.get("per_label", [])),
        "confident_mistakes": confident_mistakes(list(p.data["test"]["text"]), finetuned.labels, finetuned.logits,
                                                 p.label_names).to_dict("records") if p.problem == "single-label" else [],
        "learning_curve": learning_curve(trained.log_history),
    }


def folder_mib(folder: str | Path) -> float:
    """The adapter's weights on disk (the tokenizer and reports beside them are not counted)."""
    return sum(f.stat().st_size for f in Path(folder).glob("*.safetensors")) / 2**20


def peak_memory_mib() -> dict:
    """Peak memory of this process so far: resident set (CPU) and, on a GPU, the most the PyTorch allocator held."""
    import torch

    try:
        import resource  # Unix only
    except ImportError:
        peak = {}
    else:
        unit = 2**20 if sys.platform == "darwin" else 1024  # macOS reports bytes, Linux KiB
        peak = {"rss": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / unit, 1)}
    if torch.cuda.is_available():
        peak["gpu"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return peak


def report(results: dict, trained: TrainResult, params: ParameterCount, baseline: EvalResult,
           finetuned: EvalResult) -> None:
    print()
    print(format_comparison(baseline.metrics, finetuned.metrics))
    if results["per_class"]:
        print(f"\nPer {'class' if results['problem'] == 'single-label' else 'label'} (fine-tuned, test split):")
        print(per_class_table(results["per_class"]).to_string(float_format="{:.3f}".format))
    mistakes = results["confident_mistakes"][:3]
    if mistakes:
        print("\nMost confident mistakes:")
        for m in mistakes:
            print(f"  {m['probability']:.2f} {m['predicted']} (true {m['true']}): {m['text'][:100]}")
    print(
        (f"\nKept the adapter of step {trained.best['step']} (epoch {trained.best['epoch']}): validation "
         f"{trained.best['metric']} {trained.best['value']:.4f}" if trained.best else "")
        + f"\nTrained {params.trainable:,} of {params.total:,} parameters ({params.percent:.2f}%) in "
        f"{trained.seconds:.1f} s; adapter and {RESULTS_FILE} in {results['adapter_dir']}"
    )


def finish(p: Prepared, peft_model, trained: TrainResult, baseline: EvalResult, params: ParameterCount,
           overwrite: bool, results_path: str | None) -> dict:
    """After training: evaluate, save, reload and check, write and print the results (the main process's part)."""
    tune_decision_threshold(p, peft_model)
    fold_target_scaling(p, peft_model)
    in_memory = p.evaluate_test(peft_model, "Evaluating fine-tuned")
    adapter_dir = save(p, peft_model, trained, baseline, in_memory, overwrite)
    finetuned, max_diff = reload_and_check(adapter_dir, p, in_memory)
    results = results_dict(p, baseline, finetuned, params, trained, max_diff, adapter_dir)
    write_json(Path(adapter_dir) / RESULTS_FILE, results)
    if p.problem == "regression":  # predicted against true, beside results.json
        import matplotlib.pyplot as plt

        figure = plot_regression(finetuned.labels, finetuned.predictions, p.cfg.method)
        figure.savefig(Path(adapter_dir) / "scatter.png", dpi=110)
        plt.close(figure)
    if results_path:
        write_json(results_path, results)
    report(results, trained, params, baseline, finetuned)
    return results


def check_launch(p: Prepared) -> None:
    """With several processes: refuse, before training, processes that loaded different data or settings."""
    if distributed.is_distributed():
        # the settings without the data's path (nodes may mount the same files elsewhere): the rows are compared
        settings = {k: v for k, v in p.cfg.run_identity().items() if k != "data_dir"}
        distributed.check_same_data(distributed.data_fingerprint(settings, p.encoded),
                                    {split: len(rows) for split, rows in p.encoded.items()})
        print(f"{distributed.world_size()} processes, the same data on each; global batch "
              f"{p.cfg.batch_size * distributed.world_size()} ({p.cfg.batch_size} per process)")


def run(cfg: RunConfig, overwrite: bool = False, resume: bool = False, results_path: str | None = None) -> dict:
    """Run every step and return the results dict (also written to <output_dir>/results.json).

    Launched as several processes (torchrun, accelerate launch; distributed.py), every process trains; the main
    one alone checks and writes files and evaluates on the test split, and every process returns its results."""
    cfg = resolve(cfg)
    distributed.start()
    with distributed.quiet_unless_main():
        resume_from = distributed.on_main(lambda: check_before_work(cfg, overwrite, resume))
        set_seed(cfg.seed)
        print(f"Device: {device_summary(cfg.precision)}")
        with distributed.main_first():
            p = prepare(cfg)
        check_launch(p)
        describe(p)

        baseline = distributed.on_main(lambda: p.evaluate_test(p.model, "Evaluating pretrained"))
        print(f"Pretrained {p.headline} on test: {baseline.metrics[p.headline]:.4f}")

        peft_model = add_adapter(p)
        params = count_parameters(peft_model)
        print(params)
        trained = train(peft_model, p.tokenizer, p.encoded, cfg, resume_from=resume_from)
        results = distributed.on_main(lambda: finish(p, peft_model, trained, baseline, params, overwrite, results_path))
    distributed.stop()
    return results
