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

from datasets import DatasetDict
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, set_seed

from . import distributed
from .config import RunConfig
from .data import label_names, load_run_data, tokenize, truncation_summary
from .evaluation import EvalResult, check_reload, evaluate
from .metrics import per_class_metrics
from .modeling import (
    ParameterCount,
    check_method_before_loading,
    count_parameters,
    create_peft_model,
    load_config,
    load_model,
)
from .offline import offline_model_name
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
from .reporting import confident_mistakes, format_comparison, label_balance, learning_curve, per_class_table
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
    """How the base model is recorded in metadata: short names and Hub ids as given, local folders absolute."""
    if offline_model_name(model) or not Path(model).expanduser().exists():
        return model
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

    def evaluate_test(self, model, desc: str, tokenizer: PreTrainedTokenizerBase | None = None) -> EvalResult:
        """`model` on the run's test split, in its evaluation batch size (every test pass of a run
        and of a baseline goes through here, so they are scored alike)."""
        return evaluate(model, tokenizer or self.tokenizer, self.encoded["test"], self.cfg.eval_batch_size, desc=desc)


def prepare(cfg: RunConfig, device: str | None = None) -> Prepared:
    """Resolve the settings (once), load and subset the data, load the model for its labels, tokenize."""
    cfg = resolve(cfg)
    data = load_run_data(cfg)
    names = label_names(data)
    model, tokenizer = load_model(cfg.model, names, cfg.seed, cfg.max_length, device=device, method=cfg.method,
                                  model_dropout=cfg.model_dropout)
    return Prepared(cfg, data, tokenize(data, tokenizer, cfg.max_length, cfg.truncation), model, tokenizer, names)


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
                     finetuned: dict) -> dict:
    """What save_adapter writes to peft_helpers.json (the notebook calls this too)."""
    return {
        **base_model_metadata(peft_model, portable_model_name(cfg.model), names),
        "config": cfg.to_dict(),
        "training_arguments": training_record(trainer),
        "metrics": {"baseline": baseline, "finetuned": finetuned},
    }


def add_adapter(p: Prepared):
    """Wrap the model with the run's PEFT method (AdaLoRA's schedule needs the run's optimizer steps)."""
    return create_peft_model(p.model, p.cfg, p.cfg.total_steps(len(p.encoded["train"])))


@contextlib.contextmanager
def saving_run(cfg: RunConfig, peft_model, label_names: list[str], trainer: Trainer, baseline: dict, finetuned: dict,
               overwrite: bool = False, best: dict | None = None):
    """persistence.saving with the run's metadata (peft_helpers.json: base model and its identity, labels,
    settings, training arguments, metrics) and PiSSA's untrained adapter; the block saves with peft's and the
    tokenizer's save_pretrained into the folder it is given. Removes the checkpoints once the adapter is in place."""
    metadata = adapter_metadata(peft_model, cfg, label_names, trainer, baseline, finetuned)
    if best is not None:
        metadata["best_checkpoint"] = best
    with saving(cfg.output_dir, peft_model, metadata, overwrite, initial_adapter_dir(cfg)) as folder:
        yield folder
    remove_checkpoints(cfg)


def save(p: Prepared, peft_model, trained: TrainResult, baseline: EvalResult, in_memory: EvalResult,
         overwrite: bool) -> Path:
    with saving_run(p.cfg, peft_model, p.label_names, trained.trainer, baseline.metrics, in_memory.metrics,
                    overwrite, trained.best) as folder:
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
        "per_class": per_class_metrics(finetuned.labels, finetuned.predictions, p.label_names),
        "confident_mistakes": confident_mistakes(list(p.data["test"]["text"]), finetuned.labels, finetuned.logits,
                                                 p.label_names).to_dict("records"),
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
    print("\nPer class (fine-tuned, test split):")
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
    in_memory = p.evaluate_test(peft_model, "Evaluating fine-tuned")
    adapter_dir = save(p, peft_model, trained, baseline, in_memory, overwrite)
    finetuned, max_diff = reload_and_check(adapter_dir, p, in_memory)
    results = results_dict(p, baseline, finetuned, params, trained, max_diff, adapter_dir)
    write_json(Path(adapter_dir) / RESULTS_FILE, results)
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
        print(f"Pretrained accuracy on test: {baseline.metrics['accuracy']:.4f}")

        peft_model = add_adapter(p)
        params = count_parameters(peft_model)
        print(params)
        trained = train(peft_model, p.tokenizer, p.encoded, cfg, resume_from=resume_from)
        results = distributed.on_main(lambda: finish(p, peft_model, trained, baseline, params, overwrite, results_path))
    distributed.stop()
    return results
