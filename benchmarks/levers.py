"""What each lever does to CPU utilisation (issue #13), measured side by side in one run, each case in its own
process, on the throughput benchmark's set-up (MiniLM + LoRA, 2,048 Rotten Tomatoes reviews, one epoch, the full
test split, the Trainer pipeline of `bench.py`):

    python benchmarks/levers.py                      # about 15 minutes on 2 cores

Cases: the default (batch 16, fp32); batch 32 and 64; torch.compile (the Trainer's torch_compile); bf16 autocast
(`--precision bf16`: training through the Trainer's bf16, and here evaluation in bf16 too, `--eval-precision bf16`;
only worth it, and only allowed, where the CPU has bf16 matrix units, AMX or AVX512-BF16);
one inter-op thread; eager attention instead of SDPA in evaluation; the pretrained model's dropout off
(`--model-dropout 0`), and every dropout off (also `--dropout 0`, the adapter's), alone, with batch 32 and with
bf16; evaluation in batches of 64 (training unchanged), in fp32, under bf16 autocast, and compiled with inductor's
freezing (the time of the compiling pass printed apart), in batches of 128, and in batches of 64 without folding
LoRA into the weights (evaluation.lora_merged; how every evaluation ran before it); denormal numbers flushed to zero;
and two OpenMP settings (the case's process starts with them in its environment): threads that spin between
parallel regions instead of sleeping, and threads bound to cores.

    python benchmarks/levers.py --slow-cpu           # the same on an emulated slow CPU (about 15 minutes)

--slow-cpu runs the whole benchmark (the rate measurement, the FLOP count and every case) on the emulated CPU of
`demo_time.py --slow-cpu` (bench.SLOW_CPU: one thread, AVX2 at most; fp32 products at 113-119 GFLOP/s here, the
issue's machine's 105-128), with the cases that mean something there (SLOW_CPU_CASES: no bf16, which that CPU
would emulate, and no thread settings, with one thread).
Utilisation = FLOPs per processed token (FlopCounterMode, as in bench.py) x processed tokens / seconds / the
machine's matrix-product rate (fp32, and bf16 for the bf16 case), measured just before and just after each case
(their mean; the shared host's speed drifts within minutes); the rate at the start is printed too.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

CASES = {
    "default": {},
    "batch 32": {"batch_size": 32},
    "batch 64": {"batch_size": 64},
    "torch.compile": {"compile": True},
    "bf16 autocast (--precision bf16)": {"bf16": True, "settings": {"precision": "bf16"}},
    "1 inter-op thread": {"interop": 1},
    "eager attention (eval)": {"attention": "eager"},
    "model dropout 0": {"settings": {"model_dropout": 0.0}},
    "no dropout (model and adapter)": {"settings": {"model_dropout": 0.0, "dropout": 0.0}},
    "no dropout, batch 32": {"batch_size": 32, "settings": {"model_dropout": 0.0, "dropout": 0.0}},
    "no dropout, bf16": {"bf16": True, "settings": {"model_dropout": 0.0, "dropout": 0.0, "precision": "bf16"}},
    "evaluation batch 64": {"eval_batch_size": 64},
    "bf16 autocast, evaluation batch 64": {"bf16": True, "eval_batch_size": 64, "settings": {"precision": "bf16"}},
    "compiled evaluation (inductor, frozen weights), batch 64": {"compile_eval": True, "eval_batch_size": 64},
    "denormals flushed to zero": {"flush_denormal": True},
    "OpenMP threads spin (OMP_WAIT_POLICY=ACTIVE)": {"env": {"OMP_WAIT_POLICY": "ACTIVE"}},
    "OpenMP threads bound to cores (OMP_PROC_BIND=close)": {"env": {"OMP_PROC_BIND": "close", "OMP_PLACES": "cores"}},
    "evaluation batch 128": {"eval_batch_size": 128},
    "evaluation batch 64, LoRA not merged (before)": {"eval_batch_size": 64, "unmerged_eval": True},
}
# The cases run on the emulated slow CPU (--slow-cpu): bf16 is left out (a CPU that slow has no bf16 units, and
# oneDNN limited to AVX2 would emulate it), and so are the thread settings (one thread: nothing to share or bind).
SLOW_CPU_CASES = ["default", "batch 32", "batch 64", "torch.compile", "eager attention (eval)", "model dropout 0",
                  "no dropout (model and adapter)", "no dropout, batch 32", "evaluation batch 64",
                  "evaluation batch 128", "compiled evaluation (inductor, frozen weights), batch 64",
                  "denormals flushed to zero", "evaluation batch 64, LoRA not merged (before)"]


def measure_rates(kinds: list[str], threads: int, n: int = 2048) -> dict:
    """The matrix-product rate of each kind ("fp32", "bf16") now, in GFLOP/s, on n x n products."""
    from peft_helpers.hardware import matmul_gflops

    return {kind: matmul_gflops(threads, n, **({} if kind == "fp32" else {"dtype": "bfloat16"})) for kind in kinds}


def run_case(name: str, args) -> dict:
    import torch
    from bench import _setup, _token_counter

    from peft_helpers.evaluation import evaluate
    from peft_helpers.training import prepare_checkpoints, train

    lever = CASES[name]
    from peft_helpers.hardware import use_threads

    use_threads(args.threads)  # only where the count changes: hardware.use_threads says why
    if lever.get("flush_denormal"):
        torch.set_flush_denormal(True)
    if "interop" in lever:
        torch.set_num_interop_threads(lever["interop"])
    setup_args = argparse.Namespace(**{**vars(args), "batch_size": lever.get("batch_size", args.batch_size),
                                       "case": name.replace(" ", "-").replace(".", "")})
    cfg, model, tokenizer, data = _setup(setup_args, **lever.get("settings", {}))
    if lever.get("compile"):
        from dataclasses import replace

        cfg = replace(cfg, compile=True)
    if "attention" in lever:
        model.get_base_model().config._attn_implementation = lever["attention"]
    counts = _token_counter(model)
    trained = train(model, tokenizer, data, cfg, prepare_checkpoints(cfg, fresh=True))
    validation = sum(r.get("eval_runtime", 0) for r in trained.log_history)
    train_tokens = counts["train_total"]
    eval_batch_size = lever.get("eval_batch_size", cfg.batch_size)
    compile_seconds = None
    if lever.get("compile_eval"):
        import torch._inductor.config

        # Evaluation comes after training, so the weights are constants from here on: inductor's freezing folds
        # them into the graph and prepacks the products' weights (oneDNN). dynamic=True: one graph for every
        # sequence length of the length-sorted batches. The first pass compiles; the second is the one timed.
        torch._inductor.config.freezing = True
        model.forward = torch.compile(model.forward, dynamic=True)
        first = evaluate(model, tokenizer, data["test"], eval_batch_size)
    if lever.get("unmerged_eval"):
        import contextlib

        import peft_helpers.evaluation

        # evaluation as it was before evaluation.lora_merged: the adapters' own products in every forward
        peft_helpers.evaluation.lora_merged = lambda model: contextlib.nullcontext()
    before = counts["eval_total"]
    result = evaluate(model, tokenizer, data["test"], eval_batch_size, precision="bf16" if lever.get("bf16") else "fp32")
    if lever.get("compile_eval"):
        compile_seconds = first.seconds - result.seconds
    return {"train_seconds": trained.seconds - validation, "train_examples": len(data["train"]),
            "train_tokens": train_tokens, "eval_seconds": result.seconds, "eval_examples": len(data["test"]),
            "eval_tokens": counts["eval_total"] - before,
            "accuracy": result.metrics["accuracy"], "compile_seconds": compile_seconds,
            "environment": {key: os.environ.get(key) for key in lever.get("env", {})},
            "threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "rotten_tomatoes"))
    parser.add_argument("--train-size", type=int, default=2048)
    parser.add_argument("--eval-size", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--case", choices=sorted(CASES))
    parser.add_argument("--cases", nargs="+", choices=list(CASES),
                        help="default: every case (with --slow-cpu, SLOW_CPU_CASES)")
    parser.add_argument("--slow-cpu", action="store_true", help="run everything on an emulated slow CPU (see above)")
    parser.add_argument("--rate-size", type=int, default=2048,
                        help="side of the square fp32 products the rate is measured on; each measurement takes "
                             "about 8 s on one thread at 2048, and the tests, which check the report and not the "
                             "rate, pass 256")
    args = parser.parse_args()
    from bench import SLOW_CPU, case_in_subprocess

    if args.slow_cpu:
        if any(os.environ.get(key) != value for key, value in SLOW_CPU.items()):
            # MKL, oneDNN and ATen read these when they start: start again with them, so that the rate measured
            # here and every case's process (which inherits this environment) run on the emulated CPU.
            os.execve(sys.executable, [sys.executable, __file__, *sys.argv[1:]], {**os.environ, **SLOW_CPU})
        args.threads = 1
    args.cases = args.cases or (SLOW_CPU_CASES if args.slow_cpu else list(CASES))
    if args.case:
        print("LEVER_RESULT " + json.dumps(run_case(args.case, args)))
        return

    base = [sys.executable, __file__, "--model", args.model, "--data-dir", args.data_dir, "--train-size",
            str(args.train_size), "--batch-size", str(args.batch_size), "--max-length", str(args.max_length),
            "--threads", str(args.threads), "--rate-size", str(args.rate_size)]
    per_token = case_in_subprocess(base[2:] + ["--case", "flops"])

    rates = measure_rates(["fp32"] + (["bf16"] if any(CASES[name].get("bf16") for name in args.cases) else []),
                          args.threads, args.rate_size)
    emulated = " on the emulated slow CPU (" + " ".join(f"{k}={os.environ[k]}" for k in SLOW_CPU) + ")" \
        if args.slow_cpu else ""
    bf16 = f", bf16 {rates['bf16']:.1f} GFLOP/s" if "bf16" in rates else ""
    print(f"matrix products ({args.rate_size}^3, {args.threads} threads{emulated}): fp32 {rates['fp32']:.1f} GFLOP/s{bf16}; "
          f"FLOPs per token: training {per_token['train_flops_per_token'] / 1e6:.1f} M, evaluation "
          f"{per_token['eval_flops_per_token'] / 1e6:.1f} M (LoRA merged; "
          f"{per_token['eval_unmerged_flops_per_token'] / 1e6:.1f} M not merged)", flush=True)
    rows = []
    for name in args.cases:
        # The shared host's speed drifts within minutes (by a third on a bad day): each case is measured against the
        # mean of the rates just before and just after it, not only against the rate at the start.
        before = measure_rates(list(rates), args.threads, args.rate_size)
        proc = subprocess.run(base + ["--case", name], capture_output=True, text=True, cwd=ROOT,
                              env={**os.environ, **CASES[name].get("env", {})})  # OpenMP reads it at start-up
        if proc.returncode != 0:
            print(f"{name}: failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
            continue
        r = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("LEVER_RESULT")).split(" ", 1)[1])
        after = measure_rates(list(rates), args.threads, args.rate_size)
        case_rates = {kind: (before[kind] + after[kind]) / 2 for kind in rates}
        reference = case_rates["bf16" if CASES[name].get("bf16") else "fp32"]
        train_gflops = per_token["train_flops_per_token"] * r["train_tokens"] / r["train_seconds"] / 1e9
        eval_flops = per_token["eval_unmerged_flops_per_token" if CASES[name].get("unmerged_eval")
                               else "eval_flops_per_token"]
        eval_gflops = eval_flops * r["eval_tokens"] / r["eval_seconds"] / 1e9
        rows.append({"case": name, "train_examples_per_s": r["train_examples"] / r["train_seconds"],
                     "eval_examples_per_s": r["eval_examples"] / r["eval_seconds"], "train_gflops": train_gflops,
                     "train_mfu_fp32": train_gflops / case_rates["fp32"], "eval_gflops": eval_gflops,
                     "eval_mfu_fp32": eval_gflops / case_rates["fp32"], "mfu_reference": reference,
                     "fp32_gflops_around_case": case_rates["fp32"],
                     "accuracy": r["accuracy"], "compile_seconds": r["compile_seconds"],
                     "environment": r["environment"], "threads": r["threads"],
                     "cpu_capability": r["cpu_capability"]})
        row = rows[-1]
        compiling = "" if r["compile_seconds"] is None else f", compiling the evaluation {r['compile_seconds']:.1f} s"
        print(f"{name}: fp32 {case_rates['fp32']:.1f} GFLOP/s around it; train {row['train_examples_per_s']:.1f} ex/s "
              f"({train_gflops:.0f} GFLOP/s, MFU {row['train_mfu_fp32']:.3f} of fp32), eval "
              f"{row['eval_examples_per_s']:.1f} ex/s ({eval_gflops:.0f} GFLOP/s, {row['eval_mfu_fp32']:.3f}), "
              f"accuracy {r['accuracy']:.4f}{compiling}", flush=True)
    print("\n| case | fp32 GFLOP/s around the case | train examples/s | train GFLOP/s | train MFU (fp32 rate) | "
          "eval examples/s | eval GFLOP/s | eval MFU (fp32 rate) | test accuracy |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['case']} | {row['fp32_gflops_around_case']:.1f} | {row['train_examples_per_s']:.1f} | "
              f"{row['train_gflops']:.0f} | {row['train_mfu_fp32']:.3f} | {row['eval_examples_per_s']:.1f} | {row['eval_gflops']:.0f} | "
              f"{row['eval_mfu_fp32']:.3f} | {row['accuracy']:.4f} |")
    print(json.dumps({"rates_gflops": rates, "rate_size": args.rate_size, "flops_per_token": per_token,
                      "slow_cpu": SLOW_CPU if args.slow_cpu else None,
                      "rows": rows}))


if __name__ == "__main__":
    main()
