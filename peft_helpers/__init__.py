"""Helpers for parameter-efficient (LoRA and every other peft method) fine-tuning of a pretrained model for text classification.

Modules follow the workflow: config -> data -> modeling -> training -> evaluation -> persistence -> inference ->
reporting; `workflow` chains them and `cli` exposes them as `python -m peft_helpers`.

The names below are the public API for other notebooks (README, "Using the package from your own notebook").
They are imported on first use, so `import peft_helpers` stays light (the notebook's set-up step imports
`peft_helpers.environment` before transformers may be imported).
"""

from __future__ import annotations

import importlib

__version__ = "0.2.0"

_EXPORTS = {
    "config": ["RunConfig"],
    "errors": ["UserError"],
    "data": ["load_data", "label_names", "subsample", "stratified_subset", "tokenize"],
    "modeling": ["load_model", "create_peft_model", "count_parameters"],
    "methods": ["METHODS", "peft_config"],
    "metrics": ["classification_metrics", "compute_metrics"],
    "training": ["training_arguments", "prepare_checkpoints", "train"],
    "evaluation": ["evaluate", "predict_logits", "check_reload", "RELOAD_TOLERANCE"],
    "persistence": ["save_adapter", "load_adapter", "check_loaded"],
    "inference": ["predict", "load_for_prediction"],
    "reporting": ["label_balance", "comparison_table", "plot_metrics", "plot_confusion_matrices", "plot_training",
                  "plot_learning_curves"],
    "workflow": ["prepare", "run"],
    "baselines": ["run_baseline"],
    "compare": ["compare"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'peft_helpers' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
