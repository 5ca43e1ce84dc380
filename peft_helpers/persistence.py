"""Saving an adapter without ever losing or half-writing one, and loading it back onto the right base model."""

from __future__ import annotations

import contextlib
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
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open
from transformers import AutoTokenizer

from .errors import UserError
from .methods import padding_side, reads_last_token
from .modeling import base_identity, check_compatible, ensure_pad_token, load_model

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
    """What an adapter needs from its base: checked again at load time (`check_base`)."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    return {
        "base_model": base_model,
        "architecture": type(base).__name__,
        "model_type": base.config.model_type,
        "vocab_size": base.get_input_embeddings().num_embeddings,
        "label_names": list(label_names),
        "base_identity": base_identity(base_model, base.config),
    }


def check_base(metadata: dict, base_model: str, adapter_dir) -> None:
    """Refuse a base model that is not the one the adapter was trained on: another size (layers, width,
    vocabulary) or other weights. Each would load without complaint and predict noise."""
    recorded = metadata.get("base_identity")
    if recorded is None:
        raise UserError(f"{adapter_dir} records no base_identity (saved by an older peft_helpers): save it again.")
    actual = base_identity(base_model)
    sizes = ("model_type", "num_hidden_layers", "hidden_size", "vocab_size")
    different = {k: (recorded.get(k), actual.get(k)) for k in sizes if recorded.get(k) != actual.get(k)}
    if different:
        detail = ", ".join(f"{k} {a} (adapter) vs {b}" for k, (a, b) in different.items())
        raise UserError(f"adapter {adapter_dir} was trained on {metadata['base_model']}, but {base_model} differs: "
                        f"{detail}; load it with base_model={metadata['base_model']!r}.")
    for key, what in (("weights_sha256", "weights"), ("config_sha256", "config.json")):
        if recorded[key] != actual[key]:
            raise UserError(f"adapter {adapter_dir} was trained on {metadata['base_model']}, but {base_model} has "
                            f"other {what} (same size, different files): load it with the base model it was "
                            "trained on.")


def check_adapter_keys(peft_model: PeftModel, adapter_dir) -> None:
    """Every tensor in the adapter file must have found its place in the model, and every adapter tensor of the
    model must have come from the file (peft only warns about either)."""
    with safe_open(str(Path(adapter_dir) / ADAPTER_WEIGHTS), framework="pt") as f:
        saved = set(f.keys())
    expected = set(get_peft_model_state_dict(peft_model).keys())
    missing, unexpected = sorted(expected - saved), sorted(saved - expected)
    if missing or unexpected:
        raise UserError(f"adapter {adapter_dir} does not fit this base model: {len(missing)} adapter weights "
                        f"missing (e.g. {missing[:1]}), {len(unexpected)} unexpected (e.g. {unexpected[:1]}).")


def check_can_save(output_dir: str | Path, overwrite: bool, what: str = "an adapter") -> None:
    """Refuse a target that holds something, unless overwriting was asked for; call it before training too."""
    target = Path(output_dir)
    if target.exists() and not target.is_dir():
        raise UserError(f"{target} exists and is a file: choose another output folder.")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise UserError(f"{target} already holds {what}: pass --overwrite (overwrite=True) or choose another folder.")


def save_initial_adapter(model: PeftModel, folder: str | Path) -> Path:
    """PiSSA rewrites the base weights (W = W_res + B A at the start), so its trained adapter only fits the
    rewritten base. Saving the untrained adapter lets save_adapter convert the trained one into a plain LoRA
    adapter (rank 2r) that fits the original base, which is what load_adapter and every stock loader use."""
    folder = Path(folder)
    config = model.peft_config[model.active_adapter]
    initial = config.init_lora_weights
    config.init_lora_weights = True  # peft's recipe: the saved config must not run the PiSSA init again
    try:
        model.save_pretrained(folder, safe_serialization=True)
    finally:
        config.init_lora_weights = initial
    return folder


def restore_saved_modules(model: PeftModel, weights_file: Path) -> None:
    """peft's PiSSA-to-LoRA conversion writes the converted LoRA tensors only, dropping modules_to_save (the
    trained head): a reload would then find no head. Put the tensors the conversion left out back in the file."""
    from safetensors.torch import load_file, save_file

    converted = load_file(str(weights_file))
    state = get_peft_model_state_dict(model)
    missing = {k: v.detach().cpu().contiguous() for k, v in state.items()
               if k not in converted and "lora_" not in k}
    if missing:
        save_file({**converted, **missing}, str(weights_file), metadata={"format": "pt"})


def is_pissa(model: PeftModel) -> bool:
    initial = getattr(model.peft_config[model.active_adapter], "init_lora_weights", None)
    return isinstance(initial, str) and initial.startswith("pissa")


@contextlib.contextmanager
def saving(output_dir: str | Path, model: PeftModel, metadata: dict, overwrite: bool = False,
           initial_adapter: str | Path | None = None):
    """Yields a temporary folder beside `output_dir` for the caller's peft `save_pretrained` calls (the adapter,
    the tokenizer); on leaving the block it adds `metadata` (peft_helpers.json) and a model card and renames the
    folder into place, so a crash, a full disk or Ctrl-C leaves the old adapter or the new one, never a mix. An
    existing adapter is replaced only with `overwrite=True`. A PiSSA adapter is saved again converted to a plain
    LoRA adapter that fits the original base weights, from `initial_adapter` (the untrained one that
    training.SaveInitialAdapter wrote before training)."""
    if not isinstance(model, PeftModel):
        raise UserError("saving expects the PeftModel made by get_peft_model (not the base model).")
    if is_pissa(model) and (initial_adapter is None or not Path(initial_adapter).is_dir()):
        raise UserError(f"a PiSSA adapter needs its untrained adapter to be converted, but {initial_adapter} does "
                        "not exist: train with training_callbacks(cfg), which saves it.")
    full = {**metadata, "versions": versions(), "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    # adapter_config.json names the base as recorded (a packaged model's Hub id, not the folder it loaded from)
    model.peft_config[model.active_adapter].base_model_name_or_path = metadata["base_model"]
    with staged_folder(output_dir, overwrite) as tmp:
        yield tmp
        if not (tmp / ADAPTER_WEIGHTS).is_file():
            raise UserError("nothing was saved in the block: call peft_model.save_pretrained(folder) there.")
        if is_pissa(model):
            model.save_pretrained(tmp, safe_serialization=True,
                                  path_initial_model_for_weight_conversion=str(initial_adapter))
            restore_saved_modules(model, tmp / ADAPTER_WEIGHTS)
        (tmp / METADATA_FILE).write_text(json.dumps(full, indent=2, default=str))
        (tmp / "README.md").write_text(model_card(full, merged=False))


def save_adapter(model: PeftModel, tokenizer, output_dir: str | Path, metadata: dict, overwrite: bool = False,
                 initial_adapter: str | Path | None = None) -> Path:
    """peft's save_pretrained (adapter weights as safetensors and adapter_config.json) and the tokenizer's, through
    `saving`: written to a temporary folder with `metadata` and renamed into place when complete."""
    with saving(output_dir, model, metadata, overwrite, initial_adapter) as folder:
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
    return Path(output_dir)


@contextlib.contextmanager
def staged_folder(output_dir: str | Path, overwrite: bool = False, what: str = "an adapter"):
    """Fill a folder atomically: the block fills the temporary folder it is given, beside `output_dir`, which is
    renamed into place only when the block ends without an error, so a crash, a full disk or Ctrl-C leaves the old
    folder or the new one, never a mix. An existing folder is replaced only with `overwrite=True`. Used for
    adapters and exports."""
    target = Path(output_dir)
    recover_interrupted_save(target)
    check_can_save(target, overwrite, what)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        make_shareable(tmp)
        _swap_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def model_card(metadata: dict, merged: bool) -> str:
    """README.md for an adapter folder or a merged export: what it is, how it was trained and scored, how to load it."""
    cfg, metrics, names = metadata.get("config", {}), metadata.get("metrics", {}), metadata["label_names"]
    data = cfg.get("dataset") or cfg.get("data_dir") or "rotten_tomatoes (Hugging Face Hub)"
    rows = "\n".join(
        f"| {k} | {metrics['baseline'][k]:.4f} | {metrics['finetuned'][k]:.4f} |"
        for k, v in metrics.get("finetuned", {}).items() if isinstance(v, float) and k in metrics.get("baseline", {})
    )
    labels = ", ".join(f"{i}: {n}" for i, n in enumerate(names))
    method = cfg.get("method", "lora")
    options = ", ".join(f"{k}={cfg[k]}" for k in ("r", "alpha", "dropout", "num_virtual_tokens") if cfg.get(k) is not None)
    targets = "" if cfg.get("num_virtual_tokens") else (
        f", target modules {cfg.get('target_modules') or 'the architecture default'}")
    if merged:
        top_k = {"multi-label": (', top_k=None)  # one sigmoid per label; a label is predicted at >= '
                                 f'{metadata.get("threshold", 0.5)} (config.decision_threshold)'),
                 "regression": ")  # the score: the model's one output"}.get(metadata.get("problem"), ")")
        load = ('from transformers import pipeline\n\nclassify = pipeline("text-classification", model="THIS_FOLDER"'
                f'{top_k}\nclassify("A gripping, beautifully acted film.")')
        what = (f"the {method} weights merged into the base model, classification head included: a plain "
                "transformers model, no peft needed")
    else:
        load = ("from peft import AutoPeftModelForSequenceClassification\n\n"
                f"model = AutoPeftModelForSequenceClassification.from_pretrained(\n    \"THIS_FOLDER\", num_labels={len(names)},\n"
                f"    id2label={dict(enumerate(names))!r},\n    label2id={ {n: i for i, n in enumerate(names)}!r})\n"
                "# trained on float32 weights: if the base is stored in bf16/fp16, add dtype=torch.float32\n"
                "# (transformers 5 loads a checkpoint in its stored dtype; before 4.56 the argument is torch_dtype)\n"
                "# or, with this project's checks: peft_helpers.load_adapter(\"THIS_FOLDER\")")
        what = (f"a {method} adapter (peft) for the base model below; the new classification head is saved with "
                "it (modules_to_save)")
    return f"""---
library_name: {"transformers" if merged else "peft"}
base_model: {metadata['base_model']}
pipeline_tag: text-classification
---

# {metadata['base_model']} fine-tuned with {method} for text classification

This folder holds {what}. Made with `peft_helpers` (LightweightFineTuning project).

- Base model: `{metadata['base_model']}` ({metadata.get('architecture', '')})
- Data: {data}; labels {labels}
- Method: {method}, {options}{targets}; {cfg.get('epochs')} epoch(s) at learning rate
  {cfg.get('learning_rate')}, batch size {cfg.get('batch_size')}, max_length {cfg.get('max_length')}, seed {cfg.get('seed')}

| metric (test split) | pretrained, new head | fine-tuned |
| --- | --- | --- |
{rows}

## How to load

```python
{load}
```
"""


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
    old = target.parent / f".{target.name}.old-{tmp.name.rsplit('-', 1)[-1]}"
    target.rename(old)
    try:
        tmp.rename(target)
    except BaseException:
        old.rename(target)  # put the previous adapter back
        raise
    try:
        shutil.rmtree(old)
    except OSError as err:  # the new adapter is in place; say what is left over instead of hiding it
        print(f"warning: the replaced adapter could not be deleted ({err}); remove {old} yourself.")


def recover_interrupted_save(target: str | Path) -> None:
    """A save killed between its two renames leaves the previous adapter as .<name>.old-* and no <name>: put it
    back. Temporary folders of killed saves (.<name>.tmp-*) are incomplete: delete them."""
    target = Path(target)
    for tmp in target.parent.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(tmp)
    olds = sorted(target.parent.glob(f".{target.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if olds and not target.exists():
        olds.pop().rename(target)
        print(f"Recovered {target} from a save that was interrupted.")
    for old in olds:
        shutil.rmtree(old)


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

    The base defaults to the one recorded at save time. Another architecture, size, weights or label set is
    refused, and so is an adapter file whose tensors do not all fit the model.
    """
    metadata = read_metadata(adapter_dir)
    saved_labels = metadata["label_names"]
    if label_names is not None and list(label_names) != list(saved_labels):
        raise UserError(f"the adapter was trained for labels {saved_labels}, not {list(label_names)}.")
    base_name = base_model or metadata["base_model"]
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the "head newly initialised" report: the adapter replaces it
    try:
        model, _ = load_model(base_name, saved_labels, seed=0, device=device,
                              method=metadata.get("config", {}).get("method", "lora"),
                              problem=metadata.get("problem", "single-label"))
    finally:
        transformers.logging.set_verbosity(verbosity)
    if type(model).__name__ != metadata["architecture"]:
        raise UserError(
            f"adapter {adapter_dir} was trained on {metadata['base_model']} ({metadata['architecture']}), but "
            f"{base_name} is a {type(model).__name__}: load it with base_model={metadata['base_model']!r}."
        )
    check_base(metadata, base_name, adapter_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir))  # the tokenizer saved with the adapter
    tokenizer.padding_side = padding_side(metadata.get("config", {}).get("method", "lora"), reads_last_token(model))
    ensure_pad_token(tokenizer, model)
    check_compatible(model, tokenizer)
    try:
        peft_model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
    except (RuntimeError, KeyError) as err:  # shape mismatches; a tensor the adapter's config needs is missing
        raise UserError(
            f"adapter {adapter_dir} does not fit {base_name}: {type(err).__name__} {str(err).splitlines()[0]} "
            f"(it was trained on {metadata['base_model']})."
        ) from None
    check_adapter_keys(peft_model, adapter_dir)
    if "threshold" in metadata:  # multi-label: inference.predict decides with the threshold tuned on validation
        peft_model.config.decision_threshold = metadata["threshold"]
    peft_model.eval()
    return peft_model, tokenizer, metadata


def check_loaded(peft_model: PeftModel, tokenizer, adapter_dir: str | Path) -> dict:
    """The package's checks on an adapter loaded with peft's own loaders (AutoPeftModelForSequenceClassification
    or PeftModel.from_pretrained), as the notebook does: the recorded base and labels, every adapter tensor in
    place, the pad token. Returns the adapter's metadata."""
    metadata = read_metadata(adapter_dir)
    base = peft_model.get_base_model()
    names = [base.config.id2label[i] for i in range(base.config.num_labels)]
    if names != metadata["label_names"]:
        raise UserError(f"the model was loaded with labels {names}, but the adapter was trained for "
                        f"{metadata['label_names']}: pass num_labels, id2label and label2id when loading.")
    base_name = peft_model.peft_config[peft_model.active_adapter].base_model_name_or_path
    check_base(metadata, base_name, adapter_dir)
    check_adapter_keys(peft_model, adapter_dir)
    ensure_pad_token(tokenizer, base)
    tokenizer.padding_side = padding_side(metadata.get("config", {}).get("method", "lora"), reads_last_token(base))
    check_compatible(base, tokenizer)
    return metadata
