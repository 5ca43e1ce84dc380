"""SDPA against eager attention on a CPU (issue #13 lists SDPA attention as a lever), in alternating pairs on the
same work, on the throughput benchmark's set-up (bench.py: MiniLM + LoRA, length-grouped batches of 16, here
without dropout as the demo trains):

    python benchmarks/attention.py               # about 6 minutes on 2 cores

Training: for each round, the next --steps batches of a bare loop (forward, backward, AdamW step) run once with
each attention, the order alternating by round (the same batches for both: lengths differ between blocks).
Evaluation: predict_logits passes over the test split (batches of 64, LoRA merged), alternating likewise, each
against the fp32 matrix-product rate measured just before and after it (the shared host drifts within minutes).
The attention is switched on the loaded model through its config, which transformers reads at every forward
since 4.48 for GPT-2 and later for BERT; older versions fix it when the model loads, and the script says so.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
MODES = ("sdpa", "eager")


def attention_kernels(model, batch) -> set[str]:
    """The attention operators one forward runs: proof that switching the config switched the attention."""
    import torch
    from torch.profiler import profile

    with torch.inference_mode(), profile() as prof:
        model(**batch)
    return {e.key for e in prof.key_averages() if "scaled_dot_product" in e.key or e.key in ("aten::bmm", "aten::matmul")}


def measure(args) -> dict:
    import numpy as np
    import torch
    from bench import _setup, _token_counter, alternating_passes, count_flops, training_batches, warmed_up_training_blocks

    from peft_helpers.errors import UserError
    from peft_helpers.evaluation import predict_logits
    from peft_helpers.hardware import use_threads

    use_threads(args.threads)  # only where the count changes: hardware.use_threads says why
    setup = argparse.Namespace(model=args.model, data_dir=args.data_dir, train_size=args.train_size, eval_size=None,
                               batch_size=16, max_length=128, case="attention")
    cfg, model, tokenizer, data = _setup(setup, model_dropout=0.0, dropout=0.0)
    config = model.get_base_model().config
    batches = training_batches(cfg, tokenizer, data)
    kernels = {}
    for mode in MODES:
        config._attn_implementation = mode
        kernels[mode] = attention_kernels(model, batches[0])
    if not any("scaled_dot_product" in k for k in kernels["sdpa"]) or any("scaled_dot_product" in k for k in kernels["eager"]):
        raise UserError("this transformers version fixes the attention when the model loads, so switching it here "
                        "would time the same kernel twice: run with a newer transformers.")
    step, blocks = warmed_up_training_blocks(model, cfg, batches, args)

    def train_pass(round_, mode):
        config._attn_implementation = mode
        for batch in blocks[round_]:
            step(batch)

    train = alternating_passes(args.rounds, MODES, train_pass)
    for p in train:
        p["examples_per_s"] = sum(len(b["labels"]) for b in blocks[p["round"]]) / p["seconds"]

    per_token = count_flops(cfg, model, tokenizer, data)["eval_flops_per_token"]
    test, counts = data["test"], _token_counter(model)
    logits = {}
    for mode in MODES:  # a first pass of each, untimed: warm caches, and the predictions to compare
        config._attn_implementation = mode
        logits[mode] = predict_logits(model, tokenizer, test, args.eval_batch_size)
    tokens = counts["eval_total"] // 2

    def eval_pass(round_, mode):
        config._attn_implementation = mode
        predict_logits(model, tokenizer, test, args.eval_batch_size)

    evaluation = alternating_passes(args.rounds, MODES, eval_pass, args.threads, args.rate_size)
    for p in evaluation:
        p["mfu"] = per_token * tokens / p["seconds"] / 1e9 / p["rate"]
    config._attn_implementation = "sdpa"
    return {"train": train, "evaluation": evaluation, "kernels": {m: sorted(k) for m, k in kernels.items()},
            "eval_flops_per_token": per_token, "rate_size": args.rate_size,
            "max_logit_difference": float(np.abs(logits["sdpa"] - logits["eager"]).max()),
            "same_predictions": bool((logits["sdpa"].argmax(-1) == logits["eager"].argmax(-1)).all()),
            "threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def ratios(passes: list[dict], speed) -> list[float]:
    """Eager's speed over SDPA's, round by round."""
    by = {mode: [speed(p) for p in passes if p["mode"] == mode] for mode in MODES}
    return [e / s for s, e in zip(by["sdpa"], by["eager"])]


def report(r: dict) -> dict:
    print(f"{r['threads']} threads, CPU capability {r['cpu_capability']}; kernels: SDPA {r['kernels']['sdpa']}, eager "
          f"{r['kernels']['eager']}; evaluation: largest logit difference {r['max_logit_difference']:.1e}, same "
          f"predictions: {r['same_predictions']}")
    for p in r["train"]:
        print(f"  training round {p['round']} {p['mode']:>5}: {p['examples_per_s']:.1f} examples/s")
    for p in r["evaluation"]:
        print(f"  evaluation round {p['round']} {p['mode']:>5}: {p['seconds']:.2f} s at {p['rate']:.0f} GFLOP/s, "
              f"utilisation {p['mfu']:.3f}")
    train = ratios(r["train"], lambda p: p["examples_per_s"])
    evaluation = ratios(r["evaluation"], lambda p: 1 / p["seconds"])
    summary = {"train_eager_over_sdpa": statistics.median(train), "eval_eager_over_sdpa": statistics.median(evaluation)}
    print(f"training, eager over SDPA per round: {', '.join(f'{x:.2f}' for x in train)}x; median "
          f"{summary['train_eager_over_sdpa']:.2f}x")
    print(f"evaluation, eager over SDPA per round: {', '.join(f'{x:.2f}' for x in evaluation)}x; median "
          f"{summary['eval_eager_over_sdpa']:.2f}x")
    for mode in MODES:
        summary[f"eval_mfu_{mode}"] = statistics.median(p["mfu"] for p in r["evaluation"] if p["mode"] == mode)
        print(f"evaluation utilisation, {mode}: median {summary[f'eval_mfu_{mode}']:.3f}")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "rotten_tomatoes"))
    parser.add_argument("--train-size", type=int, default=8530)
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=40, help="training steps per attention and round")
    parser.add_argument("--rate-size", type=int, default=2048,
                        help="side of the square fp32 products the rate is measured on, as in levers.py (the tests "
                             "pass 256)")
    args = parser.parse_args()
    from peft_helpers.errors import UserError

    try:
        result = measure(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    summary = report(result)
    print(json.dumps({**result, **summary}))


if __name__ == "__main__":
    main()
