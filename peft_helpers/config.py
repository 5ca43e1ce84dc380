"""The one config object of a run: every setting of the workflow lives here, checked before any model loads."""

from __future__ import annotations

import importlib.util
import math
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .data import PROBLEMS
from .errors import UserError
from .methods import METHOD_OPTIONS, METHODS, check_options, get_method
from .metrics import PROBLEM_METRICS


@dataclass
class RunConfig:
    """Settings of one fine-tuning run; the CLI flags and the notebook's parameters mirror these fields."""

    model: str = field(
        default="gpt2",
        metadata={"help": "Hub id, local model folder, or an offline packaged model: 'minilm' or 'smollm2'."},
    )
    data_dir: str | None = field(
        default=None,
        metadata={
            "help": "None = the Hub dataset rotten_tomatoes. Otherwise a folder with rt-polarity.pos/.neg, "
            "a folder with train (and optional validation/test) CSV/TSV/JSON/JSONL/Parquet files, or one such file."
        },
    )
    dataset: str | None = field(
        default=None,
        metadata={"help": "A dataset by name, through datasets.load_dataset: a Hub id (e.g. SetFit/bbc-news) or a "
                          "local folder of data files or one written by save_to_disk. Instead of data_dir."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "The dataset's configuration (e.g. mrpc for glue)."})
    train_split: str = field(default="train", metadata={"help": "The dataset's split to train on."})
    validation_split: str = field(
        default="validation", metadata={"help": "Its split for validation; carved from train if absent or 'none'."}
    )
    test_split: str = field(default="test", metadata={"help": "Its split for testing; carved from train if absent or 'none'."})
    text_column: str = field(
        default="text",
        metadata={"help": "Text column of a local file; in a file without a header, its position (0, 1, ...)."},
    )
    label_column: str = field(
        default="label",
        metadata={"help": "Label column of a local file; in a file without a header, its position (0, 1, ...)."},
    )
    problem: str = field(
        default="auto",
        metadata={"help": "single-label, multi-label (several 0/1 label columns, --label-column anger,joy,..., or a "
                          "column of lists) or regression (a number per text); auto: read from the labels."},
    )
    scale_targets: bool = field(
        default=True,
        metadata={"help": "Regression: train on targets divided by the train split's standard deviation (and "
                          "centred on its mean where the head has a bias, as BERT-style heads do); afterwards the head "
                          "is rescaled so the model predicts the original scale (recorded in peft_helpers.json). "
                          "--no-scale-targets trains on the raw values. Other problems ignore it."},
    )
    text_pair_column: str | None = field(
        default=None, metadata={"help": "A second text column, given to the model as a sentence pair (e.g. glue/mrpc)."}
    )
    truncation: str = field(
        default="head",
        metadata={"help": "Which tokens of a text longer than max_length are kept: head, tail or head+tail."},
    )
    report_to: str = field(
        default="none",
        metadata={"help": "Training logs: none, tensorboard (in runs/<name>-logs), or mlflow, wandb, trackio where "
                          "installed (comma-separated for several). Nothing is contacted over the network by default."},
    )
    class_weights: str | None = field(
        default=None, metadata={"help": "'balanced': weight the loss by inverse class frequency (imbalanced data)."}
    )
    train_size: int | None = field(
        default=None, metadata={"help": "None = the full train split; otherwise a stratified, seeded subset."}
    )
    eval_size: int | None = field(
        default=None, metadata={"help": "None = the full validation/test splits; otherwise stratified subsets."}
    )
    epochs: float | None = field(
        default=None, metadata={"help": "Training epochs; None = tuned for the architecture (1 for GPT-2)."}
    )
    learning_rate: float | None = field(
        default=None, metadata={"help": "Peak learning rate; None = tuned for the architecture (5e-4 for GPT-2)."}
    )
    batch_size: int = field(default=16, metadata={"help": "Per-device batch size for training."})
    eval_batch_size: int | None = field(
        default=None,
        metadata={"help": "Per-device batch size for evaluation (the Trainer's validation and every test evaluation); "
                          "None = 4 x batch_size (evaluation keeps no activations for a backward pass)."},
    )
    max_length: int = field(default=128, metadata={"help": "Truncate texts to this many tokens."})
    warmup: float = field(default=0.06, metadata={"help": "Linear warm-up, as a ratio of all steps."})
    seed: int = field(default=42, metadata={"help": "Seed for subsets, head initialisation, LoRA and shuffling."})
    output_dir: str | None = field(
        default=None, metadata={"help": "Where the adapter is saved; None = saved_adapters/<model>-<method>."}
    )
    checkpoint_dir: str | None = field(
        default=None, metadata={"help": "Training checkpoints (for --resume); None = <output_dir>-checkpoints, beside "
                                        "the adapter, so two runs never share one."}
    )
    save_steps: int = field(default=200, metadata={"help": "Checkpoint every this many steps, and at each epoch end."})
    r: int | None = field(default=None, metadata={"help": "Rank (LoRA family; VeRA); None = tuned for the architecture (8 for GPT-2)."})
    alpha: int | None = field(
        default=None, metadata={"help": "LoRA-family alpha (the update is scaled by alpha / r); None = tuned (2 * r)."}
    )
    dropout: float | None = field(
        default=None, metadata={"help": "Dropout on the adapter branch (LoRA family, VeRA); None = 0.1."}
    )
    model_dropout: float | None = field(
        default=None,
        metadata={"help": "Dropout inside the pretrained model while training: every dropout probability of its config "
                          "(BERT's hidden and attention dropout, GPT-2's *_pdrop, Llama's attention_dropout), set when "
                          "it loads; None = the model's own (0.1 for BERT and GPT-2)."},
    )
    target_modules: list[str] | None = field(
        default=None,
        metadata={"help": "Modules that get the adapter; None = tuned for the architecture (peft's default otherwise)."},
    )
    layers: list[int] | None = field(
        default=None,
        metadata={"help": "Transformer layers (0 = the first) whose target modules get the adapter; None = every layer. "
                          "Nothing below the lowest one is back-propagated through: --layers 3 4 5 on a 6-layer "
                          "model skips half of the backward pass (LoRA family, LoHa, LoKr, AdaLoRA, VeRA)."},
    )
    method: str = field(
        default="lora",
        metadata={"help": "PEFT method: " + ", ".join(METHODS) + " (qlora: CUDA + bitsandbytes only)."},
    )
    num_virtual_tokens: int | None = field(
        default=None, metadata={"help": "Virtual tokens of prompt_tuning, p_tuning, prefix_tuning; None = 20."}
    )
    metric_for_best: str | None = field(
        default=None,
        metadata={"help": "accuracy or f1: evaluate every save_steps and at each epoch end, and keep the adapter "
                          "with the best validation value (None = the last one)."},
    )
    validation: bool = field(
        default=True,
        metadata={"help": "Evaluate on the validation split while training (five times, evenly spread; every save_steps with "
                          "metric_for_best). --no-validation skips it: seconds less, a learning curve of the "
                          "training loss only."},
    )
    precision: str = field(
        default="auto",
        metadata={"help": "auto (bf16 mixed precision on GPUs that have it, else fp16; fp32 on CPU), fp32, bf16 or "
                          "fp16 (as on a Colab T4). fp16 needs a CUDA GPU; bf16 a CUDA GPU or a CPU with bf16 matrix "
                          "units (AMX, AVX512-BF16). Passed to TrainingArguments (bf16/fp16); evaluation stays fp32."},
    )
    early_stopping_patience: int | None = field(
        default=None, metadata={"help": "Stop after this many evaluations without improvement (needs metric_for_best)."}
    )
    compile: bool = field(
        default=False,
        metadata={"help": "torch.compile the model for training (the Trainer's torch_compile); where torch.compile "
                          "does not work, training runs without it after one warning line."},
    )

    def __post_init__(self) -> None:
        if "auto" in (self.train_size, self.eval_size):  # the notebook's default: sized for the machine
            import torch

            self.train_size, self.eval_size = auto_sizes(self.train_size, self.eval_size, torch.cuda.is_available())
        self.validate()
        if self.output_dir is None:
            self.output_dir = str(Path("saved_adapters") / f"{model_slug(self.model)}-{self.method}")
        if self.checkpoint_dir is None:
            self.checkpoint_dir = str(self.output_dir).rstrip("/\\") + "-checkpoints"

    def validate(self) -> None:
        """Raise UserError on the first invalid value, naming the setting and what would be valid."""
        if not isinstance(self.model, str) or not self.model.strip():
            raise UserError("model is empty: give a Hub id (e.g. 'gpt2'), a local model folder, or 'minilm'/'smollm2'.")
        for name in ("train_size", "eval_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise UserError(f"{name}={value!r}: use a positive whole number, or None for the full split.")
        checks = [
            ("epochs", self.epochs is None or self.epochs > 0, "a positive number"),
            ("learning_rate", self.learning_rate is None or 0 < self.learning_rate < 1, "a number between 0 and 1, e.g. 5e-4"),
            ("batch_size", isinstance(self.batch_size, int) and self.batch_size >= 1, "a whole number >= 1"),
            ("eval_batch_size", self.eval_batch_size is None or (isinstance(self.eval_batch_size, int)
                                                                 and self.eval_batch_size >= 1),
             "a whole number >= 1, or None for 4 x batch_size"),
            ("max_length", isinstance(self.max_length, int) and self.max_length >= 2, "a whole number >= 2"),
            ("warmup", 0 <= self.warmup < 1, "a ratio in [0, 1)"),
            ("save_steps", isinstance(self.save_steps, int) and self.save_steps >= 1, "a whole number >= 1"),
            ("r", self.r is None or (isinstance(self.r, int) and self.r >= 1), "a whole number >= 1"),
            ("alpha", self.alpha is None or self.alpha > 0, "a positive number"),
            ("dropout", self.dropout is None or 0 <= self.dropout < 1, "a value in [0, 1)"),
            ("model_dropout", self.model_dropout is None or 0 <= self.model_dropout < 1, "a value in [0, 1)"),
            ("num_virtual_tokens", self.num_virtual_tokens is None or (isinstance(self.num_virtual_tokens, int)
                                                                       and self.num_virtual_tokens >= 1),
             "a whole number >= 1"),
            ("early_stopping_patience", self.early_stopping_patience is None or (
                isinstance(self.early_stopping_patience, int) and self.early_stopping_patience >= 1),
             "a whole number >= 1"),
        ]
        for name, ok, valid in checks:
            if not ok:
                raise UserError(f"{name}={getattr(self, name)!r} is invalid: use {valid}.")
        get_method(self.method)
        check_options(self.method, {k: getattr(self, k) for k in METHOD_OPTIONS})
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise UserError(f"precision={self.precision!r} is invalid: use auto, fp32, bf16 or fp16.")
        if self.precision in ("bf16", "fp16"):
            import torch

            from .hardware import cpu_has_bf16

            if self.precision == "fp16" and not torch.cuda.is_available():
                raise UserError("precision=fp16 needs a CUDA GPU: use auto or fp32 on this machine.")
            if self.precision == "bf16" and not torch.cuda.is_available() and not cpu_has_bf16():
                raise UserError("precision=bf16 needs a CUDA GPU or a CPU with bf16 matrix units (AMX or "
                                "AVX512-BF16), which this one lacks: use auto or fp32 on this machine.")
            if self.precision == "bf16" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
                raise UserError("this GPU has no bf16: use precision fp16 (or auto).")
        if self.problem not in ("auto", *PROBLEMS):
            raise UserError(f"problem={self.problem!r} is invalid: use auto, {', '.join(PROBLEMS)}.")
        known = sorted({m for names in PROBLEM_METRICS.values() for m in names} - {"mse", "mae"})
        if self.metric_for_best not in (None, *known):
            raise UserError(f"metric_for_best={self.metric_for_best!r} is invalid: use {', '.join(known)}.")
        if self.metric_for_best is not None and not self.validation:
            raise UserError("metric_for_best chooses the adapter by its validation score: drop --no-validation, or "
                            "drop --metric-for-best to keep the last adapter.")
        if self.early_stopping_patience is not None and self.metric_for_best is None:
            raise UserError("early_stopping_patience needs a metric to watch: add --metric-for-best accuracy (or f1).")
        if self.layers is not None and (not self.layers or any(
                not isinstance(i, int) or isinstance(i, bool) or i < 0 for i in self.layers)):
            raise UserError(f"layers={self.layers!r} is invalid: give layer numbers >= 0 (0 = the first), or None for all.")
        if self.target_modules is not None and not self.target_modules:
            raise UserError("target_modules is an empty list: name at least one module, or use None for the default.")
        if self.data_dir is not None and not Path(self.data_dir).exists():
            raise UserError(f"data_dir {self.data_dir!r} does not exist: pass an existing folder or file, or None for the Hub.")
        if self.dataset is not None and self.data_dir is not None:
            raise UserError("give dataset (a name for datasets.load_dataset) or data_dir (local files), not both.")
        if self.text_pair_column is not None and self.text_pair_column == self.text_column:
            raise UserError(f"text_pair_column is the text column ({self.text_column!r}): name the second text column.")
        if self.truncation not in ("head", "tail", "head+tail"):
            raise UserError(f"truncation={self.truncation!r} is invalid: use head, tail or head+tail.")
        for backend in self.report_to.split(","):
            if backend not in LOG_BACKENDS:
                raise UserError(f"report_to={backend!r} is not known: use {', '.join(LOG_BACKENDS)}.")
            if LOG_BACKENDS[backend] and importlib.util.find_spec(LOG_BACKENDS[backend]) is None:
                raise UserError(f"report_to={backend!r} needs the package {LOG_BACKENDS[backend]}: pip install {backend}.")
        if self.class_weights not in (None, "balanced"):
            raise UserError(f"class_weights={self.class_weights!r} is invalid: use balanced, or leave it out.")
        if self.output_dir is not None and not str(self.output_dir).strip():
            raise UserError("output_dir is empty: give a folder name, e.g. saved_adapters/my-adapter.")

    @property
    def model_source(self) -> str:
        """What from_pretrained loads: the folder of an offline packaged model ('minilm', 'smollm2'; SmolLM2 is
        converted on first use), otherwise the model as given (a Hub id or a local folder)."""
        from .offline import offline_model_name, offline_model_path

        return str(offline_model_path(self.model)) if offline_model_name(self.model) else self.model

    def to_dict(self) -> dict:
        return asdict(self)

    def resolved(self, model_type: str) -> RunConfig:
        """A copy where every setting left at None takes the value tuned for this architecture family and
        method; options the method does not take stay None."""
        family = {**FAMILY_DEFAULTS["default"], **FAMILY_DEFAULTS.get(model_type, {})}
        spec = get_method(self.method)
        options = {"r": family["r"], "alpha": family["alpha"], "dropout": 0.1, "num_virtual_tokens": 20, "layers": None,
                   # the family's targets are tuned for the LoRA family; IA3 and VeRA use peft's own defaults
                   "target_modules": family["target_modules"] if "alpha" in spec.options else None,
                   **spec.defaults}
        if self.r is not None and self.alpha is None:
            options["alpha"] = 2 * self.r  # keep the scale alpha / r = 2 when only r is given
        tuned = {"epochs": family["epochs"], "learning_rate": min(0.5, family["learning_rate"] * spec.lr_scale),
                 "eval_batch_size": EVAL_BATCH_FACTOR * self.batch_size,
                 **{k: options[k] for k in spec.options}}
        return replace(self, **{k: v for k, v in tuned.items() if getattr(self, k) is None})

    def total_steps(self, train_examples: int) -> int:
        """Optimizer steps of the whole run (as the Trainer counts them: partial last batch included)."""
        return math.ceil(self.epochs * max(1, math.ceil(train_examples / self.batch_size)))

    def is_resolved(self) -> bool:
        needed = ["epochs", "learning_rate", "eval_batch_size",
                  *(k for k in get_method(self.method).options if k not in ("target_modules", "layers"))]
        return all(getattr(self, k) is not None for k in needed)

    def require_resolved(self) -> RunConfig:
        """Steps after `workflow.prepare` take the resolved config and never fill in defaults themselves."""
        if not self.is_resolved():
            raise ValueError("this step needs a resolved config: cfg.resolved(model.config.model_type) "
                             "(workflow.prepare returns one)")
        return self

    def run_identity(self) -> dict:
        """The settings that define what a training run computes: a checkpoint may only be resumed by a run
        with the same ones (where checkpoints and the adapter go and how many texts evaluation batches hold do not
        matter; validation does: each pass draws from torch's generator, which the later batches come from)."""
        return {k: v for k, v in self.to_dict().items()
                if k not in ("output_dir", "checkpoint_dir", "save_steps", "eval_batch_size")}


# eval_batch_size left at None is this many times batch_size: a forward pass without the activations a backward pass
# keeps needs a fraction of a training step's memory.
EVAL_BATCH_FACTOR = 4


# Training-log backends the Trainer can report to, and the module each needs.
LOG_BACKENDS = {"none": None, "tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb", "trackio": "trackio"}


def log_dir(cfg: RunConfig) -> Path:
    """Where TensorBoard logs go: beside the adapter (the checkpoints are deleted once it is saved)."""
    return Path(str(cfg.output_dir).rstrip("/\\") + "-logs")


# LoRA and training settings per architecture family (`config.model_type`), tuned on Rotten Tomatoes with the
# offline models (BENCHMARKS.md: MiniLM for "bert", SmolLM2 for "llama"). GPT-2's weights are not reachable from
# the machines that tuned these, so "gpt2" keeps the common LoRA starting point. target_modules None = peft's
# per-architecture default (GPT-2: c_attn; BERT: query, value; Llama: q_proj, v_proj).
FAMILY_DEFAULTS: dict[str, dict] = {
    "default": {"epochs": 1.0, "learning_rate": 5e-4, "r": 8, "alpha": 16, "target_modules": None},
    "bert": {"epochs": 3.0, "learning_rate": 1e-3, "r": 16, "alpha": 32},
    "llama": {
        "learning_rate": 2e-4,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    },
}


# Sizes the notebook uses on a machine without a GPU when left on "auto": GPT-2 with LoRA trained at 15 to 17
# examples/s on two CPU cores (November 2026; the script is in git history), so the full 8,530 take about 9
# minutes per epoch and 2,000 about 2 minutes.
CPU_TRAIN_SIZE = 2000
CPU_EVAL_SIZE = 500


def auto_sizes(train_size, eval_size, has_gpu: bool) -> tuple[int | None, int | None]:
    """Resolve "auto" sizes: the full data on a GPU, a documented CPU-sized stratified subset otherwise."""
    if train_size == "auto":
        train_size = None if has_gpu else CPU_TRAIN_SIZE
    if eval_size == "auto":
        eval_size = None if has_gpu else CPU_EVAL_SIZE
    return train_size, eval_size


def model_slug(model: str) -> str:
    """A folder-safe short name for a model id or path ('openai-community/gpt2' -> 'gpt2')."""
    name = Path(model.rstrip("/")).name or model
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "model"
