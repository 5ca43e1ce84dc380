"""Saving an adapter without ever losing or half-writing one, and loading it back onto the right base model."""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import peft
import torch
import transformers
from peft import PeftModel
from transformers import AutoTokenizer

from .errors import UserError
from .modeling import check_compatible, ensure_pad_token, load_model

METADATA_FILE = "peft_helpers.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def versions() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }


def base_model_metadata(model, base_model: str, label_names: list[str]) -> dict:
    """What an adapter needs from its base: checked again at load time."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    return {
        "base_model": base_model,
        "architecture": type(base).__name__,
        "model_type": base.config.model_type,
        "vocab_size": base.get_input_embeddings().num_embeddings,
        "label_names": list(label_names),
    }


def check_can_save(output_dir: str | Path, overwrite: bool) -> None:
    """Refuse a target that holds something, unless overwriting was asked for; call it before training too."""
    target = Path(output_dir)
    if target.exists() and not target.is_dir():
        raise UserError(f"{target} exists and is a file: choose another output_dir.")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise UserError(f"{target} already holds an adapter: pass --overwrite (overwrite=True) or choose another output_dir.")


def save_adapter(model: PeftModel, tokenizer, output_dir: str | Path, metadata: dict, overwrite: bool = False) -> Path:
    """Write adapter weights (safetensors), the tokenizer and `metadata` to `output_dir`.

    Everything is written to a temporary folder beside `output_dir` and renamed into place only when complete,
    so a crash, a full disk or Ctrl-C leaves either the old adapter or the new one, never a mix. An existing
    adapter is replaced only with `overwrite=True`.
    """
    if not isinstance(model, PeftModel):
        raise UserError("save_adapter expects the PeftModel from create_lora_model (not the base model).")
    target = Path(output_dir)
    check_can_save(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        full = {**metadata, "versions": versions(), "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (tmp / METADATA_FILE).write_text(json.dumps(full, indent=2, default=str))
        make_shareable(tmp)
        _swap_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def make_shareable(path: str | Path) -> None:
    """Give a file, or a folder and everything in it, the permissions a plain write would have (0644 / 0755
    under the usual umask). Temporary files and folders are created private (0600 / 0700), and so is the weights
    file the saving library writes, which breaks sharing a results file or an adapter folder."""
    umask = os.umask(0)
    os.umask(umask)
    path = Path(path)
    for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
        item.chmod((0o777 if item.is_dir() else 0o666) & ~umask)


def _swap_into_place(tmp: Path, target: Path) -> None:
    if not target.exists():
        tmp.rename(target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    old.rmdir()
    target.rename(old)
    try:
        tmp.rename(target)
    except BaseException:
        old.rename(target)  # put the previous adapter back
        raise
    shutil.rmtree(old, ignore_errors=True)


def read_metadata(adapter_dir: str | Path) -> dict:
    folder = Path(adapter_dir)
    if not folder.is_dir():
        raise UserError(f"adapter folder {folder} does not exist.")
    if not (folder / "adapter_config.json").is_file():
        raise UserError(f"{folder} is not a PEFT adapter (no adapter_config.json).")
    if not (folder / ADAPTER_WEIGHTS).is_file():
        raise UserError(
            f"{folder} has no {ADAPTER_WEIGHTS}; only safetensors adapters are loaded (pickled .bin files can run code)."
        )
    meta = folder / METADATA_FILE
    if not meta.is_file():
        raise UserError(
            f"{folder} has no {METADATA_FILE}, so its base model and labels are unknown: it was not saved by "
            "peft_helpers; load it with peft.AutoPeftModelForSequenceClassification instead."
        )
    return json.loads(meta.read_text())


def load_adapter(
    adapter_dir: str | Path,
    base_model: str | None = None,
    label_names: list[str] | None = None,
    device: str | None = None,
):
    """Load a saved adapter onto a freshly loaded base model; returns (model, tokenizer, metadata).

    The base defaults to the one recorded at save time. A different architecture, vocabulary or label set is
    refused: the adapter would load without complaint and predict noise.
    """
    metadata = read_metadata(adapter_dir)
    saved_labels = metadata["label_names"]
    if label_names is not None and list(label_names) != list(saved_labels):
        raise UserError(f"the adapter was trained for labels {saved_labels}, not {list(label_names)}.")
    base_name = base_model or metadata["base_model"]
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the "head newly initialised" report: the adapter replaces it
    try:
        model, _ = load_model(base_name, saved_labels, seed=0, device=device)
    finally:
        transformers.logging.set_verbosity(verbosity)
    tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir))  # the tokenizer saved with the adapter
    tokenizer.padding_side = "right"
    ensure_pad_token(tokenizer, model)
    expected = {k: metadata[k] for k in ("architecture", "vocab_size")}
    actual = {"architecture": type(model).__name__, "vocab_size": model.get_input_embeddings().num_embeddings}
    if expected != actual:
        raise UserError(
            f"adapter {adapter_dir} was trained on {metadata['base_model']} ({expected}), but {base_name} is {actual}: "
            f"load it with base_model={metadata['base_model']!r}."
        )
    check_compatible(model, tokenizer)
    try:
        peft_model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
    except RuntimeError as err:  # shape mismatches: same architecture, different size
        raise UserError(
            f"adapter {adapter_dir} does not fit {base_name}: {str(err).splitlines()[0]} "
            f"(it was trained on {metadata['base_model']})."
        ) from None
    peft_model.eval()
    return peft_model, tokenizer, metadata
