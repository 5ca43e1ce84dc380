"""Training with the Hugging Face Trainer, and a length-sorted evaluation that returns predictions in order."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, DatasetDict
from tqdm.auto import tqdm
from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices

from .config import RunConfig
from .errors import UserError
from .metrics import classification_metrics, compute_metrics
from .modeling import default_device


def device_summary() -> str:
    """What the run will use, in words, for the notebook and the results file."""
    device = default_device()
    if device == "cuda":
        name = torch.cuda.get_device_name(0)
        return f"cuda ({name}, {'bf16' if torch.cuda.is_bf16_supported() else 'fp16'} mixed precision)"
    if device == "mps":
        return "mps (Apple GPU, fp32)"
    return f"cpu ({torch.get_num_threads()} threads, fp32)"


def mixed_precision() -> dict:
    """bf16/fp16 only where the hardware has it; CPU and MPS train in fp32."""
    if default_device() != "cuda":
        return {}
    return {"bf16": True} if torch.cuda.is_bf16_supported() else {"fp16": True}


class SeededLengthGroupedSampler(LengthGroupedSampler):
    """Length-grouped batches (little padding) in an order that depends only on (seed, epoch).

    The stock sampler draws from the global RNG, so a run resumed mid-epoch replays a different order than the
    uninterrupted run would have; this one makes resumed and uninterrupted runs identical.
    """

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=lengths)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:  # called by Trainer at the start of every epoch
        self.epoch = int(epoch)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


class LengthGroupedTrainer(Trainer):
    """Trainer whose training batches come from SeededLengthGroupedSampler."""

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
        column = self.args.length_column_name
        # Trainer has already dropped columns the model does not take (such as `length`) at this point.
        lengths = dataset[column] if column in dataset.column_names else [len(ids) for ids in dataset["input_ids"]]
        return SeededLengthGroupedSampler(batch, list(lengths), self.args.data_seed)


class _SaveEachEpoch(TrainerCallback):
    """Checkpoint at every epoch end in addition to every `save_steps` steps."""

    def on_epoch_end(self, args, state, control, **kwargs):
        control.should_save = True
        return control


def training_arguments(cfg: RunConfig) -> TrainingArguments:
    if not cfg.is_resolved():
        raise ValueError("training_arguments needs a resolved config: cfg.resolved(model.config.model_type)")
    return TrainingArguments(
        output_dir=cfg.checkpoint_dir,
        num_train_epochs=cfg.epochs,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=cfg.warmup,  # transformers 5: a float < 1 is a ratio of all steps
        weight_decay=0.01,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        # LengthGroupedTrainer replaces the training sampler; this setting still groups the per-epoch validation.
        train_sampling_strategy="group_by_length",
        length_column_name="length",
        eval_strategy="epoch",
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=2,
        logging_strategy="steps",
        logging_steps=0.05,  # 20 points on the loss curve whatever the run length
        logging_first_step=True,
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to="none",
        use_cpu=default_device() == "cpu",
        disable_tqdm=False,
        **mixed_precision(),
    )


@dataclass
class TrainResult:
    trainer: Trainer
    seconds: float
    samples_per_second: float
    log_history: list[dict]


def checkpoints(folder: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first. Trainer writes trainer_state.json last, so a checkpoint without it
    was cut off mid-save (e.g. the process was killed) and cannot be resumed from."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    return sorted((p for p in found if (p / "trainer_state.json").is_file()), key=lambda p: int(p.name.split("-")[-1]))


def train(model, tokenizer, data: DatasetDict, cfg: RunConfig, resume: bool = False, fresh: bool = False) -> TrainResult:
    """Train on data['train'], evaluating on data['validation'] after each epoch.

    Checkpoints go to cfg.checkpoint_dir. If checkpoints of an interrupted run are there, `resume=True`
    continues from the last one and `fresh=True` deletes them; with neither, nothing is touched and the
    user is asked to choose, so an interrupted run is never thrown away by accident.
    """
    cfg = cfg.resolved(model.config.model_type)
    found = checkpoints(cfg.checkpoint_dir)
    if found and not resume and not fresh:
        raise UserError(
            f"{cfg.checkpoint_dir} holds checkpoints of an interrupted run ({found[-1].name}): pass --resume to "
            "continue it, or --overwrite to start again (this deletes them)."
        )
    if fresh and Path(cfg.checkpoint_dir).exists():
        shutil.rmtree(cfg.checkpoint_dir)
    if resume and not found:
        print(f"No checkpoint in {cfg.checkpoint_dir}: starting from the beginning.")
    last = str(found[-1]) if resume and found else None
    if last:
        print(f"Resuming from {last}")
    trainer = LengthGroupedTrainer(
        model=model,
        args=training_arguments(cfg),
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_metrics,
        callbacks=[_SaveEachEpoch()],
    )
    start = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=last)
    seconds = time.perf_counter() - start
    return TrainResult(trainer, seconds, float(output.metrics.get("train_samples_per_second", 0.0)), trainer.state.log_history)


def remove_checkpoints(cfg: RunConfig) -> None:
    """After the adapter is safely saved the intermediate checkpoints are no longer needed."""
    shutil.rmtree(cfg.checkpoint_dir, ignore_errors=True)


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


@torch.inference_mode()
def predict_logits(model, tokenizer, dataset: Dataset, batch_size: int = 32, desc: str = "Predicting") -> np.ndarray:
    """Logits for every row, computed on length-sorted batches (almost no padding) and returned in the
    dataset's original order."""
    if len(dataset) == 0:
        raise UserError("cannot evaluate an empty dataset.")
    lengths = np.array(dataset["length"]) if "length" in dataset.column_names else np.array(
        [len(ids) for ids in dataset["input_ids"]]
    )
    order = np.argsort(-lengths, kind="stable")  # longest first: an out-of-memory error shows up at once
    features = [c for c in ("input_ids", "attention_mask", "token_type_ids") if c in dataset.column_names]
    rows = dataset.select_columns(features).select(order)
    collator = DataCollatorWithPadding(tokenizer)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    chunks = []
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


def evaluate(model, tokenizer, dataset: Dataset, batch_size: int = 32, desc: str = "Evaluating") -> EvalResult:
    """Accuracy, macro precision/recall/F1 and the confusion matrix of `model` on a tokenized split."""
    start = time.perf_counter()
    logits = predict_logits(model, tokenizer, dataset, batch_size, desc)
    seconds = time.perf_counter() - start
    labels = np.array(dataset["label"])
    predictions = logits.argmax(-1)
    metrics = classification_metrics(labels, predictions, num_labels=logits.shape[-1])
    return EvalResult(metrics, logits, predictions, labels, seconds)
