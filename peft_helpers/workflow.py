"""The whole workflow in one function: data -> baseline -> LoRA training -> save -> reload -> evaluate -> compare.

The notebook runs the same steps one cell at a time; this is what the command line calls.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datasets import DatasetDict
from transformers import PreTrainedModel, PreTrainedTokenizerBase, set_seed

from .config import RunConfig
from .data import label_names, load_data, subsample, tokenize
from .modeling import count_parameters, create_lora_model, load_config, load_model
from .offline import offline_model_name
from .persistence import base_model_metadata, check_can_save, load_adapter, make_shareable, save_adapter, versions
from .reporting import format_comparison, learning_curve
from .training import device_summary, evaluate, remove_checkpoints, train

RESULTS_FILE = "results.json"


def dataset_name(cfg: RunConfig) -> str:
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


@dataclass
class Prepared:
    """Everything a run starts from."""

    cfg: RunConfig  # with the architecture's tuned defaults filled in
    data: DatasetDict  # text and labels, subset as configured
    encoded: DatasetDict  # the same rows, tokenized
    model: PreTrainedModel  # pretrained body with a new, seeded classification head
    tokenizer: PreTrainedTokenizerBase
    label_names: list[str]


def prepare(cfg: RunConfig, device: str | None = None) -> Prepared:
    """Load and subset the data, load the model for its labels, resolve the tuned settings, tokenize."""
    data = subsample(load_data(cfg.data_dir, cfg.text_column, cfg.label_column, cfg.seed), cfg.train_size, cfg.eval_size, cfg.seed)
    names = label_names(data)
    model, tokenizer = load_model(cfg.model, names, cfg.seed, cfg.max_length, device=device)
    cfg = cfg.resolved(model.config.model_type)
    return Prepared(cfg, data, tokenize(data, tokenizer, cfg.max_length), model, tokenizer, names)


def run(cfg: RunConfig, overwrite: bool = False, resume: bool = False, results_path: str | None = None) -> dict:
    """Run every step and return the results dict (also written to <output_dir>/results.json)."""
    check_can_save(cfg.output_dir, overwrite or resume)  # fail before training, not after it
    load_config(cfg.model)  # a bad model name fails here, before data is read
    set_seed(cfg.seed)
    print(f"Device: {device_summary()}")
    p = prepare(cfg)
    cfg, data, encoded, model, tokenizer, names = p.cfg, p.data, p.encoded, p.model, p.tokenizer, p.label_names
    print(f"Data: {dataset_name(cfg)}: " + ", ".join(f"{s} {len(d):,}" for s, d in data.items()) + f"; labels {names}")
    print(f"Settings: epochs={cfg.epochs:g}, learning_rate={cfg.learning_rate:g}, r={cfg.r}, alpha={cfg.alpha}, "
          f"target_modules={cfg.target_modules or 'default'}")

    baseline = evaluate(model, tokenizer, encoded["test"], cfg.batch_size, desc="Evaluating pretrained")
    print(f"Pretrained accuracy on test: {baseline.metrics['accuracy']:.4f}")

    peft_model = create_lora_model(model, cfg)
    params = count_parameters(peft_model)
    print(params)
    trained = train(peft_model, tokenizer, encoded, cfg, resume=resume, fresh=overwrite)
    in_memory = evaluate(peft_model, tokenizer, encoded["test"], cfg.batch_size, desc="Evaluating fine-tuned")

    metadata = {
        **base_model_metadata(peft_model, portable_model_name(cfg.model), names),
        "config": cfg.to_dict(),
        "metrics": {"baseline": baseline.metrics, "finetuned": in_memory.metrics},
    }
    adapter_dir = save_adapter(peft_model, tokenizer, cfg.output_dir, metadata, overwrite=overwrite or resume)
    remove_checkpoints(cfg)
    print(f"Adapter saved to {adapter_dir}")

    reloaded, reloaded_tokenizer, _ = load_adapter(adapter_dir)
    finetuned = evaluate(reloaded, reloaded_tokenizer, encoded["test"], cfg.batch_size, desc="Evaluating reloaded")
    max_diff = float(np.abs(finetuned.logits - in_memory.logits).max())
    if max_diff > 1e-4:
        raise RuntimeError(f"the reloaded adapter's logits differ from the trained model's by {max_diff:g}")

    results = {
        "model": cfg.model,
        "dataset": dataset_name(cfg),
        "eval_split": "test",
        "train_size": len(data["train"]),
        "eval_size": len(data["test"]),
        "label_names": names,
        "baseline": baseline.metrics,
        "finetuned": finetuned.metrics,
        "trainable_params": params.trainable,
        "total_params": params.total,
        "train_seconds": round(trained.seconds, 2),
        "train_samples_per_second": round(trained.samples_per_second, 2),
        "eval_samples_per_second": round(finetuned.samples_per_second, 2),
        "reload_max_logit_diff": max_diff,
        "adapter_dir": str(adapter_dir),
        "device": device_summary(),
        "seed": cfg.seed,
        "versions": versions(),
        "config": cfg.to_dict(),
        "learning_curve": learning_curve(trained.log_history),
    }
    write_json(Path(adapter_dir) / RESULTS_FILE, results)
    if results_path:
        write_json(results_path, results)
    print()
    print(format_comparison(baseline.metrics, finetuned.metrics))
    print(
        f"\nTrained {params.trainable:,} of {params.total:,} parameters ({params.percent:.2f}%) in "
        f"{trained.seconds:.1f} s; adapter and {RESULTS_FILE} in {adapter_dir}"
    )
    return results
