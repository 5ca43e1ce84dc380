"""A standalone model from an adapter: LoRA merged into the base weights, classification head, labels, pad token and
tokenizer in one folder that plain `transformers` loads (no peft), and that `pipeline("text-classification")`
takes as it is. The export checks its own logits against the adapter's before it is put in place."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from datasets import DatasetDict

from .config import RunConfig
from .data import load_run_data, tokenize
from .errors import UserError
from .evaluation import RELOAD_TOLERANCE, predict_logits
from .methods import get_method
from .persistence import METADATA_FILE, check_can_save, load_adapter, model_card, read_metadata, staged_folder


def reference_texts(metadata: dict, limit: int = 512):
    """The test split the adapter was scored on (from its recorded settings), at most `limit` rows, to compare the
    export's logits with the adapter's."""
    settings = {k: v for k, v in metadata["config"].items() if k in RunConfig.__dataclass_fields__}
    try:
        data = load_run_data(RunConfig(**settings))
    except UserError as err:
        raise UserError(f"cannot load the data the adapter was tested on to check the export ({err}); "
                        "pass --check-data with a data folder or file.") from None
    test = data["test"]
    return test.select(range(min(limit, len(test))))


def export_merged(adapter_dir: str | Path, out_dir: str | Path, overwrite: bool = False, check_data: str | None = None) -> dict:
    """Merge the adapter into its base model and save the result to `out_dir` (safetensors only, atomically).
    Returns {"out_dir", "checked_rows", "max_logit_diff"}; raises if the merged logits differ from the adapter's."""
    check_can_save(out_dir, overwrite, "files")  # before the slow work; checked again when writing
    method = read_metadata(adapter_dir).get("config", {}).get("method", "lora")
    if method == "qlora":  # merged into the 4-bit weights the update is rounded away; merged into the full-precision
        # weights it meets weights it was never trained with: either way the predictions change
        raise UserError(f"{adapter_dir} is a qlora adapter: it was trained against the 4-bit base, so merging it "
                        "changes its predictions; share the adapter folder itself (peft loads it with the 4-bit base).")
    if not get_method(method).mergeable:
        raise UserError(f"{adapter_dir} is a {method} adapter: its virtual tokens are added at run time, so there are "
                        "no weights to merge; share the adapter folder itself (peft loads it).")
    model, tokenizer, metadata = load_adapter(adapter_dir, device="cpu")
    if check_data is not None:
        metadata = {**metadata, "config": {**metadata["config"], "data_dir": check_data, "dataset": None}}
    cfg = metadata["config"]
    texts = reference_texts(metadata)
    reference = tokenize(DatasetDict({"test": texts}), tokenizer, cfg.get("max_length", 128),
                         cfg.get("truncation", "head"))["test"]
    expected = predict_logits(model, tokenizer, reference, desc="Adapter")
    merged = model.merge_and_unload()  # the head (modules_to_save) replaces the base model's new head
    actual = predict_logits(merged, tokenizer, reference, desc="Merged")
    difference = float(np.abs(actual - expected).max())
    if difference > RELOAD_TOLERANCE:
        raise RuntimeError(f"the merged model's logits differ from the adapter's by {difference:g} (more than "
                           f"{RELOAD_TOLERANCE:g}); nothing was written")
    card = {**metadata, "export": {"from_adapter": str(Path(adapter_dir).resolve()), "checked_rows": len(reference),
                                   "max_logit_diff": difference}}

    with staged_folder(out_dir, overwrite, "files") as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / METADATA_FILE).write_text(json.dumps(card, indent=2, default=str))
        (tmp / "README.md").write_text(model_card(card, merged=True))
    return {"out_dir": str(out_dir), "checked_rows": len(reference), "max_logit_diff": difference}


def push_to_hub(folder: str | Path, repo_id: str) -> str:
    """Upload an exported folder with huggingface_hub; without network or token, one clear error (the folder
    stays as it is)."""
    from huggingface_hub import HfApi

    from .compat import network_errors

    try:
        api = HfApi()
        api.create_repo(repo_id, exist_ok=True)
        return str(api.upload_folder(folder_path=str(folder), repo_id=repo_id))
    except network_errors() as err:
        raise UserError(f"could not push to the Hub ({type(err).__name__}: {str(err).splitlines()[0][:120]}): check "
                        f"the network and `huggingface-cli login`; {folder} is complete and unchanged.") from None
