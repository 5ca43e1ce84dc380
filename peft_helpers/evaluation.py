"""Evaluation: logits on length-sorted batches, metrics, and the reload check. Imports nothing from training, so
inference (predict) and loading do not pull in the Trainer set-up."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import DataCollatorWithPadding

from .errors import UserError, batch_size_advice
from .metrics import DEFAULT_THRESHOLD, score

# A reloaded adapter must reproduce the in-memory model's logits within this (fp32 on CPU gives about 1e-7;
# GPU kernels may pick other algorithms for another batch shape). The command line and the notebook both use it.
RELOAD_TOLERANCE = 1e-4


@dataclass
class EvalResult:
    metrics: dict
    logits: np.ndarray  # (n, num_labels), in the dataset's order
    predictions: np.ndarray
    labels: np.ndarray
    seconds: float

    @property
    def samples_per_second(self) -> float:
        return len(self.labels) / self.seconds if self.seconds else 0.0


def without_autocast(model):
    """Training with bf16/fp16 goes through accelerate, which replaces model.forward with an autocast wrapper that
    stays on the model after training. Evaluating through it scores the in-memory model in bf16 and a reloaded copy
    in fp32: on an H200 the reload check then failed by 0.03 (IA3, MiniLM). Restore the plain forward, so every
    evaluation runs in the weights' own precision (fp32), in memory and reloaded alike."""
    if "_original_forward" in getattr(model, "__dict__", {}):
        from accelerate.utils import extract_model_from_parallel

        extract_model_from_parallel(model, keep_fp32_wrapper=False)  # in place: model.forward is the plain one again
    return model


@torch.inference_mode()
def predict_logits(model, tokenizer, dataset: Dataset, batch_size: int = 32, desc: str = "Predicting",
                   batch_size_flag: str = "--batch-size") -> np.ndarray:
    """Logits for every row, computed by the model's own forward on length-sorted batches (almost no padding) and
    returned in the dataset's original order. Running out of memory ends in one line naming `batch_size_flag`
    with a smaller value."""
    if len(dataset) == 0:
        raise UserError("cannot evaluate an empty dataset.")
    lengths = np.array(dataset["length"]) if "length" in dataset.column_names else np.array(
        [len(ids) for ids in dataset["input_ids"]]
    )
    order = np.argsort(-lengths, kind="stable")  # longest first: an out-of-memory error shows up at once
    features = [c for c in ("input_ids", "attention_mask", "token_type_ids") if c in dataset.column_names]
    rows = dataset.select_columns(features).select(order)
    collator = DataCollatorWithPadding(tokenizer)
    model = without_autocast(model)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    chunks = []
    with batch_size_advice(batch_size, "evaluation", batch_size_flag):
        for start in tqdm(range(0, len(rows), batch_size), desc=desc, unit="batch"):
            columns = rows[start : start + batch_size]
            batch = collator([dict(zip(columns, values)) for values in zip(*columns.values())])
            batch = {k: v.to(device) for k, v in batch.items()}
            chunks.append(model(**batch).logits.float().cpu().numpy())
    model.train(was_training)
    sorted_logits = np.concatenate(chunks)
    logits = np.empty_like(sorted_logits)
    logits[order] = sorted_logits
    return logits


def evaluate(model, tokenizer, dataset: Dataset, batch_size: int = 32, desc: str = "Evaluating",
             batch_size_flag: str = "--eval-batch-size", threshold: float = DEFAULT_THRESHOLD) -> EvalResult:
    """The metrics of `model` on a tokenized split (a run's evaluations: on running out of memory, the advice
    names `--eval-batch-size`): accuracy, macro precision/recall/F1 and the confusion matrix; multi-label: the
    Jaccard index, micro/macro-F1, exact match and per-label scores at `threshold`; regression: Pearson, Spearman,
    MSE and MAE."""
    start = time.perf_counter()
    logits = predict_logits(model, tokenizer, dataset, batch_size, desc, batch_size_flag)
    seconds = time.perf_counter() - start
    labels = np.array(dataset["label"])
    config = model.config
    names = [config.id2label[i] for i in range(logits.shape[-1])]
    metrics, predictions = score(logits, labels, names, threshold)
    return EvalResult(metrics, logits, predictions, labels, seconds)


def check_reload(reloaded: EvalResult, in_memory: EvalResult, tolerance: float = RELOAD_TOLERANCE) -> float:
    """The largest logit difference between a reloaded adapter and the model it was saved from; raises if it
    exceeds `tolerance` (the saved adapter would not be the trained model)."""
    difference = float(np.abs(reloaded.logits - in_memory.logits).max())
    if difference > tolerance:
        raise RuntimeError(f"the reloaded adapter's logits differ from the trained model's by {difference:g} "
                           f"(more than {tolerance:g}): the saved adapter is not the trained model")
    return difference
