"""Helpers for parameter-efficient (LoRA) fine-tuning of a pretrained model for text classification.

Modules follow the workflow: config -> data -> modeling -> training (and evaluation) -> persistence ->
inference -> reporting; `workflow.run` chains them and `cli` exposes them as `python -m peft_helpers`.
"""

from .config import RunConfig
from .errors import UserError

__all__ = ["RunConfig", "UserError"]
__version__ = "0.1.0"
