"""Throughput, padding and memory of the package's stock pipeline against the common notebook recipe.

    python benchmarks/bench.py --out BENCHMARKS.md      # what `make bench` runs (offline, about 5 minutes)

Cases, each in its own process (clean peak-memory numbers), on the same model, data, LoRA settings and seed:
  pipeline  `train` and `evaluate` as `run` calls them: the stock Trainer with dynamic padding
            (DataCollatorWithPadding) and its length-grouped sampler; evaluation on length-sorted batches
  common    the usual notebook recipe: padding="max_length" at map time, shuffled batches, Trainer.evaluate
Both are stock transformers and peft computations; they differ only in how batches are formed. The table gives
examples/s, real tokens/s, the share of processed tokens that are real (padding efficiency), accuracy and peak
memory, and the training's model FLOPs utilisation: the Trainer's own FLOP estimate (total_flos) per second over
the machine's fp32 matrix-product rate, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "rotten_tomatoes"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def _setup(args, tag: str):
    """The resolved config, the LoRA model and the tokenized data, identical for every case."""
    from peft_helpers.config import RunConfig
    from peft_helpers.modeling import create_peft_model
    from peft_helpers.workflow import prepare

    cfg = RunConfig(model=args.model, data_dir=args.data_dir, train_size=args.train_size, eval_size=args.eval_size,
                    batch_size=args.batch_size, max_length=args.max_length, output_dir=f"/tmp/bench-{tag}",
                    save_steps=10**9, seed=0, epochs=1, validation=False)
    p = prepare(cfg, device="cpu")
    return p.cfg, create_peft_model(p.model, p.cfg), p.tokenizer, p.encoded


def _token_counter(model) -> dict:
    """Counts real and processed (padded) tokens of every forward pass, in training and in evaluation."""
    counts = {"train_real": 0, "train_total": 0, "eval_real": 0, "eval_total": 0}

    def hook(module, args, kwargs):
        mask = kwargs.get("attention_mask")
        if mask is not None:
            prefix = "train" if module.training else "eval"
            counts[f"{prefix}_real"] += int(mask.sum())
            counts[f"{prefix}_total"] += mask.numel()

    model.register_forward_pre_hook(hook, with_kwargs=True)
    return counts


def case_pipeline(args) -> dict:
    from peft_helpers.evaluation import evaluate
    from peft_helpers.training import prepare_checkpoints, train

    cfg, model, tokenizer, data = _setup(args, "pipeline")
    counts = _token_counter(model)
    trained = train(model, tokenizer, data, cfg, prepare_checkpoints(cfg, fresh=True))
    trained_counts = dict(counts)
    result = evaluate(model, tokenizer, data["test"], cfg.eval_batch_size)
    return {"train_seconds": trained.seconds, "train_examples": len(data["train"]),
            "train_flos": trained.trainer.state.total_flos, "eval_seconds": result.seconds,
            "eval_examples": len(data["test"]), "accuracy": result.metrics["accuracy"],
            **{f"{k}_tokens": v for k, v in trained_counts.items() if k.startswith("train")},
            **{f"{k}_tokens": counts[k] - trained_counts[k] for k in ("eval_real", "eval_total")}}


def case_common(args) -> dict:
    """padding="max_length" at map time, shuffled batches, Trainer.evaluate: what most notebooks do."""
    from transformers import Trainer, TrainingArguments

    from peft_helpers.metrics import compute_metrics
    from peft_helpers.training import warmup_steps

    cfg, model, tokenizer, data = _setup(args, "common")
    columns = [c for c in ("input_ids", "attention_mask", "token_type_ids") if c in data["train"].column_names]
    data = data.map(lambda b: dict(tokenizer.pad({c: b[c] for c in columns}, padding="max_length",
                                                 max_length=cfg.max_length)), batched=True).remove_columns("length")
    counts = _token_counter(model)
    targs = TrainingArguments(output_dir=cfg.checkpoint_dir, num_train_epochs=cfg.epochs, learning_rate=cfg.learning_rate,
                              warmup_steps=warmup_steps(cfg, len(data["train"])), weight_decay=0.01,
                              per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=cfg.eval_batch_size,
                              save_strategy="no", eval_strategy="no", report_to="none", use_cpu=True, seed=cfg.seed,
                              disable_tqdm=True)
    trainer = Trainer(model=model, args=targs, train_dataset=data["train"], eval_dataset=data["test"],
                      compute_metrics=compute_metrics)
    start = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - start
    trained_counts = dict(counts)
    start = time.perf_counter()
    metrics = trainer.evaluate()
    return {"train_seconds": train_seconds, "train_examples": len(data["train"]), "train_flos": trainer.state.total_flos,
            "eval_seconds": time.perf_counter() - start, "eval_examples": len(data["test"]),
            "accuracy": metrics["eval_accuracy"],
            **{f"{k}_tokens": v for k, v in trained_counts.items() if k.startswith("train")},
            **{f"{k}_tokens": counts[k] - trained_counts[k] for k in ("eval_real", "eval_total")}}


CASES = {"pipeline": case_pipeline, "common": case_common}


def run_case(args) -> dict:
    from peft_helpers.hardware import matmul_gflops

    rate_before = matmul_gflops(repeats=5)
    result = CASES[args.case](args)
    result["matmul_gflops"] = (rate_before + matmul_gflops(repeats=5)) / 2  # the rate around the case
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def case_in_subprocess(argv: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        sys.exit(f"bench.py {' '.join(argv)} failed:\n{proc.stderr[-4000:]}")
    line = next(out for out in proc.stdout.splitlines() if out.startswith("BENCH_RESULT "))
    return json.loads(line.split(" ", 1)[1])


def hardware_line() -> str:
    import torch

    from peft_helpers.hardware import cpu_description

    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return f"{os.cpu_count()} CPU cores ({cpu_description()}){gpu}, {torch.get_num_threads()} torch threads"


def versions_line() -> str:
    import peft
    import torch
    import transformers

    return (f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
            f"peft {peft.__version__}")


def report(args, results: dict, command: str) -> str:
    p = results["pipeline"]
    lines = ["## Throughput", "", f"Command: `{command}`  ", f"Hardware: {hardware_line()}  ",
             f"Versions: {versions_line()}  ",
             f"Model `{args.model}` + LoRA (tuned defaults), Rotten Tomatoes train subset {p['train_examples']:,}, "
             f"test {p['eval_examples']:,}, batch size {args.batch_size}, max_length {args.max_length}, one epoch, "
             "CPU fp32.", "",
             "| case | fp32 GFLOP/s around | train ex/s | train real tokens/s | train padding efficiency | train MFU | "
             "eval ex/s | eval padding efficiency | accuracy | peak RSS MiB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in (("pipeline (run, the notebook)", p), ("common recipe (max_length padding)", results["common"])):
        mfu = r["train_flos"] / r["train_seconds"] / (r["matmul_gflops"] * 1e9)
        lines.append(f"| {name} | {r['matmul_gflops']:.0f} | {r['train_examples'] / r['train_seconds']:.1f} | "
                     f"{r['train_real_tokens'] / r['train_seconds']:,.0f} | "
                     f"{r['train_real_tokens'] / r['train_total_tokens']:.3f} | {mfu:.2f} | "
                     f"{r['eval_examples'] / r['eval_seconds']:.1f} | {r['eval_real_tokens'] / r['eval_total_tokens']:.3f} | "
                     f"{r['accuracy']:.4f} | {r['peak_rss_mib']:.0f} |")
    c = results["common"]
    lines += ["", f"The common recipe takes {c['train_seconds'] / p['train_seconds']:.2f}x the pipeline's training time "
              f"and {c['eval_seconds'] / p['eval_seconds']:.2f}x its evaluation time. MFU counts the Trainer's estimate "
              "(6 x tokens x parameters, padding included), so it is comparable between machines, not between cases.", ""]
    return "\n".join(lines)


def write_section(path: Path, text: str) -> None:
    """Replace the throughput section of BENCHMARKS.md between the markers, keeping everything else."""
    old = path.read_text() if path.exists() else "# Benchmarks\n\n"
    block = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in old and END in old:
        new = old[: old.index(BEGIN)] + block + old[old.index(END) + len(END):]
    else:
        new = old.rstrip() + "\n\n" + block + "\n"
    path.write_text(new)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA))
    parser.add_argument("--train-size", type=int, default=2048)
    parser.add_argument("--eval-size", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--case", choices=sorted(CASES), help="run one case in this process and print its JSON")
    parser.add_argument("--out", help="write the report into this file, between the markers")
    args = parser.parse_args()
    if args.case:
        print("BENCH_RESULT " + json.dumps(run_case(args)))
        return
    base = ["--model", args.model, "--data-dir", args.data_dir, "--train-size", str(args.train_size), "--batch-size",
            str(args.batch_size), "--max-length", str(args.max_length)]
    base += ["--eval-size", str(args.eval_size)] if args.eval_size else []
    results = {}
    for case in CASES:
        print(f"running {case} ...", flush=True)
        results[case] = case_in_subprocess(base + ["--case", case])
    text = report(args, results, "python benchmarks/bench.py " + " ".join(sys.argv[1:]))
    if args.out:
        write_section(Path(args.out), text)
    print(text)


if __name__ == "__main__":
    main()
