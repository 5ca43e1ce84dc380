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
    try:
        from huggingface_hub import HfApi

        HfApi().model_info("openai-community/gpt2", timeout=timeout)
        return True
    except Exception:
        return False


def demo_config(local_data: str | None, online: bool | None = None) -> RunConfig:
    """GPT-2 on the Hub's Rotten Tomatoes online; offline the packaged MiniLM on a local copy of the data.
    Both use the full train split and the full test split."""
    online = hub_available() if online is None else online
    if online:
        return RunConfig(model="gpt2", output_dir=DEMO_OUTPUT_DIR)
    if not local_data or not Path(local_data).exists():
        raise UserError(
            "the Hugging Face Hub is unreachable and no local data was given: pass --local-data with a folder "
            "holding rt-polarity.pos/.neg (make demo DATA_DIR=...)."
        )
    return RunConfig(model="minilm", data_dir=local_data, output_dir=DEMO_OUTPUT_DIR)
