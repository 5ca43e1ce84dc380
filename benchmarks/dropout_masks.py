"""Dropout masks from 16-bit words against torch's bernoulli_ (run's --dropout-masks), in alternating passes on the
same work, on the throughput benchmark's set-up with dropout on as `run` trains by default (bench.py: MiniLM +
LoRA, tuned settings, length-grouped batches of 16):

    python benchmarks/dropout_masks.py             # about 4 minutes on 2 cores

First one mask of a typical batch's hidden states (16 x 28 x 384), timed alone each way (the median of three). Then, for each round,
the next --steps batches of a bare training loop (forward, backward, AdamW step) run once with each kind of mask,
the order alternating by round, each pass between two measurements of the fp32 matrix-product rate (this host's
rate moves by 20% within minutes: one process switching masks block by block is the steadiest comparison there
is here). The masks are switched on the loaded model by the class of its dropout modules, which is all
`--dropout-masks` changes. A third kind, 16-bit-sdpa, draws 16-bit masks everywhere except the attention
probabilities, which SDPA drops inside itself with torch's masks (what 16-bit did before the layers applied that
dropout through the attention's module: head_token.py).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
MODES = ("16-bit", "16-bit-sdpa", "bernoulli")


def use_masks(model, mode: str) -> int:
    """Switch every dropout module of `model` to `mode`'s masks; returns how many dropouts draw masks."""
    from torch import nn

    from peft_helpers.dropout_masks import SixteenBitMaskDropout, draw_sixteen_bit_dropout_masks

    if mode != "bernoulli":
        count = draw_sixteen_bit_dropout_masks(model)
        if mode == "16-bit-sdpa":  # a layer whose attention dropout is torch's runs the stock forward: SDPA's dropout
            for module in model.modules():
                if hasattr(module, "attention") and hasattr(module.attention, "self"):
                    module.attention.self.dropout.__class__ = nn.Dropout
                    count -= 1
        return count
    for module in model.modules():
        if type(module) is SixteenBitMaskDropout:
            module.__class__ = nn.Dropout
    return sum(type(m) is nn.Dropout for m in model.modules())


def one_mask_seconds(mode: str, shape=(16, 28, 384), p: float = 0.1, repeats: int = 200) -> float:
    """Seconds per training-mode dropout forward of a tensor of `shape` with `mode`'s masks."""
    import torch

    dropout = torch.nn.Dropout(p)
    use_masks(dropout, mode)
    x = torch.randn(shape)
    for _ in range(10):
        dropout(x)
    start = time.perf_counter()
    for _ in range(repeats):
        dropout(x)
    return (time.perf_counter() - start) / repeats


def measure(args) -> dict:
    import torch
    from bench import _setup, alternating_passes, count_flops, training_batches, warmed_up_training_blocks

    from peft_helpers.hardware import use_threads

    use_threads(args.threads)  # only where the count changes: hardware.use_threads says why
    timings = {mode: [] for mode in ("16-bit", "bernoulli")}  # a lone dropout: 16-bit-sdpa is 16-bit there
    for _ in range(3):  # alternating, the median of three: the first timing in a process also warms it up
        for mode in timings:
            timings[mode].append(one_mask_seconds(mode))
    masks = {mode: statistics.median(seconds) for mode, seconds in timings.items()}
    setup = argparse.Namespace(model=args.model, data_dir=args.data_dir, train_size=args.train_size, eval_size=None,
                               batch_size=16, max_length=128, case="dropout-masks")
    cfg, model, tokenizer, data = _setup(setup)  # the tuned settings: dropout 0.1 in the model and the adapter
    per_token = count_flops(cfg, model, tokenizer, data)["train_flops_per_token"]
    batches = training_batches(cfg, tokenizer, data)
    dropouts = {mode: use_masks(model, mode) for mode in MODES}
    step, blocks = warmed_up_training_blocks(model, cfg, batches, args)

    def train_pass(round_, mode):
        use_masks(model, mode)
        for batch in blocks[round_]:
            step(batch)

    passes = alternating_passes(args.rounds, MODES, train_pass, args.threads, args.rate_size)
    for p in passes:
        block = blocks[p["round"]]
        p["examples_per_s"] = sum(len(b["labels"]) for b in block) / p["seconds"]
        p["mfu"] = per_token * sum(b["input_ids"].numel() for b in block) / p["seconds"] / 1e9 / p["rate"]
    use_masks(model, "16-bit")
    return {"passes": passes, "one_mask_seconds": masks, "dropouts": dropouts, "train_flops_per_token": per_token,
            "rate_size": args.rate_size, "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def report(r: dict) -> dict:
    one = r["one_mask_seconds"]
    modes = [mode for mode in MODES if any(p["mode"] == mode for p in r["passes"])]
    print(f"{r['threads']} threads, CPU capability {r['cpu_capability']}; dropouts drawing masks: {r['dropouts']}; "
          f"one mask of 16 x 28 x 384: 16-bit {one['16-bit'] * 1e3:.2f} ms, bernoulli {one['bernoulli'] * 1e3:.2f} ms "
          f"({one['bernoulli'] / one['16-bit']:.1f}x)")
    for p in r["passes"]:
        print(f"  round {p['round']} {p['mode']:>11}: {p['examples_per_s']:.1f} examples/s at {p['rate']:.0f} GFLOP/s, "
              f"utilisation {p['mfu']:.3f}")
    by = {mode: [p for p in r["passes"] if p["mode"] == mode] for mode in modes}
    summary = {}
    for other in modes[1:]:
        per_round = [a["examples_per_s"] / b["examples_per_s"] for a, b in zip(by["16-bit"], by[other])]
        summary[f"sixteen_bit_over_{other.replace('-', '_')}"] = statistics.median(per_round)
        print(f"training, 16-bit over {other} per round: {', '.join(f'{x:.2f}' for x in per_round)}x; median "
              f"{statistics.median(per_round):.2f}x")
    for mode in modes:
        summary[f"train_mfu_{mode}"] = statistics.median(p["mfu"] for p in by[mode])
        print(f"training utilisation, {mode}: median {summary[f'train_mfu_{mode}']:.3f}")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "rotten_tomatoes"))
    parser.add_argument("--train-size", type=int, default=8530)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30, help="training steps per kind of mask and round")
    parser.add_argument("--rate-size", type=int, default=2048,
                        help="side of the square fp32 products the rate is measured on (the tests pass 256)")
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
