"""Settings of `make demo`: the real thing online, a packaged real model and local data offline."""

from __future__ import annotations

import os
from pathlib import Path

from .config import RunConfig
from .errors import UserError

DEMO_OUTPUT_DIR = "saved_adapters/demo"


def hub_available(timeout: float = 5.0) -> bool:
    """True when the Hugging Face Hub answers (respects HF_HUB_OFFLINE)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    from huggingface_hub import HfApi

    from .compat import network_errors

    try:
        HfApi().model_info("openai-community/gpt2", timeout=timeout)
        return True
    except network_errors():  # only "cannot reach the Hub" means offline; any other error is a bug to see
        return False


def demo_config(local_data: str | None, online: bool | None = None, model: str | None = None) -> RunConfig:
    """GPT-2 on the Hub's Rotten Tomatoes online; offline the packaged MiniLM on a local copy of the data.
    Both use the full train split and the full test split. `model` replaces the model (e.g. a small one to try
    the command)."""
    online = hub_available() if online is None else online
    if online:
        return RunConfig(model=model or "gpt2", output_dir=DEMO_OUTPUT_DIR)
    if not local_data or not Path(local_data).exists():
        raise UserError(
            "the Hugging Face Hub is unreachable and no local data was given: pass --local-data with a folder "
            "holding rt-polarity.pos/.neg (make demo DATA_DIR=...)."
        )
    return RunConfig(model=model or "minilm", data_dir=local_data, output_dir=DEMO_OUTPUT_DIR)
