"""SmolLM2-135M's exact architecture on a CUDA GPU: LoRA training and evaluation throughput, peak GPU memory and
model FLOPs utilisation, in bf16 and fp16 mixed precision (fp16 is what a Colab T4 uses), and bf16 with
torch.compile; then, optionally, a batch size that cannot fit (the one-line advice `run` gives).

    python benchmarks/gpu_smollm2.py --shape FOLDER --data-dir RT_FOLDER [--precision bf16 fp16 bf16+compile]
                                     [--train-size N] [--oom-batch 8192]

FOLDER holds SmolLM2's config.json and tokenizer (benchmarks/gpu_check.sh prepares it). The weights are
initialised randomly: the borrowed GPU machines have no network and take at most 64 MiB of files, which the
270 MB of real weights exceed. Speed and memory do not depend on the weights' values; the accuracy printed is
meaningless. FLOPs per token are counted with torch.utils.flop_counter.FlopCounterMode on real batches (forward
and backward for training, forward for evaluation); utilisation is achieved FLOP/s over the card's bf16
matrix-product rate measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"  # cpu: only to try the script (--precision fp32)


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def matmul_tflops(n: int = 8192, repeats: int = 10) -> float:
    import torch

    n = n if device() == "cuda" else 1024
    a = torch.randn(n, n, device=device(), dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device(), dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync()
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e12


def flops_per_token(model, batches, train: bool) -> float:
    """FlopCounterMode over real batches: FLOPs divided by the (padded) tokens they hold."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    total_flops = total_tokens = 0
    for batch in batches:
        batch = {k: v.to(device()) for k, v in batch.items()}
        with torch.autocast(device(), dtype=torch.bfloat16), FlopCounterMode(display=False) as counter:
            if train:
                model(**batch).loss.backward()
            else:
                with torch.no_grad():
                    model(**{k: v for k, v in batch.items() if k != "labels"})
        model.zero_grad(set_to_none=True)
        total_flops += counter.get_total_flops()
        total_tokens += batch["input_ids"].numel()
    return total_flops / total_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--precision", nargs="+", default=["bf16", "fp16", "bf16+compile"],
                        help="runs: bf16, fp16, fp32, each optionally +compile (torch.compile through the Trainer)")
    parser.add_argument("--oom-batch", type=int, default=None,
                        help="then try `run` with this batch size, which should not fit: prints the one-line advice")
    parser.add_argument("--train-size", type=int, default=None)
    parser.add_argument("--eval-size", type=int, default=None)
    args = parser.parse_args()

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, DataCollatorWithPadding

    from peft_helpers.config import RunConfig
    from peft_helpers.evaluation import evaluate
    from peft_helpers.modeling import count_parameters, create_peft_model
    from peft_helpers.training import train
    from peft_helpers.workflow import prepare

    peak = matmul_tflops()
    gpu = torch.cuda.get_device_name(0) if device() == "cuda" else "none (cpu)"
    print(f"GPU: {gpu}; bf16 matrix products (8192^3): {peak:.0f} TFLOP/s", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(args.shape)).save_pretrained(tmp)
        AutoTokenizer.from_pretrained(args.shape).save_pretrained(tmp)
        for run_name in args.precision:
            precision, compiled = run_name.split("+")[0], run_name.endswith("+compile")
            cfg = RunConfig(model=tmp, data_dir=args.data_dir, train_size=args.train_size, eval_size=args.eval_size,
                            epochs=1, precision=precision, compile=compiled, output_dir=f"{tmp}/out-{run_name}",
                            checkpoint_dir=f"{tmp}/runs-{run_name}", save_steps=10_000)
            p = prepare(cfg)
            model = create_peft_model(p.model, p.cfg)
            params = count_parameters(model)
            if device() == "cuda":
                torch.cuda.reset_peak_memory_stats()
            trained = train(model, p.tokenizer, p.encoded, p.cfg)
            train_peak = torch.cuda.max_memory_allocated() / 2**20 if device() == "cuda" else 0.0
            result = evaluate(model, p.tokenizer, p.encoded["test"], p.cfg.batch_size)
            collate = DataCollatorWithPadding(p.tokenizer)
            columns = ["input_ids", "attention_mask", "label"]
            train_rows = p.encoded["train"].select_columns(columns)
            bs, n = p.cfg.batch_size, min(8 * p.cfg.batch_size, len(train_rows))
            batches = [collate([train_rows[j] for j in range(i, min(i + bs, n))]) for i in range(0, n, bs)]
            for b in batches:
                b["labels"] = b.pop("label") if "label" in b else b["labels"]
            train_fpt = flops_per_token(model, batches, train=True)
            eval_fpt = flops_per_token(model, batches, train=False)
            train_tokens = sum(p.encoded["train"]["length"]) * p.cfg.epochs
            test_tokens = sum(p.encoded["test"]["length"])
            train_tflops = train_fpt * train_tokens / trained.seconds / 1e12
            eval_tflops = eval_fpt * test_tokens / result.seconds / 1e12
            row = {"run": run_name, "compiled": p.cfg.compile, "train_examples": len(p.encoded["train"]), "trainable": params.trainable,
                   "train_seconds": round(trained.seconds, 1), "train_examples_per_s": round(trained.samples_per_second, 1),
                   "eval_examples_per_s": round(result.samples_per_second, 1),
                   "peak_gpu_mib_train": round(train_peak, 0),
                   "train_gflop_per_token": round(train_fpt / 1e9, 3), "eval_gflop_per_token": round(eval_fpt / 1e9, 3),
                   "train_tflops": round(train_tflops, 2), "eval_tflops": round(eval_tflops, 2),
                   "train_mfu": round(train_tflops / peak, 4), "eval_mfu": round(eval_tflops / peak, 4),
                   "accuracy_meaningless": round(result.metrics["accuracy"], 4)}
            rows.append(row)
            print(json.dumps(row), flush=True)
        print(json.dumps({"gpu": gpu, "bf16_matmul_tflops": round(peak, 1), "runs": rows}), flush=True)
        if args.oom_batch:
            from peft_helpers.cli import main as cli

            print(f"run with --batch-size {args.oom_batch} (should not fit):", flush=True)
            status = cli(["run", "--model", tmp, "--data-dir", args.data_dir, "--epochs", "1", "--train-size",
                          str(args.oom_batch), "--batch-size", str(args.oom_batch), "--output-dir", f"{tmp}/out-oom"])
            print(f"exit status {status}", flush=True)


if __name__ == "__main__":
    main()
