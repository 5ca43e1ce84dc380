"""Evaluation with LoRA merged into the weights (evaluation.lora_merged, what predict_logits does) against the same
evaluation unmerged (every forward also runs the adapters' two small products, scaling and add), as interleaved
pairs: the shared host's speed drifts by 10-30% within minutes, more than the difference measured, so a table of
cases run one after another (levers.py) cannot separate them.

    python benchmarks/eval_merge.py                 # 2 threads, this CPU
    python benchmarks/eval_merge.py --slow-cpu      # the emulated slow CPU of demo_time.py (bench.SLOW_CPU)

Set-up: bench.py's (MiniLM + LoRA r=16 on query/value, the full Rotten Tomatoes test split, batches of 64, the
package's evaluation batch), with the adapters' B matrices drawn at random as after training (they start at zero,
which would make the merge a no-op in value though not in time). Each round evaluates the split through
predict_logits merged and unmerged, in alternating order, and measures the fp32 matrix-product rate just before
and just after each pass; utilisation = FLOPs per processed token (FlopCounterMode on real batches, merged or not)
x processed tokens / seconds / the mean of those two rates. Printed: every pass, the medians, and the median of
the per-round speed ratios.
"""

from __future__ import annotations

import argparse
import contextlib
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
    from bench import _setup, _token_counter, alternating_passes, count_flops

    import peft_helpers.evaluation as evaluation
    from peft_helpers.hardware import use_threads

    use_threads(args.threads)  # only where the count changes: hardware.use_threads says why
    setup = argparse.Namespace(model=args.model, data_dir=args.data_dir, train_size=args.train_size, eval_size=None,
                               batch_size=16, max_length=128, case="eval-merge")
    cfg, model, tokenizer, data = _setup(setup)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.02)
    per_token = count_flops(cfg, model, tokenizer, data)
    test = data["test"]
    counts = _token_counter(model)  # processed (padded) tokens of the first pass: every pass batches alike
    merge = evaluation.lora_merged
    modes = {"merged": (merge, per_token["eval_flops_per_token"]),
             "unmerged": (lambda m: contextlib.nullcontext(), per_token["eval_unmerged_flops_per_token"])}
    logits = {}
    for mode, (context, _) in modes.items():  # a first pass of each, untimed: warm caches, the same predictions
        evaluation.lora_merged = context
        logits[mode] = evaluation.predict_logits(model, tokenizer, test, args.eval_batch_size)
    tokens = counts["eval_total"] // 2
    def run_pass(round_, mode):
        evaluation.lora_merged = modes[mode][0]
        evaluation.predict_logits(model, tokenizer, test, args.eval_batch_size)

    passes = alternating_passes(args.rounds, ("merged", "unmerged"), run_pass, args.threads, args.rate_size)
    for p in passes:
        gflops = modes[p["mode"]][1] * tokens / p["seconds"] / 1e9
        p.update(examples_per_s=len(test) / p["seconds"], gflops=gflops, mfu=gflops / p["rate"])
    evaluation.lora_merged = merge
    return {"passes": passes, "rate_size": args.rate_size, "flops_per_token": per_token, "tokens": tokens, "examples": len(test),
            "max_logit_difference": float(np.abs(logits["merged"] - logits["unmerged"]).max()),
            "same_predictions": bool((logits["merged"].argmax(-1) == logits["unmerged"].argmax(-1)).all()),
            "threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def report(r: dict, emulated: str) -> None:
    f = r["flops_per_token"]
    print(f"evaluation of {r['examples']} reviews ({r['tokens']} processed tokens) in batches, {r['threads']} "
          f"threads, CPU capability {r['cpu_capability']}{emulated}; FLOPs per token {f['eval_flops_per_token'] / 1e6:.2f} M "
          f"merged, {f['eval_unmerged_flops_per_token'] / 1e6:.2f} M unmerged; largest logit difference "
          f"{r['max_logit_difference']:.1e}, same predictions: {r['same_predictions']}")
    for p in r["passes"]:
        print(f"  round {p['round']} {p['mode']:>8}: {p['seconds']:.2f} s, {p['examples_per_s']:.1f} examples/s, "
              f"{p['gflops']:.0f} GFLOP/s at {p['rate']:.0f} GFLOP/s: utilisation {p['mfu']:.3f}")
    by = {m: [p for p in r["passes"] if p["mode"] == m] for m in ("merged", "unmerged")}
    ratios = [u["seconds"] / m["seconds"] for m, u in zip(by["merged"], by["unmerged"])]
    for mode, passes in by.items():
        print(f"{mode}: median {statistics.median(p['examples_per_s'] for p in passes):.1f} examples/s, "
              f"utilisation {statistics.median(p['mfu'] for p in passes):.3f}")
    print(f"merged over unmerged, per round: {', '.join(f'{x:.2f}' for x in ratios)}x; median "
          f"{statistics.median(ratios):.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "rotten_tomatoes"))
    parser.add_argument("--train-size", type=int, default=2048, help="only tokenized: nothing is trained")
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--slow-cpu", action="store_true", help="run on the emulated slow CPU (bench.SLOW_CPU)")
    parser.add_argument("--rate-size", type=int, default=2048,
                        help="side of the square fp32 products the rate is measured on, as in levers.py (the tests "
                             "pass 256)")
    args = parser.parse_args()
    from bench import SLOW_CPU

    if args.slow_cpu:
        if any(os.environ.get(key) != value for key, value in SLOW_CPU.items()):
            # MKL, oneDNN and ATen read these when they start: start again with them, as levers.py --slow-cpu does.
            os.execve(sys.executable, [sys.executable, __file__, *sys.argv[1:]], {**os.environ, **SLOW_CPU})
        args.threads = 1  # the emulation has one thread
    result = measure(args)
    emulated = " (emulated slow CPU: " + " ".join(f"{k}={v}" for k, v in SLOW_CPU.items()) + ")" if args.slow_cpu else ""
    report(result, emulated)
    print(json.dumps({**result, "slow_cpu": SLOW_CPU if args.slow_cpu else None}))

if __name__ == "__main__":
    main()
