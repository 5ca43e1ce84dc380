"""Loading a pretrained model for sequence classification and wrapping it in a LoRA adapter."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    set_seed,
)
from transformers.pytorch_utils import Conv1D

from .compat import dtype_kwarg
from .config import RunConfig
from .errors import UserError
from .methods import build_config, check_fits, check_prefix_tuning, default_targets, get_method, padding_side
from .offline import OFFLINE_MODELS, offline_model_name, offline_model_path

# Heads of *ForSequenceClassification models: GPT-2/Llama call it `score`, BERT-style models `classifier`.
HEAD_NAMES = ("score", "classifier")


def resolve_model(model: str) -> str:
    """Where to load `model` from: an offline packaged model's folder, a local folder, or a Hub id as given."""
    if offline_model_name(model):
        return str(offline_model_path(model))
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise UserError(
                f"{model} is not a model folder (no config.json): give a folder written by save_pretrained, "
                f"a Hub id such as 'gpt2', or one of {sorted(OFFLINE_MODELS)}."
            )
        return str(path)
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise UserError(f"model folder {model} does not exist.")
    return model  # a Hub id


def load_config(model: str):
    """The model's config, with Hub failures turned into a message that says what to do."""
    source = resolve_model(model)
    try:
        return AutoConfig.from_pretrained(source)
    except OSError as err:
        raise UserError(
            f"could not load model {model!r} ({str(err).splitlines()[0]}). Check the name and your network, "
            f"or use a local folder or an offline model: --model minilm (or smollm2)."
        ) from None
    except ValueError as err:  # unknown model_type, or a config that needs remote code
        raise UserError(f"{model!r} is not a supported transformers model: {str(err).splitlines()[0]}") from None


def load_tokenizer(model: str) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(model))
    tokenizer.padding_side = "right"  # the head reads the last non-pad token (GPT-2, Llama) or [CLS] (BERT)
    return tokenizer


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel | None = None) -> None:
    """GPT-2 has no pad token: reuse EOS for padding and tell the model, so that batches with more than one
    example work and the classifier reads the last real token of each row, not a pad position."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise UserError("the tokenizer has neither a pad nor an EOS token: set tokenizer.pad_token yourself.")
        tokenizer.pad_token = tokenizer.eos_token
    if model is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id


def max_positions(config) -> int | None:
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_compatible(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, max_length: int | None = None) -> None:
    """Catch pairings that would crash deep in a forward pass or silently read garbage embeddings."""
    vocab = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > vocab:
        raise UserError(
            f"tokenizer has {len(tokenizer)} tokens but the model's embedding has {vocab}: "
            "use the tokenizer that belongs to the model."
        )
    limit = max_positions(model.config)
    if max_length is not None and limit is not None and max_length > limit:
        raise UserError(f"max_length={max_length} exceeds the model's {limit} positions: use max_length <= {limit}.")


def load_model(
    model: str, label_names: list[str], seed: int = 42, max_length: int | None = None, device: str | None = None,
    quantize_4bit: bool = False, attention: str = "auto",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A pretrained model with a freshly initialised (seeded) classification head for `label_names`, and its
    tokenizer with a pad token. Never runs remote code. `quantize_4bit`: the base in NF4 (QLoRA; CUDA only).
    `attention`: "auto" (the model's default) or an attn_implementation for transformers, "sdpa" or "eager"."""
    load_config(model)  # clear errors before any weights are read
    tokenizer = load_tokenizer(model)
    set_seed(seed)  # the new head's initial weights
    id2label = dict(enumerate(label_names))
    extra = quantization_kwargs() if quantize_4bit else dtype_kwarg(torch.float32)
    if attention != "auto":  # chosen when the model loads: transformers 4.46 fixes the attention modules there
        extra["attn_implementation"] = attention
    net = AutoModelForSequenceClassification.from_pretrained(
        resolve_model(model),
        num_labels=len(label_names),
        id2label=id2label,
        label2id={name: i for i, name in id2label.items()},
        **extra,
    )
    ensure_pad_token(tokenizer, net)
    check_compatible(net, tokenizer, max_length)
    if quantize_4bit:  # placed on the GPU by the quantised loading; layer norms to fp32, inputs need gradients
        from peft import prepare_model_for_kbit_training

        return prepare_model_for_kbit_training(net, use_gradient_checkpointing=False), tokenizer
    return net.to(device or default_device()), tokenizer


def set_model_dropout(model: torch.nn.Module, p: float | None) -> None:
    """Set every dropout of the pretrained model to `p` (None: leave the model's own). Call it before the adapter
    is added, so the adapter's own dropout keeps its setting. Covers nn.Dropout modules (BERT, GPT-2; BERT's
    attention dropout in transformers 5) and the dropout probabilities attention modules keep as plain floats and
    hand to their attention kernel: Llama-style `attention_dropout`, BERT's `dropout_prob` in transformers 4.x."""
    if p is None:
        return
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = p
            continue
        for name, value in vars(module).items():
            if "dropout" in name and isinstance(value, float):
                setattr(module, name, p)


def quantization_kwargs() -> dict:
    """QLoRA's base: NF4 weights with double quantisation, bf16 compute (the QLoRA paper's settings). The new
    classification head stays in full precision: it is trained in full (modules_to_save), and bitsandbytes cannot
    run a head that was created after quantisation (found on an H200: an assertion in its 4-bit forward)."""
    from transformers import BitsAndBytesConfig

    from .methods import qlora_problem

    if problem := qlora_problem():
        raise UserError(problem + ".")
    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.bfloat16, llm_int8_skip_modules=list(HEAD_NAMES))
    return {"quantization_config": bnb, "device_map": {"": torch.cuda.current_device()}}  # each process its own GPU


def default_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def head_name(model: PreTrainedModel) -> str:
    for name in HEAD_NAMES:
        if isinstance(getattr(model, name, None), torch.nn.Module):
            return name
    raise UserError(f"{type(model).__name__} has no 'score' or 'classifier' head; it is not a sequence classifier.")


def default_target_modules(model: PreTrainedModel) -> list[str]:
    model_type = model.config.model_type
    targets = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type)
    if not targets:
        raise UserError(
            f"no default LoRA targets for model type {model_type!r}: pass target_modules, e.g. the attention "
            "projections' names from print(model)."
        )
    return list(targets)


def lora_config(model: PreTrainedModel, cfg: RunConfig) -> LoraConfig:
    """LoRA settings for `model`: per-architecture targets, Conv1D layout for GPT-2, a trained and saved head."""
    cfg.require_resolved()
    targets = list(cfg.target_modules) if cfg.target_modules else default_target_modules(model)
    check_layers(model.config, cfg.layers)
    if not matching_modules(model, targets):
        raise UserError(f"target_modules {targets} match no module of {type(model).__name__}; see print(model).")
    fan_in_fan_out = uses_conv1d(model, targets)
    return LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=targets,
        fan_in_fan_out=fan_in_fan_out,
        modules_to_save=[head_name(model)],
        layers_to_transform=cfg.layers,
    )


def matching_modules(model: PreTrainedModel, targets: list[str]) -> list[torch.nn.Module]:
    """The modules whose name is, or ends in, one of `targets` (how peft matches target_modules given as names)."""
    return [module for name, module in model.named_modules() if any(name == t or name.endswith("." + t) for t in targets)]


def uses_conv1d(model: PreTrainedModel, targets: list[str]) -> bool:
    """GPT-2's attention uses Conv1D, whose weight is stored transposed (in, out) compared with nn.Linear: LoRA
    needs fan_in_fan_out=True there."""
    return any(isinstance(module, Conv1D) for module in matching_modules(model, targets))


def reads_last_token(model: PreTrainedModel) -> bool:
    """Decoder classifiers (GPT-2, Llama: head `score`) read the last real token; encoders read [CLS]."""
    return head_name(model) == "score"


def adapter_targets(model: PreTrainedModel, cfg: RunConfig) -> list[str] | None:
    """The modules the method adapts (None for prompt methods): the run's, or peft's default for the method."""
    if get_method(cfg.method).prompt:
        return None
    targets = list(cfg.target_modules) if cfg.target_modules else default_targets(cfg.method, model.config.model_type)
    if not targets:
        raise UserError(f"no default {cfg.method} targets for model type {model.config.model_type!r}: pass "
                        "target_modules, e.g. the attention projections' names from print(model).")
    if not matching_modules(model, targets):
        raise UserError(f"target_modules {targets} match no module of {type(model).__name__}; see print(model).")
    return targets


def check_layers(config, layers: list[int] | None) -> None:
    """Refuse layer numbers the model does not have (peft would say only that no target module was found)."""
    count = getattr(config, "num_hidden_layers", None)
    if layers and count is not None and max(layers) >= count:
        raise UserError(f"layers {layers}: this model has {count} layers, numbered 0 to {count - 1}.")


def check_method_fits(model: PreTrainedModel, cfg: RunConfig) -> list[str] | None:
    """Refuse a method that does not fit this architecture or these lengths (works on an empty-weights model).
    Returns the method's target modules (None for prompt methods)."""
    targets = adapter_targets(model, cfg)
    check_layers(model.config, cfg.layers)
    check_fits(cfg.method, model.config, cfg.max_length, cfg.num_virtual_tokens,
               targets is not None and uses_conv1d(model, targets))
    if cfg.method == "prefix_tuning":
        check_prefix_tuning(model)
    return targets


def skeleton(model: str) -> PreTrainedModel:
    """The classifier's structure built from config.json with empty weights: module types, no memory, no weights."""
    from accelerate import init_empty_weights

    config = load_config(model)
    config.num_labels = 2
    with init_empty_weights():
        return AutoModelForSequenceClassification.from_config(config)


def is_decoder(model: str) -> bool:
    return reads_last_token(skeleton(model))


def check_method_before_loading(cfg: RunConfig) -> None:
    """check_method_fits on the model's skeleton: a method that cannot work is refused before data or weights
    load."""
    check_method_fits(skeleton(cfg.model), cfg)


def peft_config(model: PreTrainedModel, cfg: RunConfig, total_steps: int | None = None):
    """The peft config of cfg.method for `model`: per-architecture targets, Conv1D layout for GPT-2, and the new
    head trained and saved (modules_to_save). `total_steps` (optimizer steps) is needed by AdaLoRA's schedule."""
    cfg.require_resolved()
    if cfg.method == "lora":
        return lora_config(model, cfg)  # the notebook writes this one out
    targets = check_method_fits(model, cfg)
    conv1d = targets is not None and uses_conv1d(model, targets)
    return build_config(cfg.method, cfg, model.config.model_type, targets, conv1d, head_name(model), total_steps)


def create_peft_model(model: PreTrainedModel, cfg: RunConfig, total_steps: int | None = None) -> PeftModel:
    """Wrap `model` with cfg.method (seeded: adapter weights start random)."""
    config = peft_config(model, cfg, total_steps)
    set_seed(cfg.seed)
    peft_model = get_peft_model(model, config)
    if cfg.method == "adalora":
        freeze_adalora_ranknum(peft_model)
    return peft_model


def freeze_adalora_ranknum(peft_model: PeftModel) -> None:
    """AdaLoRA divides its update by `ranknum`, a constant (the initial rank) that is not saved with the adapter.
    When peft moves the adapter to the base layer's device or dtype (a model on a GPU), it stores the moved
    tensor back into a ParameterDict, which makes it a new, trainable Parameter: training then changes the
    constant, and the reloaded adapter (ranknum = r again) gives other logits (0.24 on an H200). Freeze it again."""
    for name, param in peft_model.named_parameters():
        if ".ranknum." in name:
            param.requires_grad_(False)


def create_lora_model(model: PreTrainedModel, cfg: RunConfig) -> PeftModel:
    """create_peft_model under its older name (cfg.method decides the method)."""
    return create_peft_model(model, cfg)


def set_padding_side(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel, method: str) -> None:
    tokenizer.padding_side = padding_side(method, reads_last_token(model))


@dataclass
class ParameterCount:
    trainable: int
    total: int

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        return f"trainable params: {self.trainable:,} || all params: {self.total:,} || trainable%: {self.percent:.4f}"


def count_parameters(model: torch.nn.Module) -> ParameterCount:
    """Trainable vs total parameters; for a PeftModel the total counts base, adapter and the head copy once each."""
    if isinstance(model, PeftModel):
        trainable, total = model.get_nb_trainable_parameters()
        return ParameterCount(int(trainable), int(total))
    params = list(model.parameters())
    return ParameterCount(sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params))


def model_folder(model: str) -> Path:
    """The folder the model's files were loaded from: a local folder, or the Hub cache's snapshot."""
    source = resolve_model(model)
    if Path(source).is_dir():
        return Path(source)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source, local_files_only=True))
    except Exception as err:  # not in the cache: the model was never loaded on this machine
        raise UserError(f"model {model!r} is not in the local Hugging Face cache ({type(err).__name__}): load it once "
                        "with network access, or give a local folder.") from None


def base_identity(model: str, config=None) -> dict:
    """What identifies a base model: its size, and SHA-256 digests of its config.json and weight files (as
    stored, so the same checkpoint gives the same digest on any machine and library version)."""
    folder = model_folder(model)
    config = config if config is not None else AutoConfig.from_pretrained(str(folder))
    weights = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not weights:
        raise UserError(f"{folder} holds no *.safetensors or *.bin weights.")
    digest = hashlib.sha256()
    for file in weights:
        digest.update(file.name.encode())
        with open(file, "rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
    return {
        "model_type": config.model_type,
        "num_hidden_layers": getattr(config, "num_hidden_layers", None),
        "hidden_size": getattr(config, "hidden_size", None),
        "vocab_size": getattr(config, "vocab_size", None),
        "config_sha256": hashlib.sha256((folder / "config.json").read_bytes()).hexdigest(),
        "weights_sha256": digest.hexdigest(),
    }
