"""Loading a pretrained model for sequence classification (stock from_pretrained, with checks) and wrapping it in
the run's PEFT method (methods.peft_config, then peft's get_peft_model)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftModel, get_peft_model
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    set_seed,
)

from .compat import dtype_kwarg
from .config import RunConfig
from .data import PROBLEMS
from .errors import UserError
from .methods import HEAD_NAMES, check_fits, max_positions, padding_side, peft_config, reads_last_token
from .offline import OFFLINE_MODELS, hub_cache_kwargs, offline_model_name, offline_model_path


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


def from_pretrained_kwargs(method: str = "lora", model_dropout: float | None = None, source: str | None = None) -> dict:
    """What from_pretrained needs besides the labels: float32 weights, as trained (transformers 5 loads a checkpoint
    in its stored dtype, often bf16); for QLoRA the 4-bit base; for a packaged model named by its Hub id where the
    Hub is unreachable, the packaged copy (offline.hub_cache_kwargs). With `model_dropout`, every dropout probability of
    the model's config (`source`'s: BERT's hidden and attention dropout, GPT-2's *_pdrop, Llama's attention_dropout)
    is set to it through from_pretrained's config overrides, so transformers builds the model with that dropout."""
    kwargs = quantization_kwargs() if method == "qlora" else dtype_kwarg(torch.float32)
    if source is not None:
        kwargs.update(hub_cache_kwargs(source))  # a packaged model by its Hub id, offline
    if model_dropout is not None:
        config = AutoConfig.from_pretrained(source).to_dict()
        kwargs.update({k: model_dropout for k, v in config.items()
                       if isinstance(v, float) and ("dropout" in k or k.endswith("pdrop"))})
    return kwargs


def ready_for_classification(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, method: str = "lora",
                             max_length: int | None = None, device: str | None = None) -> PreTrainedModel:
    """After from_pretrained: a pad token where the tokenizer has none (GPT-2), the padding side the method needs,
    the checks that catch a wrong tokenizer or max_length, and the model on the device (QLoRA: its 4-bit base is
    placed already; layer norms go to fp32 and inputs need gradients)."""
    ensure_pad_token(tokenizer, model)
    check_compatible(model, tokenizer, max_length)
    tokenizer.padding_side = padding_side(method, reads_last_token(model))
    if method == "qlora":  # a reloaded PeftModel (AutoPeftModel...from_pretrained) is ready as it is
        from peft import prepare_model_for_kbit_training

        return model if isinstance(model, PeftModel) else prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return model.to(device or default_device())


def load_model(model: str, label_names: list[str], seed: int = 42, max_length: int | None = None,
               device: str | None = None, method: str = "lora", model_dropout: float | None = None,
               problem: str = "single-label") -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A pretrained model with a freshly initialised (seeded) head for `label_names` (one output per label; one
    for regression, label_names ["score"]), and its tokenizer, ready_for_classification: the notebook's loading
    cell in one call. `problem` (data.PROBLEMS) sets config.problem_type, which picks the model's own loss:
    cross-entropy, BCE with one sigmoid per label, or MSE. Never runs remote code."""
    load_config(model)  # clear errors before any weights are read
    tokenizer = load_tokenizer(model)
    set_seed(seed)  # the new head's initial weights
    id2label = dict(enumerate(label_names))
    net = AutoModelForSequenceClassification.from_pretrained(
        resolve_model(model), num_labels=len(label_names), id2label=id2label,
        label2id={name: i for i, name in id2label.items()}, problem_type=PROBLEMS[problem],
        **from_pretrained_kwargs(method, model_dropout, resolve_model(model)))
    return ready_for_classification(net, tokenizer, method, max_length, device), tokenizer


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
    """methods.check_fits on the model's skeleton: a method that cannot work is refused before data or weights
    load."""
    check_fits(skeleton(cfg.model), cfg)


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
