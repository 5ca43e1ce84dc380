"""Training with the stock Hugging Face Trainer: its arguments (the notebook writes the same call out), the callbacks
some methods need, checkpoints that only the same run may resume. Evaluation lives in evaluation.py."""

from __future__ import annotations

import contextlib
import functools
import json
import math
import shutil
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import DatasetDict
from transformers import DataCollatorWithPadding, EarlyStoppingCallback, Trainer, TrainerCallback, TrainingArguments

from .compat import group_by_length, optimizer_state_loading, rng_state_loading
from .config import RunConfig, log_dir
from .distributed import is_main
from .errors import UserError, batch_size_advice
from .metrics import compute_metrics
from .modeling import default_device, freeze_adalora_ranknum
from .persistence import save_initial_adapter

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


def balanced_class_weights(labels, num_labels: int) -> torch.Tensor:
    """n / (k * count of class c), scikit-learn's "balanced": every class weighs the same in the loss."""
    counts = torch.bincount(torch.as_tensor(list(labels)), minlength=num_labels).float()
    return counts.sum() / (num_labels * counts.clamp(min=1))


def weighted_loss(class_weights: torch.Tensor):
    """The Trainer's `compute_loss_func` for class_weights="balanced": cross-entropy weighted per class (imbalanced
    data). Without class weights the model's own loss is used."""

    def loss(outputs, labels, num_items_in_batch=None):
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        return torch.nn.functional.cross_entropy(logits.float(), labels, weight=class_weights.to(logits.device))

    return loss


class AdaLoraBudget(TrainerCallback):
    """AdaLoRA moves rank between layers from the gradients: peft's update_and_allocate must run after every
    optimizer step and before the gradients are zeroed, which is where the Trainer calls on_optimizer_step."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        freeze_adalora_ranknum(model)  # also for a model made with get_peft_model directly (the notebook)

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        model.base_model.update_and_allocate(state.global_step)


# Validation passes in a run without metric_for_best, evenly spread over its steps.
VALIDATIONS = 5


def warmup_steps(cfg: RunConfig, train_examples: int) -> int:
    """The warm-up as a number of steps: cfg.warmup of all optimizer steps, rounded up as the Trainer rounds a
    ratio. A step count means the same in transformers 4.x (warmup_ratio) and 5.x (warmup_steps < 1)."""
    return math.ceil(cfg.warmup * cfg.total_steps(train_examples))


def best_model_arguments(cfg: RunConfig) -> dict:
    """Keep the best adapter by a validation metric: evaluate at every checkpoint (every save_steps) and load the
    best checkpoint when training ends. Without metric_for_best the run evaluates VALIDATIONS times, evenly spread
    (a curve even for one epoch), and keeps the last adapter; with validation off it never evaluates while training."""
    if not cfg.validation:  # RunConfig.validate refuses metric_for_best without validation
        return {"eval_strategy": "no"}
    if cfg.metric_for_best is None:
        return {"eval_strategy": "steps", "eval_steps": 1 / VALIDATIONS}
    return {"eval_strategy": "steps", "eval_steps": cfg.save_steps, "load_best_model_at_end": True,
            "metric_for_best_model": cfg.metric_for_best, "greater_is_better": True}


def setup_arguments(cfg: RunConfig, train_examples: int) -> dict:
    """The TrainingArguments that are plumbing rather than recipe (the notebook writes the recipe out and passes
    these): the warm-up as a step count (the same in transformers 4 and 5), the Trainer's length-grouped batches
    (named differently in 4 and 5), the device, mixed precision on a GPU, where logs go, compile, and two settings
    for several processes."""
    return {
        "warmup_steps": warmup_steps(cfg, train_examples),
        **group_by_length(),  # batches of similar lengths: little padding (the Trainer's own sampler)
        "length_column_name": "length",  # the token counts tokenize() stored
        # on a machine without a GPU: without it the Trainer neither takes bf16 on a CPU nor sees the other
        # processes of a CPU launch (each trained on all the data as if alone)
        "use_cpu": default_device() == "cpu",
        **mixed_precision(cfg.precision),
        "report_to": log_backends(cfg),
        **compile_arguments(cfg),
        # transformers 5 defaults to True, and then multiplies the loss by the number of processes, expecting the
        # model to divide by the global example count; the sequence classifiers' loss is the mean of the process's
        # own batch, so with N processes the loss and gradients came out N times too large (seen with torchrun).
        "average_tokens_across_devices": False,
        "ddp_find_unused_parameters": False,  # every trainable tensor of every method is used in each forward pass
    }


def training_arguments(cfg: RunConfig, train_examples: int, **overrides) -> TrainingArguments:
    """The TrainingArguments of a run (the notebook writes the same call out); `overrides` replace any of them
    (tune's trials: validation each epoch, no checkpoints)."""
    cfg.require_resolved()
    return TrainingArguments(**{**dict(
        output_dir=cfg.checkpoint_dir,
        num_train_epochs=cfg.epochs,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="linear",
        weight_decay=0.01,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size,
        **best_model_arguments(cfg),
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=2,
        logging_steps=0.05,  # 20 points on the loss curve whatever the run length
        logging_first_step=True,
        seed=cfg.seed,
        data_seed=cfg.seed,
        **setup_arguments(cfg, train_examples),
    ), **overrides})


def log_backends(cfg: RunConfig) -> list[str] | str:
    """The Trainer's report_to without TensorBoard, which training_callbacks adds with its own writer."""
    backends = [b for b in cfg.report_to.split(",") if b not in ("none", "tensorboard")]
    return backends or "none"


# Below this a PEFT method barely moves in a few epochs: 2e-5, a full fine-tuning rate, is the common mistake. The
# tuned LoRA rates are 2e-4 (Llama-style) to 1e-3 (BERT-style); the other methods take 3x to 30x more.
PEFT_LR_FLOOR = 5e-5


def check_peft_training(model, learning_rate: float) -> None:
    """Two mistakes students make with peft (found in public submissions of this project's rubric): a PEFT model
    whose adapter has nothing trainable (e.g. LoraConfig(inference_mode=True): only the classification head, or
    nothing, would train) is refused; a learning rate far below what PEFT needs gets one warning line."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):  # full fine-tuning and the baselines train plain models
        return
    adapter = [n for n, p in model.named_parameters() if p.requires_grad and "modules_to_save" not in n]
    if not adapter:
        raise UserError("the PEFT model has no trainable adapter weights (only the classification head, or nothing, "
                        "would train): create its config with inference_mode=False (the default), or load a saved "
                        "adapter with is_trainable=True.")
    if learning_rate < PEFT_LR_FLOOR:
        print(f"warning: learning_rate={learning_rate:g} is a full fine-tuning rate; PEFT trains few weights and "
              f"needs at least {PEFT_LR_FLOOR:g} (tuned LoRA: 5e-4 for GPT-2, 1e-3 for BERT-style models).",
              file=sys.stderr)


class PeftTrainingGuards(TrainerCallback):
    """check_peft_training when the Trainer is made, before any step (in `run` and the notebook alike)."""

    def on_init_end(self, args, state, control, model=None, **kwargs):
        check_peft_training(model, args.learning_rate)


class SaveInitialAdapter(TrainerCallback):
    """PiSSA rewrites the base weights, so its trained adapter fits only the rewritten base; the untrained adapter,
    saved when the Trainer is made (before a resumed run loads its checkpoint), lets persistence.saving convert the
    trained one into a plain LoRA adapter for the original base. The same seed recomputes the same one on resume."""

    def __init__(self, folder: Path):
        self.folder = folder

    def on_init_end(self, args, state, control, model=None, **kwargs):
        if is_main():  # the other processes of a launch share the folder
            save_initial_adapter(model, self.folder)


def initial_adapter_dir(cfg: RunConfig) -> Path:
    """PiSSA's untrained adapter, kept with the checkpoints (a resumed run needs it too)."""
    return Path(cfg.checkpoint_dir) / "initial-adapter"


def training_callbacks(cfg: RunConfig) -> list[TrainerCallback]:
    """The callbacks a run's settings need: the two guards of check_peft_training, TensorBoard logs beside the
    adapter (config.log_dir: given its own writer, the callback logs to the same place in transformers 4 and 5,
    outside the checkpoints that are deleted after saving), AdaLoRA's rank budget, PiSSA's untrained adapter, early
    stopping."""
    callbacks: list[TrainerCallback] = [PeftTrainingGuards()]
    if "tensorboard" in cfg.report_to.split(","):
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback

        callbacks.append(TensorBoardCallback(SummaryWriter(log_dir=str(log_dir(cfg)))))
    if cfg.method == "adalora":
        callbacks.append(AdaLoraBudget())
    if cfg.method == "pissa":
        callbacks.append(SaveInitialAdapter(initial_adapter_dir(cfg)))
    if cfg.early_stopping_patience is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
    return callbacks


def build_trainer(model, tokenizer, data: DatasetDict, cfg: RunConfig, callbacks: list[TrainerCallback] = (),
                  **overrides) -> Trainer:
    """The stock Trainer of a run; `callbacks` are added to training_callbacks(cfg), `overrides` go to
    training_arguments."""
    weights = None
    if cfg.class_weights == "balanced":
        weights = balanced_class_weights(data["train"]["label"], data["train"].features["label"].num_classes)
    return Trainer(
        model=model,
        args=training_arguments(cfg, len(data["train"]), **overrides),
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_metrics,
        compute_loss_func=None if weights is None else weighted_loss(weights),
        callbacks=[*training_callbacks(cfg), *callbacks],
    )


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
    """Train on data["train"], evaluating on data["validation"] five times in the run (not with cfg.validation off);
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
    # rng_state_loading, optimizer_state_loading: what resuming needs on the oldest supported versions (compat.py)
    with memory_advice(cfg), fallback, rng_state_loading(), optimizer_state_loading():
        output = trainer.train(resume_from_checkpoint=resume_from)
    seconds = time.perf_counter() - start
    return TrainResult(trainer, seconds, float(output.metrics.get("train_samples_per_second", 0.0)),
                       trainer.state.log_history, best_checkpoint(trainer))


@contextlib.contextmanager
def memory_advice(cfg: RunConfig):
    """Running out of memory inside trainer.train() ends in one line naming the batch that did not fit: the
    Trainer's validation runs in eval_batch_size (--eval-batch-size), its training steps in batch_size."""
    try:
        yield
    except (RuntimeError, MemoryError) as err:
        in_validation = any(frame.name == "evaluation_loop" for frame in traceback.extract_tb(err.__traceback__))
        what, size, flag = (("validation", cfg.eval_batch_size, "--eval-batch-size") if in_validation
                            else ("training", cfg.batch_size, "--batch-size"))
        with batch_size_advice(size, what, flag):
            raise


def remove_checkpoints(cfg: RunConfig) -> None:
    """After the adapter is safely saved the intermediate checkpoints are no longer needed."""
    shutil.rmtree(cfg.checkpoint_dir, ignore_errors=True)
