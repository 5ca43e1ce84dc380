"""Where a CPU training step of MiniLM + LoRA spends its time (issue #13: why utilisation stays low), on the
benchmark's set-up (bench.py: tuned LoRA, batch 16, length-grouped real batches of Rotten Tomatoes):

    python benchmarks/profile_step.py                        # dropout as the model has it (0.1 everywhere)
    python benchmarks/profile_step.py --dropout-masks bernoulli  # torch's own masks (16-bit: run's default)
    python benchmarks/profile_step.py --no-dropout           # --model-dropout 0 --dropout 0
    python benchmarks/profile_step.py --no-dropout --compile # torch.compile(dynamic=True): compile time, steady rate
    python benchmarks/profile_step.py --no-dropout --matmul-precision medium [--attention eager]
        # fp32 products through oneDNN in bf16 (torch.set_float32_matmul_precision; AMX/AVX512-BF16 CPUs only)

A bare loop (forward, backward, AdamW step) over the batches: 5 warm-up steps (with --compile: the first 10, which
include compiling), then examples/s over the next 40, then torch.profiler over 20 more, printing the operators that
took the most time, and the rate at which the matrix-product operators ran (the FLOPs FlopCounterMode counts for
those 20 steps over the profiled time of mm, addmm and bmm). The products' share of the time bounds utilisation.
Last, the same 20 steps' products (recorded by shape and memory layout) are replayed, each kind timed alone: the
rate the step's products reach with nothing else running between them, which bounds utilisation from above even if
every other operation cost nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def _random_strided(shape, stride) -> torch.Tensor:
    """Random values laid out as (shape, stride), including layouts whose elements share memory (a stride of 0,
    as an expanded gradient has: the short last layer's backward passes one), which normal_() refuses to fill."""
    size = 1 + sum((n - 1) * s for n, s in zip(shape, stride)) if all(shape) else 0
    return torch.empty(size).normal_().as_strided(shape, stride)


class RecordProducts(TorchDispatchMode):
    """Records every matrix product (mm, addmm, bmm) run under it, forward and backward, by its operands' shapes and
    strides; replay() then times each kind on its own, on random operands laid out the same way: how fast the
    step's products run when nothing else competes for the caches, their ceiling on this CPU."""

    OPERATORS = {"aten.mm.default", "aten.addmm.default", "aten.bmm.default"}

    def __init__(self):
        super().__init__()
        self.calls = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if str(func) in self.OPERATORS:
            layout = tuple((tuple(a.shape), tuple(a.stride())) for a in args if isinstance(a, torch.Tensor))
            self.calls[(func, layout, tuple(sorted(kwargs.items())))] += 1
        return func(*args, **kwargs)

    def replay(self, min_seconds: float = 0.02) -> tuple[float, float]:
        """(seconds, FLOPs) of all the recorded calls, each kind timed alone (the best of 3 timings)."""
        total_seconds = total_flops = 0.0
        with torch.no_grad():
            for (func, layout, kwargs), count in self.calls.items():
                operands = [_random_strided(shape, stride) for shape, stride in layout]
                *batch, m, k = layout[-2][0]
                flops = 2 * m * k * layout[-1][0][-1] * (batch[0] if batch else 1)
                repeats, best = 1, float("inf")
                while True:  # enough repeats for one timing to last min_seconds
                    start = time.perf_counter()
                    for _ in range(repeats):
                        func(*operands, **dict(kwargs))
                    if time.perf_counter() - start >= min_seconds:
                        break
                    repeats *= 2
                for _ in range(3):
                    start = time.perf_counter()
                    for _ in range(repeats):
                        func(*operands, **dict(kwargs))
                    best = min(best, (time.perf_counter() - start) / repeats)
                total_seconds += best * count
                total_flops += flops * count
        return total_seconds, total_flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm", help="what bench.py measures; the tests pass a tiny GPT-2")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "rotten_tomatoes"))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-dropout", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--dropout-masks", choices=["16-bit", "bernoulli"], default="16-bit",
                        help="run's --dropout-masks (profiles in BENCHMARKS.md from before it existed: bernoulli)")
    parser.add_argument("--matmul-precision", choices=["highest", "high", "medium"], default="highest",
                        help="torch.set_float32_matmul_precision for the profiled steps (the reference rate stays "
                             "fp32: it is measured at 'highest')")
    parser.add_argument("--attention", choices=["sdpa", "eager"], default="sdpa")
    parser.add_argument("--rows", type=int, default=15, help="operators listed")
    parser.add_argument("--rate-size", type=int, default=2048,
                        help="side of the square fp32 products the rate is measured on, as in levers.py (the tests "
                             "pass 256)")
    args = parser.parse_args()

    from bench import _setup, training_batches
    from torch.profiler import ProfilerActivity, profile
    from torch.utils.flop_counter import FlopCounterMode

    from peft_helpers.hardware import matmul_gflops, use_threads

    use_threads(args.threads)  # only where the count changes: hardware.use_threads says why
    setup = argparse.Namespace(model=args.model, data_dir=args.data_dir, train_size=2048, eval_size=None,
                               batch_size=args.batch_size, max_length=128, case="profile")
    settings = {"model_dropout": 0.0, "dropout": 0.0} if args.no_dropout else {}
    cfg, model, tokenizer, data = _setup(setup, **settings)
    if args.dropout_masks == "16-bit" and not args.compile:  # as LengthGroupedTrainer does
        from peft_helpers.dropout_masks import draw_sixteen_bit_dropout_masks

        draw_sixteen_bit_dropout_masks(model)
    model.get_base_model().config._attn_implementation = args.attention
    batches = training_batches(cfg, tokenizer, data)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate)
    forward = torch.compile(model, dynamic=True) if args.compile else model
    model.train()
    torch.set_float32_matmul_precision(args.matmul_precision)

    def step(batch):
        forward(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    warm = 10 if args.compile else 5
    start = time.perf_counter()
    for batch in batches[:warm]:
        step(batch)
    warm_seconds = time.perf_counter() - start
    start, examples = time.perf_counter(), 0
    for batch in batches[warm : warm + 40]:
        step(batch)
        examples += len(batch["labels"])
    rate = examples / (time.perf_counter() - start)
    profiled = batches[warm + 40 : warm + 60]
    flops = 0
    products = RecordProducts()
    for batch in profiled:  # the FLOPs of the profiled steps (forward and backward; no optimizer step here)
        with FlopCounterMode(display=False) as counter, products:
            model(**batch).loss.backward()
        optimizer.zero_grad(set_to_none=True)
        flops += counter.get_total_flops()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for batch in profiled:
            step(batch)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    matmul = sum(e.self_cpu_time_total for e in events if e.key in ("aten::mm", "aten::addmm", "aten::bmm"))
    torch.set_float32_matmul_precision("highest")
    reference = matmul_gflops(args.threads, args.rate_size)
    achieved = flops / (matmul / 1e6) / 1e9  # self times are in microseconds
    variant = "".join([", compiled" if args.compile else "",
                       ", 16-bit dropout masks" if args.dropout_masks == "16-bit" and not (args.no_dropout or args.compile) else "",
                       f", fp32 matmul precision {args.matmul_precision}" if args.matmul_precision != "highest" else "",
                       ", eager attention" if args.attention == "eager" else ""])
    print(f"dropout {'off' if args.no_dropout else 'on (0.1)'}{variant}: first {warm} "
          f"steps {warm_seconds:.1f} s, then {rate:.1f} training examples/s; matrix products (mm, addmm, bmm) "
          f"{matmul / total:.1%} of the profiled time, running at {achieved:.0f} GFLOP/s = {achieved / reference:.2f} "
          f"of the fp32 rate of {args.rate_size}^3 products ({reference:.0f} GFLOP/s)")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[: args.rows]:
        print(f"  {e.key[:60]:60s} {e.self_cpu_time_total / total:6.1%}  {e.count:6d} calls")
    torch.set_float32_matmul_precision(args.matmul_precision)  # replayed as the step ran them
    alone_seconds, product_flops = products.replay()
    torch.set_float32_matmul_precision("highest")
    print(f"the same products alone (each of the {len(products.calls)} shapes and layouts timed by itself, "
          f"{sum(products.calls.values())} calls): {product_flops / alone_seconds / 1e9:.0f} GFLOP/s = "
          f"{product_flops / alone_seconds / 1e9 / reference:.2f} of the {args.rate_size}^3 rate; {alone_seconds:.2f} s, against "
          f"{matmul / 1e6:.2f} s inside the profiled steps")


if __name__ == "__main__":
    main()
