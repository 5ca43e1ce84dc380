"""What calling torch.set_num_threads costs, even with the number torch already uses (hardware.use_threads):
fresh processes, half of which make the call first, in alternating order round by round.

    python benchmarks/thread_setting.py             # 4 rounds of two processes, MiniLM + LoRA, the demo's settings

Each process times, in this order: one layer's attention (attention_kernels.py: SDPA and eager, forward and
backward, 16 x 12 heads x 28 tokens x 32), then the demo's bare training step (bench.py's set-up with every dropout
off and the last layer for [CLS] alone; forward, backward and AdamW over `--steps` batches after 5 warm-up
batches), an evaluation of the test split (predict_logits in batches of 64, the faster of two passes), and the
fp32 matrix-product rate after it, measured without setting the count. `set` processes first
call torch.set_num_threads(torch.get_num_threads()), as the demo's rate line and every benchmark here did until
this script; `untouched` ones never call it, as `run` and the notebook do. Printed: every process, the medians,
and the per-round ratios of untouched over set.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
REGIMES = ("untouched", "set")


def one(args) -> dict:
    import torch

    if args.one == "set":
        torch.set_num_threads(torch.get_num_threads())  # the same number: only the call differs
    from attention_kernels import kernel_milliseconds
    from bench import _setup, training_batches, warmed_up_training_blocks

    from peft_helpers.evaluation import predict_logits
    from peft_helpers.hardware import matmul_gflops

    attention = kernel_milliseconds(28, kernels=("sdpa", "eager"))
    setup = argparse.Namespace(model=args.model, data_dir=args.data_dir, train_size=args.train_size, eval_size=None,
                               batch_size=16, max_length=128, case="thread-setting", rounds=1, steps=args.steps)
    cfg, model, tokenizer, data = _setup(setup, model_dropout=0.0, dropout=0.0)
    batches = training_batches(cfg, tokenizer, data)
    step, (block,) = warmed_up_training_blocks(model, cfg, batches, setup)
    start = time.perf_counter()
    for batch in block:
        step(batch)
    seconds = time.perf_counter() - start
    evaluation_seconds = []
    for _ in range(2):  # the first pass also warms up the evaluation's shapes: the faster of two
        start = time.perf_counter()
        predict_logits(model, tokenizer, data["test"], batch_size=args.eval_batch_size)
        evaluation_seconds.append(time.perf_counter() - start)
    return {"regime": args.one, "threads": torch.get_num_threads(), "sdpa_ms": attention["sdpa"],
            "eager_ms": attention["eager"], "examples_per_s": sum(len(b["labels"]) for b in block) / seconds,
            "eval_examples_per_s": len(data["test"]) / min(evaluation_seconds),
            "rate": matmul_gflops(None, args.rate_size)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm", help="what bench.py measures (the tests pass a tiny BERT)")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "rotten_tomatoes"))
    parser.add_argument("--train-size", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--eval-batch-size", type=int, default=64, help="the package's evaluation batch")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--rate-size", type=int, default=2048, help="side of the square products the rate is "
                        "measured on (the tests pass 256)")
    parser.add_argument("--one", choices=REGIMES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one(args)))
        return
    results = []
    for round_ in range(args.rounds):
        for regime in REGIMES if round_ % 2 == 0 else REGIMES[::-1]:
            proc = subprocess.run([sys.executable, __file__, "--one", regime, *sys.argv[1:]], capture_output=True,
                                  text=True, cwd=ROOT)
            if proc.returncode != 0:
                sys.exit(proc.stderr[-3000:])
            r = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))[7:])
            results.append({"round": round_, **r})
            print(f"  round {round_} {regime:>9}: SDPA {r['sdpa_ms']:.2f} ms, eager {r['eager_ms']:.2f} ms; training "
                  f"{r['examples_per_s']:.1f} examples/s, evaluation {r['eval_examples_per_s']:.1f}; {r['threads']} "
                  f"threads, {r['rate']:.0f} GFLOP/s after", flush=True)
    by = {regime: [r for r in results if r["regime"] == regime] for regime in REGIMES}
    for regime, rows in by.items():
        print(f"{regime}: median SDPA {statistics.median(r['sdpa_ms'] for r in rows):.2f} ms, eager "
              f"{statistics.median(r['eager_ms'] for r in rows):.2f} ms, training "
              f"{statistics.median(r['examples_per_s'] for r in rows):.1f} examples/s, evaluation "
              f"{statistics.median(r['eval_examples_per_s'] for r in rows):.1f}")
    pairs = list(zip(by["untouched"], by["set"]))
    training = [u["examples_per_s"] / s["examples_per_s"] for u, s in pairs]
    evaluation = [u["eval_examples_per_s"] / s["eval_examples_per_s"] for u, s in pairs]
    sdpa = [s["sdpa_ms"] / u["sdpa_ms"] for u, s in pairs]
    print(f"untouched over set, training examples/s per round: {', '.join(f'{x:.3f}' for x in training)}x; median "
          f"{statistics.median(training):.3f}x")
    print(f"untouched over set, evaluation examples/s per round: {', '.join(f'{x:.3f}' for x in evaluation)}x; "
          f"median {statistics.median(evaluation):.3f}x")
    print(f"untouched over set, SDPA speed per round: {', '.join(f'{x:.2f}' for x in sdpa)}x; median "
          f"{statistics.median(sdpa):.2f}x")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
