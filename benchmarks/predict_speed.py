"""The predict command's model (inference.load_for_prediction: the last encoder layer computes [CLS] alone) against
the stock model that load_adapter gives, classifying the same texts through `predict` as interleaved pairs in one
process: the shared host's speed drifts by 10-30% within minutes, more than the difference measured.

    python benchmarks/predict_speed.py              # MiniLM + LoRA, the 8,530 Rotten Tomatoes training reviews

Set-up: bench.py's (MiniLM + LoRA r=16 on query/value), with the adapters' B matrices drawn at random as after
training (they start at zero). The short model is a deep copy of the stock one with head_token's last layer, which
is the whole difference between load_for_prediction and load_adapter. Each round classifies the texts with each
model (`predict`, batches of 64 as the command's `--batch-size`: tokenizing, length-sorted batches, LoRA merged,
probabilities), in alternating order, the fp32 matrix-product rate measured just before and after each pass.
Printed: every pass, the medians, the median of the per-round speed ratios, and how far apart the two models'
probabilities are.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def measure(args) -> dict:
    import numpy as np
    import torch
    from bench import _setup, alternating_passes

    from peft_helpers.data import load_data
    from peft_helpers.hardware import use_threads
    from peft_helpers.head_token import compute_head_token_only, uses_head_token_only
    from peft_helpers.inference import predict

    use_threads(args.threads)  # only where the count changes: hardware.use_threads says why
    setup = argparse.Namespace(model=args.model, data_dir=args.data_dir, train_size=64, eval_size=None,
                               batch_size=16, max_length=128, case="predict-speed", last_layer="all-tokens")
    _, stock, tokenizer, _ = _setup(setup)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in stock.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.02)
    short = copy.deepcopy(stock)
    if not compute_head_token_only(short):
        sys.exit(f"{args.model}: the short last layer does not apply to this model")
    assert not uses_head_token_only(stock)
    texts = list(load_data(args.data_dir)["train"]["text"])[: args.texts]
    models = {"short": short, "stock": stock}
    probabilities = {mode: predict(m, tokenizer, texts, batch_size=args.batch_size).probabilities
                     for mode, m in models.items()}  # a first pass of each, untimed: warm caches, compare outputs

    def run_pass(round_, mode):
        predict(models[mode], tokenizer, texts, batch_size=args.batch_size)

    passes = alternating_passes(args.rounds, ("short", "stock"), run_pass, args.threads, args.rate_size)
    for p in passes:
        p.update(texts_per_s=len(texts) / p["seconds"])
    return {"passes": passes, "texts": len(texts), "batch_size": args.batch_size, "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "max_probability_difference": float(np.abs(probabilities["short"] - probabilities["stock"]).max()),
            "same_labels": bool((probabilities["short"].argmax(-1) == probabilities["stock"].argmax(-1)).all())}


def report(r: dict) -> None:
    print(f"predict on {r['texts']} texts in batches of {r['batch_size']}, {r['threads']} threads, CPU capability "
          f"{r['cpu_capability']}; largest probability difference {r['max_probability_difference']:.1e}, same labels: "
          f"{r['same_labels']}")
    for p in r["passes"]:
        print(f"  round {p['round']} {p['mode']:>5}: {p['seconds']:.2f} s, {p['texts_per_s']:.1f} texts/s at "
              f"{p['rate']:.0f} GFLOP/s")
    by = {m: [p for p in r["passes"] if p["mode"] == m] for m in ("short", "stock")}
    ratios = [stock["seconds"] / short["seconds"] for short, stock in zip(by["short"], by["stock"])]
    for mode, passes in by.items():
        print(f"{mode}: median {statistics.median(p['texts_per_s'] for p in passes):.1f} texts/s")
    print(f"short over stock, per round: {', '.join(f'{x:.2f}' for x in ratios)}x; median {statistics.median(ratios):.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm", help="a BERT-type model (the tests pass a tiny BERT)")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "rotten_tomatoes"))
    parser.add_argument("--texts", type=int, default=None, help="the first N training reviews (default: all)")
    parser.add_argument("--batch-size", type=int, default=64, help="the predict command's default")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rate-size", type=int, default=2048,
                        help="side of the square fp32 products the rate is measured on (the tests pass 256)")
    args = parser.parse_args()
    result = measure(args)
    report(result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
