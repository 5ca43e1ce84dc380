"""Helpers for parameter-efficient (LoRA) fine-tuning of a pretrained model for text classification.

Modules follow the workflow: config -> data -> modeling -> training (and evaluation) -> persistence ->
inference -> reporting; `workflow.run` chains them and `cli` exposes them as `python -m peft_helpers`.
"""

import warnings

# peft 0.21 calls a transformers 5 API deprecated for v6; the warning is noise for users of this package.
warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)

from .config import RunConfig  # noqa: E402
from .errors import UserError  # noqa: E402

__all__ = ["RunConfig", "UserError"]
__version__ = "0.1.0"
