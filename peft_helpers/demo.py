"""Settings of `make demo`: the real thing online, a packaged real model and local data offline."""

from __future__ import annotations

from pathlib import Path

from .config import RunConfig
from .errors import UserError
from .offline import hub_available

DEMO_OUTPUT_DIR = "saved_adapters/demo"
# The offline demo (MiniLM on two CPU cores) trains 2 epochs instead of `run`'s tuned 3, with the model's and the
# adapter's dropout at 0 (set in the model's config when it loads: transformers builds it so), to stay near five
# minutes: 1.37x faster than with dropout 0.1, and 82.9% against 82.7% on the test split (BENCHMARKS.md, "The stock
# pipeline"). It watches no validation split while training: nothing in the demo reads it (the last adapter is
# kept, the test split is what it reports).
OFFLINE_DEMO_SETTINGS = {"epochs": 2.0, "model_dropout": 0.0, "dropout": 0.0, "validation": False}


def demo_config(local_data: str | None, online: bool | None = None, model: str | None = None) -> RunConfig:
    """GPT-2 on the Hub's Rotten Tomatoes online (its tuned `run` settings); offline the packaged MiniLM on a local
    copy of the data, with OFFLINE_DEMO_SETTINGS. Both use the full train split and the full test split. `model`
    replaces the model (e.g. a small one to try the command)."""
    online = hub_available() if online is None else online
    if online:
        return RunConfig(model=model or "gpt2", output_dir=DEMO_OUTPUT_DIR)
    if not local_data or not Path(local_data).exists():
        raise UserError(
            "the Hugging Face Hub is unreachable and no local data was given: pass --local-data with a folder "
            "holding rt-polarity.pos/.neg (make demo DATA_DIR=...)."
        )
    return RunConfig(model=model or "minilm", data_dir=local_data, output_dir=DEMO_OUTPUT_DIR, **OFFLINE_DEMO_SETTINGS)


def machine_line() -> str:
    """What the demo runs on, first thing printed, so that its time can be compared between machines: the GPU's
    name, or on a CPU its fp32 matrix-product rate (about 2 seconds to measure) and vector instructions."""
    import torch

    if torch.cuda.is_available():
        return f"Machine: {torch.cuda.get_device_name()} (GPU)"
    from .hardware import cpu_instructions, matmul_gflops

    threads = torch.get_num_threads()
    return (f"Machine: fp32 matrix products at {matmul_gflops(threads, repeats=3):.0f} GFLOP/s with {threads} CPU "
            f"threads, {cpu_instructions()} (BENCHMARKS.md, \"The stock pipeline\", gives the demo's minutes against "
            "this rate)")
