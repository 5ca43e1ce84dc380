"""Training with the Hugging Face Trainer: its arguments, a seeded length-grouped sampler, checkpoints that only
the same run may resume. Evaluation lives in evaluation.py."""

from __future__ import annotations

import contextlib
import functools
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from datasets import DatasetDict
from transformers import DataCollatorWithPadding, EarlyStoppingCallback, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices
from transformers.trainer_utils import has_length

from .compat import optimizer_state_loading, rng_state_loading
from .config import RunConfig, log_dir
from .distributed import is_main
from .dropout_masks import draw_sixteen_bit_dropout_masks
from .errors import UserError, batch_size_advice
from .evaluation import eval_autocast
from .metrics import compute_metrics
from .modeling import default_device, freeze_adalora_ranknum

RUN_FILE = "run.json"  # in the checkpoint folder: the settings of the run its checkpoints belong to


def device_summary(precision: str = "auto") -> str:
    """What the run will use, in words, for the notebook and the results file (`precision`: RunConfig's)."""
    device = default_device()
    kind = next(iter(mixed_precision(precision)), None)  # bf16, fp16 or None (fp32)
    if device == "cuda":
        name = torch.cuda.get_device_name(0)
        return f"cuda ({name}, {kind + ' mixed precision' if kind else 'fp32'})"
    if device == "mps":
        return "mps (Apple GPU, fp32)"
    return f"cpu ({torch.get_num_threads()} threads, {kind + ' mixed precision' if kind else 'fp32'})"


def mixed_precision(precision: str = "auto") -> dict:
    """bf16/fp16 mixed precision on a CUDA GPU ("auto": bf16 where it has it, else fp16); bf16 on a CPU only when
    asked for (precision="bf16"; RunConfig refuses it where the CPU has no bf16 units), because "auto" keeps CPU runs
    in fp32, reproducible to the digit. MPS trains in fp32."""
    if precision == "bf16" and default_device() == "cpu":
        return {"bf16": True}
    if precision == "fp32" or default_device() != "cuda":
        return {}
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return {precision: True}


@functools.cache  # once per process: resolve() may run more than once for one run
def compile_problem() -> str | None:
    """Why torch.compile cannot work here, or None: compiles and runs a two-operation function on the training
    device, which fails where the platform lacks what the compiler needs (a C++ compiler for CPU code, Triton for
    CUDA, a Python version this torch's compiler supports) in seconds instead of in the first training step."""
    try:
        double_gelu = torch.compile(lambda x: torch.nn.functional.gelu(x) * 2.0)
        double_gelu(torch.ones(8, device=default_device()))
    except Exception as err:  # InductorError, RuntimeError, BackendCompilerFailed, ...: any means "not here"
        first = (str(err).strip().splitlines() or [""])[0][:200]
        return f"{type(err).__name__}: {first}" if first else type(err).__name__
    return None


def compile_arguments(cfg: RunConfig) -> dict:
    """The Trainer compiles the model itself (torch_compile); workflow.resolve has already turned cfg.compile off,
    with a warning, where compile_problem() found torch.compile unusable."""
    return {"torch_compile": True} if cfg.compile else {}


class SeededLengthGroupedSampler(LengthGroupedSampler):
    """Length-grouped batches (little padding) in an order that depends only on (seed, epoch).

    The stock sampler draws from the global RNG, so a run resumed mid-epoch replays a different order than the
    uninterrupted run would have; this one makes resumed and uninterrupted runs identical.
    """

    def __init__(self, batch_size: int, lengths: list[int], seed: int, current_epoch=None):
        super().__init__(batch_size, lengths=lengths)
        self.seed, self.epoch = seed, 0
        self.current_epoch = current_epoch  # () -> int: the training loop's epoch, read when an epoch starts

    def set_epoch(self, epoch: int) -> None:  # called by Trainer at the start of every epoch
        self.epoch = int(epoch)

    def __iter__(self):
        # set_epoch does not always arrive: a run resumed mid-epoch under several processes iterates through
        # accelerate's SkipBatchSampler(BatchSamplerShard(...)), which does not pass it on, and replayed the
        # first epoch's order in the second (seen with torchrun). The Trainer's own epoch counter is always right.
        if self.current_epoch is not None:
            self.epoch = self.current_epoch()
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


def balanced_class_weights(labels, num_labels: int) -> torch.Tensor:
    """n / (k * count of class c), scikit-learn's "balanced": every class weighs the same in the loss."""
    counts = torch.bincount(torch.as_tensor(list(labels)), minlength=num_labels).float()
    return counts.sum() / (num_labels * counts.clamp(min=1))


class LengthGroupedTrainer(Trainer):
    """The stock Trainer with one change: training batches come from SeededLengthGroupedSampler (texts of similar
    length together, so dynamic padding adds almost nothing, in an order a resumed run replays exactly).
    The notebook and the command line both train with it. `class_weights` (optional) weights the cross-entropy
    per class, for imbalanced data. `dropout_masks` (RunConfig.dropout_masks): "16-bit" gives every plain dropout
    of the model (and its adapter) masks drawn from 16-bit words (dropout_masks.py), and a BERT-type encoder's
    attention dropout too (through its module instead of inside SDPA), except under torch_compile, whose generated
    code draws its own; "bernoulli" leaves torch's."""

    def __init__(self, *args, class_weights: torch.Tensor | None = None, eval_precision: str = "fp32",
                 dropout_masks: str = "16-bit", **kwargs):
        super().__init__(*args, **kwargs)
        if dropout_masks == "16-bit" and not self.args.torch_compile:
            draw_sixteen_bit_dropout_masks(self.model)  # evaluation never draws them
        self.class_weights = class_weights
        self.eval_precision = eval_precision  # validation's, as the run's test evaluations (RunConfig.eval_precision)
        self._flops_per_token: int | None = None

    def floating_point_ops(self, inputs) -> int:
        # The Trainer adds this estimate (6 x tokens x parameters without embeddings) to state.total_flos after every
        # step, and the stock method counts the parameters again each time by walking every module: 1.3 ms a step
        # for MiniLM, about 1% of the demo's time. The count does not change while training, so the first step's
        # is kept; the value is the stock one (transformers 4.x and 5.x compute the same formula).
        tokens = inputs.get(getattr(self.model, "main_input_name", "input_ids"))
        if tokens is None or tokens.numel() == 0:
            return super().floating_point_ops(inputs)
        if self._flops_per_token is None:
            self._flops_per_token = int(super().floating_point_ops(inputs)) // tokens.numel()
        return self._flops_per_token * tokens.numel()

    def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
        if self.class_weights is None:
            return super().compute_loss(model, inputs, return_outputs=return_outputs, **kwargs)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        weight = self.class_weights.to(outputs.logits.device)
        loss = torch.nn.functional.cross_entropy(outputs.logits.float(), labels, weight=weight)
        return (loss, outputs) if return_outputs else loss

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        # Grouped by the global batch: with N processes, accelerate deals out consecutive per-process batches of
        # this order, so each optimizer step sees the examples a single process with an N times larger batch sees.
        batch = self.args.train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size
        return SeededLengthGroupedSampler(batch, self._lengths(dataset), self.args.data_seed,
                                          current_epoch=lambda: int(self.state.epoch or 0))

    def _get_eval_sampler(self, eval_dataset):
        # Validation in batches sorted by length, longest first, as evaluation.predict_logits does: almost no padding
        # (MiniLM's validation pass: 5.7 s in the Trainer's stored order, 3.7 s sorted). Accuracy, F1 and the mean
        # loss do not depend on the order in which the examples are scored.
        if eval_dataset is None or not has_length(eval_dataset):
            return super()._get_eval_sampler(eval_dataset)
        return np.argsort(-np.asarray(self._lengths(eval_dataset)), kind="stable").tolist()

    def _lengths(self, dataset) -> list[int]:
        """Token counts per row: the length column tokenize() stored, or counted where the Trainer has already
        dropped it (it drops the columns the model does not take)."""
        column = self.args.length_column_name
        return list(dataset[column]) if column in dataset.column_names else [len(ids) for ids in dataset["input_ids"]]

    def evaluate(self, *args, **kwargs):
        # Validation runs in batches of per_device_eval_batch_size (4x the training batch unless set): running out
        # of memory there names --eval-batch-size, not the training batch that train()'s advice names.
        with batch_size_advice(self.args.per_device_eval_batch_size, "validation", "--eval-batch-size"), \
                eval_autocast(self.eval_precision, self.args.device.type):
            return super().evaluate(*args, **kwargs)

    def _load_rng_state(self, checkpoint):
        with rng_state_loading():  # transformers < 4.51 with torch >= 2.6 (compat.py)
            return super()._load_rng_state(checkpoint)

    def _load_optimizer_and_scheduler(self, checkpoint):
        with optimizer_state_loading():  # transformers 4.x, several CPU processes (compat.py)
            return super()._load_optimizer_and_scheduler(checkpoint)


class SaveEachEpoch(TrainerCallback):
    """Checkpoint at every epoch end in addition to every `save_steps` steps (and, when the best adapter is kept,
    evaluate there too, so that every epoch end is a candidate)."""

    def __init__(self, evaluate: bool = False):
        self.evaluate = evaluate

    def on_epoch_end(self, args, state, control, **kwargs):
        control.should_save = True
        evaluated_here = any(e.get("step") == state.global_step and "eval_loss" in e for e in state.log_history)
        control.should_evaluate = control.should_evaluate or (self.evaluate and not evaluated_here)
        return control


class AdaLoraBudget(TrainerCallback):
    """AdaLoRA moves rank between layers from the gradients: peft's update_and_allocate must run after every
    optimizer step and before the gradients are zeroed, which is where the Trainer calls on_optimizer_step."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        freeze_adalora_ranknum(model)  # also for a model made with get_peft_model directly (the notebook)

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        model.base_model.update_and_allocate(state.global_step)


def total_steps(cfg: RunConfig, train_examples: int) -> int:
    """Optimizer steps of the whole run (as the Trainer counts them: partial last batch included)."""
    steps_per_epoch = max(1, math.ceil(train_examples / cfg.batch_size))
    return math.ceil(cfg.epochs * steps_per_epoch)


def warmup_steps(cfg: RunConfig, train_examples: int) -> int:
    """The warm-up as a number of steps: cfg.warmup of all optimizer steps, rounded up as the Trainer rounds a
    ratio. A step count means the same in transformers 4.x (warmup_ratio) and 5.x (warmup_steps < 1)."""
    return math.ceil(cfg.warmup * total_steps(cfg, train_examples))


def best_model_arguments(cfg: RunConfig) -> dict:
    """Keep the best adapter by a validation metric: evaluate at every checkpoint (every save_steps, and at each
    epoch end through SaveEachEpoch) and load the best checkpoint when training ends. Without metric_for_best the
    run evaluates once per epoch and keeps the last adapter; with validation off it never evaluates while training."""
    if not cfg.validation:  # RunConfig.validate refuses metric_for_best without validation
        return {"eval_strategy": "no"}
    if cfg.metric_for_best is None:
        return {"eval_strategy": "epoch"}
    return {"eval_strategy": "steps", "eval_steps": cfg.save_steps, "load_best_model_at_end": True,
            "metric_for_best_model": cfg.metric_for_best, "greater_is_better": True}


def training_arguments(cfg: RunConfig, train_examples: int) -> TrainingArguments:
    """The TrainingArguments of a run (the notebook writes the same call out)."""
    cfg.require_resolved()
    return TrainingArguments(
        output_dir=cfg.checkpoint_dir,
        num_train_epochs=cfg.epochs,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=warmup_steps(cfg, train_examples),
        weight_decay=0.01,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size,
        length_column_name="length",  # LengthGroupedTrainer's sampler reads the lengths tokenize() stored
        **best_model_arguments(cfg),
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=2,
        logging_strategy="steps",
        logging_steps=0.05,  # 20 points on the loss curve whatever the run length
        logging_first_step=True,
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to=other_log_backends(cfg),
        use_cpu=default_device() == "cpu",
        **mixed_precision(cfg.precision),
        **compile_arguments(cfg),
        # transformers 5 defaults to True, and then multiplies the loss by the number of processes, expecting the
        # model to divide by the global example count; the sequence classifiers' loss is the mean of the process's
        # own batch, so with N processes the loss and gradients came out N times too large (seen with torchrun).
        average_tokens_across_devices=False,
        ddp_find_unused_parameters=False,  # every trainable tensor of every method is used in each forward pass
    )


def other_log_backends(cfg: RunConfig) -> list[str] | str:
    """The Trainer's report_to without TensorBoard, which log_callbacks adds with its own writer."""
    backends = [b for b in cfg.report_to.split(",") if b not in ("none", "tensorboard")]
    return backends or "none"


def log_callbacks(cfg: RunConfig) -> list[TrainerCallback]:
    """A TensorBoardCallback writing to config.log_dir(cfg). Given its own writer, it logs to the same place in
    transformers 4.x (where TrainingArguments.logging_dir would also work) and 5.x (where only an environment
    variable would), and outside the checkpoint folder that is deleted after saving."""
    if "tensorboard" not in cfg.report_to.split(","):
        return []
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    return [TensorBoardCallback(SummaryWriter(log_dir=str(log_dir(cfg))))]


def build_trainer(model, tokenizer, data: DatasetDict, cfg: RunConfig) -> LengthGroupedTrainer:
    num_labels = data["train"].features["label"].num_classes
    weights = balanced_class_weights(data["train"]["label"], num_labels) if cfg.class_weights == "balanced" else None
    return LengthGroupedTrainer(
        model=model,
        args=training_arguments(cfg, len(data["train"])),
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_metrics,
        callbacks=[SaveEachEpoch(evaluate=cfg.metric_for_best is not None), *log_callbacks(cfg), *method_callbacks(cfg)],
        class_weights=weights,
        eval_precision=cfg.eval_precision,
        dropout_masks=cfg.dropout_masks,
    )


def method_callbacks(cfg: RunConfig) -> list[TrainerCallback]:
    callbacks: list[TrainerCallback] = []
    if cfg.method == "adalora":
        callbacks.append(AdaLoraBudget())
    if cfg.early_stopping_patience is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
    return callbacks


def best_checkpoint(trainer: Trainer) -> dict | None:
    """Which evaluation the kept adapter comes from: its step, epoch and validation value (None without
    metric_for_best). Read from the Trainer's state before the checkpoints are deleted."""
    state, metric = trainer.state, trainer.args.metric_for_best_model
    if not metric or state.best_model_checkpoint is None:
        return None
    step = int(Path(state.best_model_checkpoint).name.split("-")[-1])
    key = metric if metric.startswith("eval_") else f"eval_{metric}"
    evals = [e for e in state.log_history if key in e and e.get("step") == step]
    return {"metric": metric, "value": state.best_metric, "step": step,
            "epoch": evals[-1]["epoch"] if evals else None, "stopped_at_step": state.global_step,
            "planned_steps": state.max_steps}


@dataclass
class TrainResult:
    trainer: Trainer
    seconds: float
    samples_per_second: float
    log_history: list[dict]
    best: dict | None = None  # with metric_for_best: the evaluation the kept adapter comes from


def checkpoints(folder: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first. Trainer writes trainer_state.json last, so a checkpoint without it
    was cut off mid-save (e.g. the process was killed) and cannot be resumed from."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    return sorted((p for p in found if (p / "trainer_state.json").is_file()), key=lambda p: int(p.name.split("-")[-1]))


def prepare_checkpoints(cfg: RunConfig, resume: bool = False, fresh: bool = False) -> str | None:
    """Where training starts; call it before any slow work. Returns the checkpoint to resume from, or None.

    Checkpoints of an interrupted run are kept unless `fresh` (then deleted). `resume` continues only a run with
    the same settings (recorded in run.json); with neither, the user is asked to choose, so an interrupted run is
    never thrown away or continued with other settings by accident.
    """
    cfg.require_resolved()
    found = checkpoints(cfg.checkpoint_dir)
    if found and not resume and not fresh:
        raise UserError(
            f"{cfg.checkpoint_dir} holds checkpoints of an interrupted run ({found[-1].name}): pass --resume to "
            "continue it, or --overwrite to start again (this deletes them)."
        )
    if fresh:
        if Path(cfg.checkpoint_dir).exists():
            shutil.rmtree(cfg.checkpoint_dir)
        return None
    if not resume:
        return None
    if not found:
        print(f"No checkpoint in {cfg.checkpoint_dir}: starting from the beginning.")
        return None
    record = Path(cfg.checkpoint_dir) / RUN_FILE
    if not record.is_file():
        raise UserError(f"{cfg.checkpoint_dir} has no {RUN_FILE}, so its settings are unknown: start again with "
                        "--overwrite.")
    recorded, current = json.loads(record.read_text()), json.loads(json.dumps(cfg.run_identity()))
    changed = sorted(k for k in recorded.keys() | current.keys() if recorded.get(k) != current.get(k))
    if changed:
        detail = ", ".join(f"{k}: {recorded.get(k)!r} then, {current.get(k)!r} now" for k in changed)
        raise UserError(f"--resume needs the interrupted run's settings, but they differ ({detail}): use the same "
                        "settings, or --overwrite to start again.")
    print(f"Resuming from {found[-1]}")
    return str(found[-1])


def train(model, tokenizer, data: DatasetDict, cfg: RunConfig, resume_from: str | None = None) -> TrainResult:
    """Train on data['train'], evaluating on data['validation'] after each epoch (not with cfg.validation off);
    checkpoints go to cfg.checkpoint_dir (with run.json, the settings a resume must match). `resume_from` comes
    from prepare_checkpoints."""
    cfg.require_resolved()
    trainer = build_trainer(model, tokenizer, data, cfg)
    folder = Path(cfg.checkpoint_dir)
    folder.mkdir(parents=True, exist_ok=True)
    if is_main():  # the other processes of a launch share the folder
        (folder / RUN_FILE).write_text(json.dumps(cfg.run_identity(), indent=2))
    start = time.perf_counter()
    # With compile, a model the compiler fails on (after the check in resolve passed) runs eagerly: torch's own
    # fallback, which logs the reason instead of ending the run.
    fallback = torch._dynamo.config.patch(suppress_errors=True) if cfg.compile else contextlib.nullcontext()
    with batch_size_advice(cfg.batch_size, "training"), fallback:
        output = trainer.train(resume_from_checkpoint=resume_from)
    seconds = time.perf_counter() - start
    return TrainResult(trainer, seconds, float(output.metrics.get("train_samples_per_second", 0.0)),
                       trainer.state.log_history, best_checkpoint(trainer))


def remove_checkpoints(cfg: RunConfig) -> None:
    """After the adapter is safely saved the intermediate checkpoints are no longer needed."""
    shutil.rmtree(cfg.checkpoint_dir, ignore_errors=True)
