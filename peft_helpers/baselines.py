"""Baselines for the method comparison, on exactly the data, split, seed and Trainer set-up of a PEFT run:

- random_head: the pretrained body with the new, untrained head (what every run reports as "pretrained");
- linear_probe: body frozen, only the head trained (what any PEFT method must beat to be worth its parameters);
- full: every weight trained (the ceiling PEFT tries to approach with a fraction of the parameters);
- zero_shot: no training at all; a decoder language model is asked for the label after a short instruction and
  the label words are scored (decoders only: an encoder such as MiniLM has no language-model head).

Each writes a results.json with the same keys `compare` reads from a PEFT run's.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from .config import RunConfig
from .errors import UserError
from .methods import head_name, reads_last_token
from .metrics import classification_metrics
from .modeling import count_parameters, default_device, resolve_model
from .training import device_summary, remove_checkpoints, train
from .workflow import (
    RESULTS_FILE,
    Prepared,
    dataset_name,
    fold_target_scaling,
    peak_memory_mib,
    prepare,
    tune_decision_threshold,
    write_json,
)

BASELINES = ("random_head", "linear_probe", "full", "zero_shot")
# Learning rates relative to the family's LoRA rate: a head alone takes large steps; every weight of a
# pretrained model needs small ones (BERT fine-tuning's usual 2e-5 to 5e-5).
LR_SCALE = {"linear_probe": 10.0, "full": 0.05}
# Short label names spelled out for the zero-shot instruction (Rotten Tomatoes' are neg/pos).
LABEL_WORDS = {"neg": "negative", "pos": "positive"}


def run_baseline(kind: str, cfg: RunConfig) -> dict:
    """Run one baseline and write <output_dir>/results.json; returns the results."""
    if kind not in BASELINES:
        raise UserError(f"baseline {kind!r} is not known: use one of {', '.join(BASELINES)}.")
    p = prepare(cfg)
    steps = {"random_head": random_head, "linear_probe": linear_probe, "full": full_finetune, "zero_shot": zero_shot}
    results = {"model": p.cfg.model, "method": kind, "dataset": dataset_name(p.cfg), "eval_split": "test",
               "train_size": len(p.data["train"]), "eval_size": len(p.data["test"]), "label_names": p.label_names,
               "problem": p.problem,
               "seed": p.cfg.seed, "device": device_summary(p.cfg.precision), **steps[kind](p)}
    results["peak_memory_mib"] = peak_memory_mib()
    write_json(Path(cfg.output_dir) / RESULTS_FILE, results)
    print(f"{kind}: test {p.headline} {results['finetuned'][p.headline]:.4f}")
    return results


def random_head(p: Prepared) -> dict:
    result = p.evaluate_test(p.model, "random_head")
    return {"finetuned": result.metrics, "trainable_params": 0, "total_params": count_parameters(p.model).total,
            "adapter_mib": 0.0, "train_seconds": 0.0, "train_samples_per_second": 0.0}


def _trained(p: Prepared, trainable: list[torch.nn.Parameter], kind: str) -> dict:
    """Train the given parameters of p.model with the run's Trainer set-up at this baseline's learning rate."""
    for param in p.model.parameters():
        param.requires_grad_(False)
    for param in trainable:
        param.requires_grad_(True)
    cfg = type(p.cfg)(**{**p.cfg.to_dict(), "learning_rate": min(0.5, p.cfg.learning_rate * LR_SCALE[kind])})
    trained = train(p.model, p.tokenizer, p.encoded, cfg)
    remove_checkpoints(cfg)
    tune_decision_threshold(p, p.model)  # multi-label: on validation, as a PEFT run does
    fold_target_scaling(p, p.model)  # regression: back on the targets' scale, as a PEFT run does
    result = p.evaluate_test(p.model, kind)
    count = sum(param.numel() for param in trainable)
    return {"finetuned": result.metrics, "trainable_params": count, "total_params": count_parameters(p.model).total,
            "adapter_mib": count * 4 / 2**20,  # what would have to be saved, fp32
            "train_seconds": round(trained.seconds, 2), "train_samples_per_second": round(trained.samples_per_second, 2),
            "learning_rate": cfg.learning_rate, **({"threshold": p.threshold} if p.problem == "multi-label" else {})}


def linear_probe(p: Prepared) -> dict:
    return _trained(p, list(getattr(p.model, head_name(p.model)).parameters()), "linear_probe")


def full_finetune(p: Prepared) -> dict:
    return _trained(p, list(p.model.parameters()), "full")


def label_words(names: list[str]) -> list[str]:
    return [LABEL_WORDS.get(n.lower(), n) for n in names]


def zero_shot_prompt(tokenizer, text: str, words: list[str]) -> str:
    """The instruction, in the model's chat format where it has one (SmolLM2-Instruct does)."""
    question = (f"Text: {text}\n\nWhich of these labels fits the text best: {', '.join(words)}? "
                "Answer with the label only.")
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                             add_generation_prompt=True)
    return question + "\nAnswer:"


def answer_tokens(tokenizer, word: str) -> list[int]:
    """First tokens of the ways an answer may start: word, Word, ' word', ' Word'."""
    variants = {word, word.capitalize(), " " + word, " " + word.capitalize()}
    return sorted({tokenizer(v, add_special_tokens=False)["input_ids"][0] for v in variants})


@torch.inference_mode()
def zero_shot(p: Prepared) -> dict:
    """Score each label by the probability that the model's answer starts with it (all spellings summed)."""
    from transformers import AutoModelForCausalLM

    if not reads_last_token(p.model):
        raise UserError(f"zero_shot needs a decoder language model; {p.cfg.model} ({type(p.model).__name__}) is an "
                        "encoder with no language-model head.")
    device = default_device()
    lm = AutoModelForCausalLM.from_pretrained(resolve_model(p.cfg.model)).to(device).eval()
    tokenizer = p.tokenizer
    words = label_words(p.label_names)
    candidates = [answer_tokens(tokenizer, w) for w in words]
    if len({t for c in candidates for t in c}) < sum(map(len, candidates)):
        raise UserError(f"zero_shot: the label words {words} start with the same token; rename the labels.")
    texts = [tokenizer.decode(ids[: p.cfg.max_length], skip_special_tokens=True) for ids in p.encoded["test"]["input_ids"]]
    prompts = [zero_shot_prompt(tokenizer, t, words) for t in texts]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # the next-token logits are read at the last position
    scores, start = [], time.perf_counter()
    try:
        for i in range(0, len(prompts), p.cfg.batch_size):
            batch = tokenizer(prompts[i:i + p.cfg.batch_size], return_tensors="pt", padding=True,
                              add_special_tokens=False).to(device)
            probs = lm(**batch).logits[:, -1].float().softmax(-1)
            scores.append(torch.stack([probs[:, c].sum(-1) for c in candidates], -1).cpu().numpy())
    finally:
        tokenizer.padding_side = side
    seconds = time.perf_counter() - start
    labels = np.array(p.encoded["test"]["label"])
    metrics = classification_metrics(labels, np.concatenate(scores).argmax(-1), num_labels=len(words))
    return {"finetuned": metrics, "trainable_params": 0, "total_params": sum(x.numel() for x in lm.parameters()),
            "adapter_mib": 0.0, "train_seconds": 0.0, "train_samples_per_second": 0.0,
            "eval_samples_per_second": round(len(labels) / seconds, 2), "label_words": words}
