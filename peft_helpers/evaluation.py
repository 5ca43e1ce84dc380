"""Evaluation: logits on length-sorted batches, metrics, and the reload check. Imports nothing from training, so
inference (predict) and loading do not pull in the Trainer set-up."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import numpy as np
import torch
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import DataCollatorWithPadding

from .errors import UserError, batch_size_advice
from .metrics import classification_metrics

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


def eval_autocast(precision: str, device_type: str):
    """The context of an evaluation in `precision` (RunConfig.eval_precision): bf16 autocast for "bf16" (matrix
    products in bf16, which CPUs with AMX and most GPUs run several times faster than fp32; softmax, layer norm and
    the loss stay fp32), nothing for "fp32"."""
    if precision == "bf16":
        return torch.autocast(device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _mergeable_lora_adapters(module) -> list[str]:
    """The active adapters of a plain LoRA linear layer (peft's lora.Linear, a torch Linear or GPT-2's Conv1D
    underneath) that lora_merged can fold into its weight: not DoRA or another variant, no LoRA bias, adapters on
    and not merged already, fp32/bf16/fp16 weights on a CPU. Anything else (quantised bases, other methods) is
    left to run unmerged."""
    from peft.tuners.lora import Linear as LoraLinear

    if not isinstance(module, LoraLinear) or module.disable_adapters or module.merged:
        return []
    weight = module.get_base_layer().weight
    if weight.device.type != "cpu" or not weight.dtype.is_floating_point:
        return []
    names = [a for a in module.active_adapters if a in module.lora_A]
    plain = all(
        not getattr(module, "use_dora", {}).get(a, False)  # how older peft marks DoRA
        and a not in getattr(module, "lora_variant", {})  # DoRA and other variants since peft's refactor (#2443)
        and not getattr(module, "lora_bias", {}).get(a, False)  # a LoRA bias (peft 0.14 on) would need merging too
        for a in names
    )
    return names if plain else []


@contextlib.contextmanager
def lora_merged(model):
    """Evaluate a LoRA model with each adapter folded into its layer's weight, W + scaling * B A, so that a forward
    pass is the base model's products alone, without the adapter's two small products, its scaling and its add
    per layer. In BENCHMARKS.md (eval_merge.py) that made evaluation 1.07x faster in the median pair on the emulated
    slow CPU, and no measurable difference on a 2-core host; it never changed a prediction.

    Unlike peft's merge_adapter()/unmerge_adapter(), which add the update to the weight and subtract it again
    (the weight then differs from the trained one by rounding), the merged weight is a new tensor and the
    original tensor object is put back untouched on exit, even after an error: the model leaves bit for bit as it
    came. The merged copies cost the adapted weights' memory once more while the context lasts, which is why only
    CPU weights are merged (on a GPU that copy could be what no longer fits; not measured there)."""
    restored = []
    try:
        with torch.no_grad():
            for module in model.modules():
                names = _mergeable_lora_adapters(module)
                if not names:
                    continue
                weight = module.get_base_layer().weight
                original = weight.data
                merged = original.clone()
                for name in names:
                    merged += module.get_delta_weight(name).to(merged.dtype)
                weight.data = merged
                module.merged_adapters.extend(names)  # peft's forward then runs the base layer only
                restored.append((module, weight, original))
        yield model
    finally:
        for module, weight, original in restored:
            weight.data = original
            module.merged_adapters.clear()


@torch.inference_mode()
def predict_logits(model, tokenizer, dataset: Dataset, batch_size: int = 32, desc: str = "Predicting",
                   batch_size_flag: str = "--batch-size", precision: str = "fp32") -> np.ndarray:
    """Logits for every row, computed on length-sorted batches (almost no padding) and returned in the
    dataset's original order, with LoRA adapters folded into the weights while it runs (lora_merged). Running out of
    memory ends in one line naming `batch_size_flag` with a smaller value.
    precision "bf16" runs the model under bf16 autocast (RunConfig.eval_precision; the logits come back as float32)."""
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
    autocast = eval_autocast(precision, device.type)
    with batch_size_advice(batch_size, "evaluation", batch_size_flag), autocast, lora_merged(model):
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
             batch_size_flag: str = "--eval-batch-size", precision: str = "fp32") -> EvalResult:
    """Accuracy, macro precision/recall/F1 and the confusion matrix of `model` on a tokenized split (a run's
    evaluations: on running out of memory, the advice names `--eval-batch-size`), in fp32 or under bf16 autocast."""
    start = time.perf_counter()
    logits = predict_logits(model, tokenizer, dataset, batch_size, desc, batch_size_flag, precision)
    seconds = time.perf_counter() - start
    labels = np.array(dataset["label"])
    predictions = logits.argmax(-1)
    metrics = classification_metrics(labels, predictions, num_labels=logits.shape[-1])
    return EvalResult(metrics, logits, predictions, labels, seconds)


def check_reload(reloaded: EvalResult, in_memory: EvalResult, tolerance: float = RELOAD_TOLERANCE) -> float:
    """The largest logit difference between a reloaded adapter and the model it was saved from; raises if it
    exceeds `tolerance` (the saved adapter would not be the trained model)."""
    difference = float(np.abs(reloaded.logits - in_memory.logits).max())
    if difference > tolerance:
        raise RuntimeError(f"the reloaded adapter's logits differ from the trained model's by {difference:g} "
                           f"(more than {tolerance:g}): the saved adapter is not the trained model")
    return difference
