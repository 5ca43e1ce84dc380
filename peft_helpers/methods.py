"""Every PEFT method the package trains, in one table: which options each takes, its defaults, which architectures it
fits, and `peft_config(model, cfg)`: the one function that builds a method's peft config from a RunConfig.
Imports nothing else of the package but errors, so config, modeling and the notebook can all use it.

One entry per method, as peft has one config class per method. Learning rates are given relative to the
architecture family's LoRA rate (config.FAMILY_DEFAULTS), because what differs between families (an encoder of 6
layers, a decoder of 30) scales every method alike, while what differs between methods (a prompt of 20 vectors
against rank-16 updates of every projection) is the order of magnitude (BENCHMARKS.md, "PEFT methods").
"""

from __future__ import annotations

import importlib.util
import inspect
from dataclasses import dataclass, field

import peft
import torch
from peft.utils import other
from transformers.pytorch_utils import Conv1D

from .errors import UserError

# RunConfig fields that are options of a method (None there = the method's default, or "not given").
METHOD_OPTIONS = ("r", "alpha", "dropout", "target_modules", "num_virtual_tokens", "layers")


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    options: tuple[str, ...]  # which METHOD_OPTIONS it takes; any other given is refused
    lr_scale: float = 1.0  # learning rate = family LoRA rate * lr_scale
    defaults: dict = field(default_factory=dict)  # option defaults that differ from the family's LoRA ones
    prompt: bool = False  # prompt learning: virtual tokens instead of weight updates (nothing to merge)
    conv1d: bool = True  # can adapt GPT-2's Conv1D layers
    mergeable: bool = True


LORA_OPTIONS = ("r", "alpha", "dropout", "target_modules", "layers")
METHODS: dict[str, Method] = {m.name: m for m in (
    Method("lora", "LoRA: a trained low-rank update B A added to each target weight", LORA_OPTIONS),
    Method("dora", "DoRA: LoRA on the direction, plus a trained magnitude per output (use_dora)", LORA_OPTIONS),
    Method("rslora", "rank-stabilised LoRA: scale alpha / sqrt(r) instead of alpha / r (use_rslora)", LORA_OPTIONS),
    Method("pissa", "LoRA started from the weights' principal singular vectors (init_lora_weights='pissa')",
           LORA_OPTIONS),
    # LoHa, LoKr and AdaLoRA learn slower than LoRA at its rate (BENCHMARKS.md: MiniLM, 1 epoch, 1x -> 3x / 10x:
    # LoHa 78.6 -> 82.0%, LoKr 76.1 -> 78.5%, AdaLoRA 60.7 -> 78.9 -> 81.5%).
    Method("loha", "LoHa: the update is a Hadamard product of two low-rank products", LORA_OPTIONS, lr_scale=3.0,
           conv1d=False),
    Method("lokr", "LoKr: the update is a Kronecker product with a low-rank factor", LORA_OPTIONS, lr_scale=3.0,
           conv1d=False),
    Method("adalora", "AdaLoRA: SVD-form LoRA whose rank budget is moved to the layers that need it during training",
           LORA_OPTIONS, lr_scale=10.0),
    Method("ia3", "IA3: trained vectors that rescale keys, values and feed-forward activations", ("target_modules",),
           lr_scale=10.0),
    Method("vera", "VeRA: frozen shared random low-rank matrices, only per-layer scaling vectors trained",
           ("r", "dropout", "target_modules", "layers"), lr_scale=10.0, defaults={"r": 256}),
    Method("prompt_tuning", "prompt tuning: trained embeddings of virtual tokens put before the text",
           ("num_virtual_tokens",), lr_scale=30.0, prompt=True, mergeable=False),
    Method("p_tuning", "P-tuning: virtual-token embeddings produced by a small trained MLP",
           ("num_virtual_tokens",), lr_scale=10.0, prompt=True, mergeable=False),
    Method("prefix_tuning", "prefix tuning: trained keys and values of virtual tokens in every attention layer",
           ("num_virtual_tokens",), lr_scale=10.0, prompt=True, mergeable=False),
    Method("qlora", "QLoRA: LoRA on a 4-bit (NF4) quantised base model; needs CUDA and bitsandbytes",
           LORA_OPTIONS, conv1d=False, mergeable=False),
)}
DEFAULT_VIRTUAL_TOKENS = 20


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise UserError(f"method={name!r} is not known: use one of {', '.join(METHODS)}.")
    return METHODS[name]


def check_options(method: str, given: dict) -> None:
    """Refuse options the method has no use for (e.g. r with ia3), instead of silently ignoring them."""
    spec = get_method(method)
    extra = [k for k in METHOD_OPTIONS if given.get(k) is not None and k not in spec.options]
    if extra:
        takes = ", ".join(spec.options) if spec.options else "none"
        raise UserError(f"{', '.join(extra)} {'is not an option' if len(extra) == 1 else 'are not options'} of "
                        f"method {method} (its options: {takes}): leave {'it' if len(extra) == 1 else 'them'} out.")


def qlora_problem() -> str | None:
    """Why QLoRA cannot run here, or None. Its 4-bit kernels exist only for CUDA GPUs in bitsandbytes."""
    if not torch.cuda.is_available():
        return "method qlora needs a CUDA GPU (bitsandbytes' 4-bit kernels): use lora on this machine"
    if importlib.util.find_spec("bitsandbytes") is None:
        return "method qlora needs bitsandbytes: pip install bitsandbytes, or use lora"
    return None


# Heads of *ForSequenceClassification models: GPT-2/Llama call it `score`, BERT-style models `classifier`.
HEAD_NAMES = ("score", "classifier")


def head_name(model) -> str:
    for name in HEAD_NAMES:
        if isinstance(getattr(model, name, None), torch.nn.Module):
            return name
    raise UserError(f"{type(model).__name__} has no 'score' or 'classifier' head; it is not a sequence classifier.")


def reads_last_token(model) -> bool:
    """Decoder classifiers (GPT-2, Llama: head `score`) read the last real token; encoders read [CLS]."""
    return head_name(model) == "score"


def max_positions(config) -> int | None:
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def matching_modules(model, targets: list[str]) -> list[torch.nn.Module]:
    """The modules whose name is, or ends in, one of `targets` (how peft matches target_modules given as names)."""
    return [module for name, module in model.named_modules() if any(name == t or name.endswith("." + t) for t in targets)]


def uses_conv1d(model, targets: list[str]) -> bool:
    """GPT-2's attention uses Conv1D, whose weight is stored transposed (in, out) compared with nn.Linear: LoRA
    needs fan_in_fan_out=True there."""
    return any(isinstance(module, Conv1D) for module in matching_modules(model, targets))


def default_targets(method: str, model_type: str) -> list[str] | None:
    """peft's per-architecture default targets for the method (None if peft has none for this model type)."""
    table = "IA3" if method == "ia3" else "VERA" if method == "vera" else "LORA"
    mapping = getattr(other, f"TRANSFORMERS_MODELS_TO_{table}_TARGET_MODULES_MAPPING", {})
    targets = mapping.get(model_type)
    return list(targets) if targets else None


def adapter_targets(model, cfg) -> list[str] | None:
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


def check_fits(model, cfg) -> list[str] | None:
    """Refuse a method that cannot work on this architecture or with these lengths, saying why (works on an
    empty-weights skeleton, so before any weights load). Returns the method's target modules (None for prompt
    methods)."""
    spec = get_method(cfg.method)
    if cfg.method == "qlora" and (problem := qlora_problem()):
        raise UserError(problem + ".")
    targets = adapter_targets(model, cfg)
    count = getattr(model.config, "num_hidden_layers", None)
    if cfg.layers and count is not None and max(cfg.layers) >= count:
        raise UserError(f"layers {cfg.layers}: this model has {count} layers, numbered 0 to {count - 1}.")
    if targets is not None and uses_conv1d(model, targets) and not spec.conv1d:
        raise UserError(f"method {cfg.method} does not fit {model.config.model_type}: its layers are Conv1D (weights "
                        f"stored transposed), which peft's {cfg.method} cannot adapt; use lora, dora, ia3 or vera.")
    if spec.prompt:
        limit = max_positions(model.config)
        tokens = cfg.num_virtual_tokens or DEFAULT_VIRTUAL_TOKENS
        if limit is not None and tokens + cfg.max_length > limit:
            fix = (f"num_virtual_tokens <= {limit - cfg.max_length}" if limit > cfg.max_length else
                   f"max_length <= {limit - tokens}")
            raise UserError(f"num_virtual_tokens={tokens} + max_length={cfg.max_length} exceeds the model's {limit} "
                            f"positions (virtual tokens take positions too): use {fix}.")
    # Prefix tuning hands its virtual keys and values to the model as `past_key_values`; a classifier whose forward
    # takes none cannot use it (transformers 5 renamed it in GPT-2 and Llama, BERT's classifier never had it), and
    # peft would fail only at the first batch.
    if cfg.method == "prefix_tuning" and "past_key_values" not in inspect.signature(type(model).forward).parameters:
        import transformers

        raise UserError(f"method prefix_tuning does not fit {type(model).__name__} in transformers "
                        f"{transformers.__version__}: its forward takes no past_key_values, where peft puts the "
                        "prefix; use prompt_tuning or p_tuning.")
    return targets


def padding_side(method: str, reads_last: bool) -> str:
    """Prompt tuning and P-tuning hand the model embeddings, not token ids, so a decoder's head (which finds the
    last real token from the ids) reads the last position: padding must go on the left for that to be a real token.
    Everything else pads on the right."""
    return "left" if reads_last and method in ("prompt_tuning", "p_tuning") else "right"


def peft_config(model, cfg, total_steps: int | None = None):
    """The peft config of cfg.method for `model` with the run's resolved options (cfg: a resolved RunConfig):
    targets per architecture, Conv1D layout for GPT-2, and the new head trained in full and saved with the adapter
    (modules_to_save). `total_steps` (optimizer steps of the run, training.total_steps) sets AdaLoRA's schedule.
    For method="lora" this is the LoraConfig the notebook writes out."""
    cfg.require_resolved()
    targets = check_fits(model, cfg)
    method, head, task = cfg.method, head_name(model), peft.TaskType.SEQ_CLS
    fan_in_fan_out = targets is not None and uses_conv1d(model, targets)
    if method in ("lora", "dora", "rslora", "pissa", "qlora"):
        extra = {"dora": {"use_dora": True}, "rslora": {"use_rslora": True},
                 "pissa": {"init_lora_weights": "pissa_niter_4"}}.get(method, {})
        return peft.LoraConfig(task_type=task, r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                               target_modules=targets, fan_in_fan_out=fan_in_fan_out, modules_to_save=[head],
                               layers_to_transform=cfg.layers, **extra)
    if method == "adalora":
        steps = max(1, int(total_steps or 1))
        # Ranks start at 1.5 r and are pruned to r on average between 10% and 80% of training (AdaLoRA paper's
        # schedule, scaled to the run); tinit must stay below total_step - tfinal.
        tinit, tfinal = steps // 10, steps // 5
        return peft.AdaLoraConfig(task_type=task, target_r=cfg.r, init_r=max(cfg.r, cfg.r * 3 // 2),
                                  lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                                  fan_in_fan_out=fan_in_fan_out, modules_to_save=[head], total_step=steps,
                                  layers_to_transform=cfg.layers,
                                  tinit=tinit, tfinal=tfinal, deltaT=max(1, steps // 50))
    if method in ("loha", "lokr"):
        cls = peft.LoHaConfig if method == "loha" else peft.LoKrConfig
        return cls(task_type=task, r=cfg.r, alpha=cfg.alpha, rank_dropout=cfg.dropout, target_modules=targets,
                   modules_to_save=[head], layers_to_transform=cfg.layers)
    if method == "ia3":
        # IA3 scales a feed-forward layer's input and an attention projection's output: peft needs to know which
        # targets are feed-forward.
        known = other.TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING.get(model.config.model_type) or []
        return peft.IA3Config(task_type=task, target_modules=targets,
                              feedforward_modules=[t for t in targets if t in known],
                              fan_in_fan_out=fan_in_fan_out, modules_to_save=[head])
    if method == "vera":
        # save_projection: the shared random matrices go into the adapter file, so any machine reloads it exactly.
        return peft.VeraConfig(task_type=task, r=cfg.r, vera_dropout=cfg.dropout, target_modules=targets,
                               fan_in_fan_out=fan_in_fan_out, save_projection=True, modules_to_save=[head],
                               projection_prng_key=cfg.seed, layers_to_transform=cfg.layers)
    if method == "prompt_tuning":
        return peft.PromptTuningConfig(task_type=task, num_virtual_tokens=cfg.num_virtual_tokens)
    if method == "p_tuning":
        return peft.PromptEncoderConfig(task_type=task, num_virtual_tokens=cfg.num_virtual_tokens,
                                        encoder_hidden_size=128)
    return peft.PrefixTuningConfig(task_type=task, num_virtual_tokens=cfg.num_virtual_tokens)
