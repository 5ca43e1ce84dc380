"""One layer's attention, forward and backward, timed alone for short sequences: PyTorch's SDPA (its CPU flash
kernel), transformers' eager attention (two batched products and a softmax) and SDPA's math backend, against
what the same FLOPs would take at the machine's fp32 matrix-product rate; then with training's attention dropout
(0.1, BERT's): SDPA dropping the probabilities inside itself (its math kernel, torch's masks), and
head_token._attention dropping them through a 16-bit-mask dropout module (what a run's BERT layers do).

    python benchmarks/attention_kernels.py                       # MiniLM's heads (12 x 32), batch 16, 20-60 tokens

Why: in the demo's training step (profile_step.py --no-dropout) the attention kernel takes a tenth of the time
for about 1% of the FLOPs. Each case is timed as the median of 5 timings of `--repeats` calls, after 20 warm-up
calls, on random inputs with an all-zero additive mask (as transformers builds it for unpadded rows).
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


def _milliseconds(fn, repeats: int) -> float:
    for _ in range(20):
        fn()
    timings = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        timings.append((time.perf_counter() - start) / repeats)
    return statistics.median(timings) * 1e3


def _sdpa(q, k, v, mask, grad):
    import torch.nn.functional as F

    F.scaled_dot_product_attention(q, k, v, attn_mask=mask).backward(grad)


def _eager(q, k, v, mask, grad):  # transformers' eager_attention_forward without dropout
    import torch

    scores = torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5 + mask
    torch.matmul(scores.softmax(-1), v).backward(grad)


def _math(q, k, v, mask, grad):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        _sdpa(q, k, v, mask, grad)


def _sdpa_dropout(q, k, v, mask, grad):
    import torch.nn.functional as F

    F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.1).backward(grad)


def _module_dropout(q, k, v, mask, grad, attn=None):
    from peft_helpers.head_token import _attention

    _attention(attn, q, k, v, mask).backward(grad)


KERNELS = {"sdpa": _sdpa, "eager": _eager, "math": _math, "sdpa_dropout": _sdpa_dropout,
           "module_dropout": _module_dropout}


def kernel_milliseconds(length: int, batch_size: int = 16, heads: int = 12, size: int = 32, repeats: int = 100,
                        kernels=tuple(KERNELS)) -> dict:
    """Milliseconds of one forward and backward of each kernel for one layer's shape."""
    import functools

    import torch

    from peft_helpers.dropout_masks import SixteenBitMaskDropout

    q, k, v = (torch.randn(batch_size, heads, length, size, requires_grad=True) for _ in range(3))
    inputs = (q, k, v, torch.zeros(batch_size, 1, 1, length), torch.randn(batch_size, heads, length, size))
    attn = torch.nn.Module()  # what _attention reads of a BERT self-attention: its dropout module
    attn.dropout = SixteenBitMaskDropout(0.1).train()
    extra = {"module_dropout": {"attn": attn}}
    return {name: _milliseconds(functools.partial(KERNELS[name], *inputs, **extra.get(name, {})), repeats)
            for name in kernels}


def measure(args) -> dict:
    import torch

    from peft_helpers.hardware import matmul_gflops, use_threads

    use_threads(args.threads)  # only where the count changes: hardware.use_threads says why
    torch.manual_seed(0)
    rate = matmul_gflops(args.threads, args.rate_size)
    rows = []
    for length in args.lengths:
        # QK^T and PV forward, and the four products of their backward: 6 products of 2 x L x L x d FLOPs each
        flops = 6 * 2 * args.batch_size * args.heads * length * length * args.head_size
        rows.append({"length": length, "flops": flops, "at_rate_ms": flops / (rate * 1e9) * 1e3,
                     **kernel_milliseconds(length, args.batch_size, args.heads, args.head_size, args.repeats)})
    return {"rate": rate, "rows": rows, "batch_size": args.batch_size, "heads": args.heads,
            "head_size": args.head_size, "threads": torch.get_num_threads()}


def report(r: dict) -> None:
    print(f"one layer's attention, forward and backward: batch {r['batch_size']}, {r['heads']} heads of "
          f"{r['head_size']}, {r['threads']} threads; fp32 products at {r['rate']:.0f} GFLOP/s")
    print("| tokens | SDPA ms | eager ms | math ms | its products at the fp32 rate, ms | SDPA over that | "
          "dropout 0.1: SDPA ms | dropout 0.1: through the module (16-bit) ms |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in r["rows"]:
        print(f"| {row['length']} | {row['sdpa']:.3f} | {row['eager']:.3f} | {row['math']:.3f} | "
              f"{row['at_rate_ms']:.3f} | {row['sdpa'] / row['at_rate_ms']:.1f}x | {row['sdpa_dropout']:.3f} | "
              f"{row['module_dropout']:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[20, 28, 40, 60])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rate-size", type=int, default=2048, help="side of the square products the rate is "
                        "measured on (the tests pass 256)")
    args = parser.parse_args()
    result = measure(args)
    report(result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
