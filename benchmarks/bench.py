"""Throughput, padding and memory of the peft_helpers pipeline, measured side by side in one run.

    python benchmarks/bench.py --out BENCHMARKS.md      # what `make bench` runs (offline, about 10 minutes)

Cases, each in its own process (clean peak-memory numbers), on the same model, data and seed:
  pipeline  our Trainer set-up: dynamic padding, length-grouped batches; evaluation sorted by length, LoRA merged;
            the last layer for [CLS] alone (run's --last-layer, head-token by default: --last-layer here),
            dropout masks of 16-bit words (run's --dropout-masks, 16-bit by default: --dropout-masks here)
  bare      a minimal PyTorch loop: the same model, LoRA, dropout masks, optimizer, schedule and the *same batches*
  common    the usual notebook recipe: padding="max_length", shuffled batches, Trainer.evaluate on padded data,
            transformers' own model (every position of the last layer, torch's dropout masks)
  flops     FLOPs per token (FlopCounterMode on real batches) and the fp32 matrix-product rate, for utilisation
The last lines printed are the headline ratios, `name=value`, one per line.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from peft_helpers.config import EVAL_BATCH_FACTOR  # noqa: E402
from peft_helpers.hardware import matmul_gflops, use_threads  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "rotten_tomatoes"
# An emulated slow CPU (issue #13's machine: 2 cores, fp32 products at 105-128 GFLOP/s): one thread, and AVX2 as
# the widest vector instructions of MKL, oneDNN and ATen's kernels, which brings this Xeon's (AVX-512, AMX) fp32
# products down to 113-119 GFLOP/s. Each library reads its variable when it starts, so they go in the environment
# of a new process (demo_time.py --slow-cpu, levers.py --slow-cpu).
SLOW_CPU = {"OMP_NUM_THREADS": "1", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2",
            "ATEN_CPU_CAPABILITY": "avx2"}


def case_in_subprocess(argv: list[str], env: dict | None = None) -> dict:
    """Run this script with `argv` (which names a --case) in a new process, in `env` (default: this one's), and
    return the case's BENCH_RESULT; exit with the end of its stderr if it fails."""
    proc = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, cwd=ROOT, env=env)
    if proc.returncode != 0:
        sys.exit(f"bench.py {' '.join(argv)} failed:\n{proc.stderr[-4000:]}")
    line = next(out for out in proc.stdout.splitlines() if out.startswith("BENCH_RESULT "))
    return json.loads(line.split(" ", 1)[1])


def _setup(args, padding: str | None = None, **settings):
    """Model (with LoRA) and tokenized data, identical for every case; `settings` are RunConfig fields that a
    case changes (levers.py)."""
    from peft_helpers.config import RunConfig
    from peft_helpers.modeling import create_lora_model
    from peft_helpers.workflow import prepare

    cfg = RunConfig(model=args.model, data_dir=args.data_dir, train_size=args.train_size, eval_size=args.eval_size,
                    batch_size=args.batch_size, max_length=args.max_length, output_dir="/tmp/bench-unused",
                    checkpoint_dir=f"/tmp/bench-runs-{args.case}", save_steps=10**9, seed=0, epochs=1,
                    **{"last_layer": getattr(args, "last_layer", "head-token"),
                       "dropout_masks": getattr(args, "dropout_masks", "16-bit"), **settings})
    p = prepare(cfg, device="cpu")  # the tuned LoRA settings, one epoch
    cfg, model, tokenizer, encoded = p.cfg, p.model, p.tokenizer, p.encoded
    if padding == "max_length":
        columns = [c for c in ("input_ids", "attention_mask", "token_type_ids") if c in encoded["train"].column_names]
        encoded = encoded.map(
            lambda b: dict(tokenizer.pad({c: b[c] for c in columns}, padding="max_length", max_length=cfg.max_length)),
            batched=True,
        )
    return cfg, create_lora_model(model, cfg), tokenizer, encoded


def training_batches(cfg, tokenizer, data) -> list[dict]:
    """One epoch's training batches in the order the Trainer draws them (SeededLengthGroupedSampler), padded by
    DataCollatorWithPadding, with "labels" as the model's forward names them: the input of the bare loops
    (case_bare, profile_step.py, attention.py)."""
    from transformers import DataCollatorWithPadding

    from peft_helpers.training import SeededLengthGroupedSampler

    collator = DataCollatorWithPadding(tokenizer)
    rows = data["train"].select_columns(["input_ids", "attention_mask", "label"])
    order = list(SeededLengthGroupedSampler(cfg.batch_size, data["train"]["length"], cfg.seed))
    batches = [collator([rows[i] for i in order[s : s + cfg.batch_size]]) for s in range(0, len(order), cfg.batch_size)]
    return [{("labels" if k == "label" else k): v for k, v in batch.items()} for batch in batches]


def warmed_up_training_blocks(model, cfg, batches: list[dict], args):
    """A bare training step on `model` (forward, backward, AdamW step), run on the first 5 batches to warm up the
    thread pool, allocator and kernel choices, and the next args.rounds blocks of args.steps batches: one block per
    round of alternating_passes (attention.py, dropout_masks.py). Returns (step, blocks); UserError where the
    batches run out."""
    import torch

    from peft_helpers.errors import UserError

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate)
    model.train()

    def step(batch):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for batch in batches[:5]:
        step(batch)
    blocks = [batches[5 + r * args.steps : 5 + (r + 1) * args.steps] for r in range(args.rounds)]
    if not blocks[-1]:
        raise UserError(f"--train-size {args.train_size} holds too few batches for {args.rounds} rounds of "
                        f"{args.steps} steps: lower --rounds or --steps.")
    return step, blocks


def alternating_passes(rounds: int, modes: tuple[str, str], run_pass, threads: int | None = None,
                       rate_size: int = 2048) -> list[dict]:
    """Time `run_pass(round, mode)` once per mode and round, the order alternating by round (a, b; b, a; ...) so
    that the shared host's drift falls on both; with `threads`, each pass also gets the fp32 matrix-product rate
    measured just before and just after it (their mean). Returns [{"round", "mode", "seconds"[, "rate"]}]."""
    passes = []
    for round_ in range(rounds):
        for mode in modes if round_ % 2 == 0 else modes[::-1]:
            before = matmul_gflops(threads, rate_size) if threads else None
            start = time.perf_counter()
            run_pass(round_, mode)
            passes.append({"round": round_, "mode": mode, "seconds": time.perf_counter() - start})
            if threads:
                passes[-1]["rate"] = (before + matmul_gflops(threads, rate_size)) / 2
    return passes


def _token_counter(model):
    """Counts real and processed (padded) tokens of every forward pass."""
    counts = {"train_real": 0, "train_total": 0, "eval_real": 0, "eval_total": 0}

    def hook(module, args, kwargs):
        mask = kwargs.get("attention_mask")
        if mask is not None:
            prefix = "train" if module.training else "eval"
            counts[f"{prefix}_real"] += int(mask.sum())
            counts[f"{prefix}_total"] += mask.numel()

    # On the PeftModel that the Trainer and predict_logits call, not on the model it wraps: peft 0.14 calls
    # the wrapped model's forward directly, which runs no hooks (this counted nothing there).
    model.register_forward_pre_hook(hook, with_kwargs=True)
    return counts


def case_pipeline(args) -> dict:
    from peft_helpers.evaluation import evaluate
    from peft_helpers.training import prepare_checkpoints, train

    cfg, model, tokenizer, data = _setup(args)
    counts = _token_counter(model)
    trained = train(model, tokenizer, data, cfg, prepare_checkpoints(cfg, fresh=True))
    train_counts = dict(counts)
    result = evaluate(model, tokenizer, data["test"], cfg.eval_batch_size)
    validation = sum(r.get("eval_runtime", 0) for r in trained.log_history)
    return {
        "train_seconds": trained.seconds - validation, "train_examples": len(data["train"]) * cfg.epochs,
        "train_real_tokens": train_counts["train_real"], "train_total_tokens": train_counts["train_total"],
        "eval_seconds": result.seconds, "eval_examples": len(data["test"]),
        "eval_real_tokens": counts["eval_real"] - train_counts["eval_real"],
        "eval_total_tokens": counts["eval_total"] - train_counts["eval_total"],
        "accuracy": result.metrics["accuracy"],
        "in_training_validation_seconds": validation,
    }


def case_bare(args) -> dict:
    """The same forward/backward on the same batches, with nothing around it: the practical limit."""
    import numpy as np
    import torch
    from transformers import DataCollatorWithPadding, get_linear_schedule_with_warmup

    from peft_helpers.dropout_masks import draw_sixteen_bit_dropout_masks
    from peft_helpers.evaluation import lora_merged

    cfg, model, tokenizer, data = _setup(args)
    if cfg.dropout_masks == "16-bit":  # as LengthGroupedTrainer does
        draw_sixteen_bit_dropout_masks(model)
    collator = DataCollatorWithPadding(tokenizer)
    batches = training_batches(cfg, tokenizer, data)
    decay = [p for n, p in model.named_parameters() if p.requires_grad and "bias" not in n and "LayerNorm" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and ("bias" in n or "LayerNorm" in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=cfg.learning_rate)
    steps = len(batches)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(np.ceil(cfg.warmup * steps)), steps)
    torch.manual_seed(cfg.seed)  # as Trainer does before training (dropout)
    model.train()
    start = time.perf_counter()
    for batch in batches:
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    train_seconds = time.perf_counter() - start

    model.eval()
    test = data["test"]
    lengths = np.array(test["length"])
    order = np.argsort(-lengths, kind="stable")
    rows = test.select_columns(["input_ids", "attention_mask"])
    size = cfg.eval_batch_size  # the pipeline's evaluation batches
    eval_batches = [collator([rows[int(i)] for i in order[s : s + size]]) for s in range(0, len(order), size)]
    start = time.perf_counter()
    with torch.inference_mode(), lora_merged(model):  # as predict_logits evaluates
        logits = torch.cat([model(**b).logits for b in eval_batches])
    eval_seconds = time.perf_counter() - start
    predictions = np.empty(len(order), dtype=int)
    predictions[order] = logits.argmax(-1).numpy()
    return {"train_seconds": train_seconds, "train_examples": len(data["train"]), "eval_seconds": eval_seconds,
            "eval_examples": len(test), "accuracy": float((predictions == np.array(test["label"])).mean())}


def case_common(args) -> dict:
    """padding="max_length" at map time, shuffled batches, Trainer.evaluate: what most notebooks do."""
    from transformers import Trainer, TrainingArguments

    from peft_helpers.metrics import compute_metrics
    from peft_helpers.training import warmup_steps

    # the stock model; it trains with the Trainer itself, not train(), so its dropout masks are torch's too
    cfg, model, tokenizer, data = _setup(args, padding="max_length", last_layer="all-tokens", dropout_masks="bernoulli")
    counts = _token_counter(model)
    targs = TrainingArguments(output_dir=cfg.checkpoint_dir, num_train_epochs=cfg.epochs, learning_rate=cfg.learning_rate,
                              warmup_steps=warmup_steps(cfg, len(data["train"])), weight_decay=0.01,
                              per_device_train_batch_size=cfg.batch_size,
                              per_device_eval_batch_size=cfg.batch_size, save_strategy="no", eval_strategy="no",
                              report_to="none", use_cpu=True, seed=cfg.seed, disable_tqdm=True)
    data = data.remove_columns("length")
    trainer = Trainer(model=model, args=targs, train_dataset=data["train"], eval_dataset=data["test"],
                      compute_metrics=compute_metrics)
    start = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - start
    train_counts = dict(counts)
    start = time.perf_counter()
    metrics = trainer.evaluate()
    eval_seconds = time.perf_counter() - start
    return {"train_seconds": train_seconds, "train_examples": len(data["train"]) * cfg.epochs,
            "train_real_tokens": train_counts["train_real"], "train_total_tokens": train_counts["train_total"],
            "eval_seconds": eval_seconds, "eval_examples": len(data["test"]),
            "eval_real_tokens": counts["eval_real"], "eval_total_tokens": counts["eval_total"],
            "accuracy": metrics["eval_accuracy"]}


def count_flops(cfg, model, tokenizer, data) -> dict:
    """FLOPs per processed (padded) token of a training step (forward and backward) and of an evaluation forward,
    counted by torch.utils.flop_counter.FlopCounterMode on 8 real batches of each, spread over the epoch's
    length-grouped order (training) and the length-sorted test split (evaluation)."""
    from contextlib import nullcontext

    import numpy as np
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import DataCollatorWithPadding

    from peft_helpers.evaluation import lora_merged
    from peft_helpers.training import SeededLengthGroupedSampler

    collator = DataCollatorWithPadding(tokenizer)
    rows = data["train"].select_columns(["input_ids", "attention_mask", "label"])
    order = list(SeededLengthGroupedSampler(cfg.batch_size, data["train"]["length"], cfg.seed))
    starts = np.linspace(0, len(order) - cfg.batch_size, 8).astype(int)
    counts = {}
    model.train()
    flops = tokens = 0
    for s in starts:
        batch = collator([rows[i] for i in order[s : s + cfg.batch_size]])
        batch = {("labels" if k == "label" else k): v for k, v in batch.items()}
        with FlopCounterMode(display=False) as counter:
            model(**batch).loss.backward()
        model.zero_grad(set_to_none=True)
        flops, tokens = flops + counter.get_total_flops(), tokens + batch["input_ids"].numel()
    counts["train_flops_per_token"] = flops / tokens
    model.eval()
    test = data["test"].select_columns(["input_ids", "attention_mask"])
    by_length = np.argsort(-np.array(data["test"]["length"]), kind="stable")
    for key, merging in (("eval_flops_per_token", lora_merged), ("eval_unmerged_flops_per_token", nullcontext)):
        # eval_flops_per_token: as predict_logits runs it, LoRA folded into the weights (evaluation.lora_merged),
        # the base products only; unmerged: the adapters' own products too (levers.py's "before" case)
        flops = tokens = 0
        for s in np.linspace(0, len(by_length) - cfg.batch_size, 8).astype(int):
            batch = collator([test[int(i)] for i in by_length[s : s + cfg.batch_size]])
            with torch.inference_mode(), merging(model), FlopCounterMode(display=False) as counter:
                model(**batch)
            flops, tokens = flops + counter.get_total_flops(), tokens + batch["input_ids"].numel()
        counts[key] = flops / tokens
    return counts


def case_flops(args) -> dict:
    """FLOPs per processed token (count_flops) and the matrix-product rate."""
    cfg, model, tokenizer, data = _setup(args)
    return {**count_flops(cfg, model, tokenizer, data), "matmul_gflops": matmul_gflops(args.threads, args.rate_size)}


CASES = {"pipeline": case_pipeline, "bare": case_bare, "common": case_common, "flops": case_flops}


def run_case(args) -> dict:
    use_threads(args.threads)  # only where the count changes: hardware.use_threads says why
    result = CASES[args.case](args)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def versions() -> dict:
    import peft
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__}


def hardware() -> str:
    import os

    import torch

    from peft_helpers.hardware import cpu_description

    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return f"{os.cpu_count()} CPU cores ({cpu_description()}){gpu}"


def report(args, results: dict, command: str) -> str:
    p, b, c, f = results["pipeline"], results["bare"], results["common"], results["flops"]

    def rate(r, k):
        return r[f"{k}_examples"] / r[f"{k}_seconds"]

    def tokens(r, k):  # the bare loop runs the pipeline's batches, so it processed the pipeline's tokens
        return r.get(f"{k}_real_tokens", p[f"{k}_real_tokens"]) / r[f"{k}_seconds"]

    lines = [
        "## Throughput benchmark", "",
        f"Command: `{command}`  ",
        f"Hardware: {hardware()}; {args.threads} torch threads  ",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()) + "  ",
        f"Model `{args.model}` + LoRA (tuned defaults), Rotten Tomatoes train subset {p['train_examples']:,}, "
        f"test {p['eval_examples']:,}, batch size {args.batch_size} (evaluation: {EVAL_BATCH_FACTOR * args.batch_size}, the package's "
        f"default; the common recipe evaluates in batches of {args.batch_size}), max_length {args.max_length}, one epoch, CPU fp32; "
        f"the pipeline and the bare loop with --last-layer {args.last_layer} and --dropout-masks {args.dropout_masks}.", "",
        "| case | train examples/s | train real tokens/s | eval examples/s | eval real tokens/s | "
        "train padding efficiency | eval padding efficiency | accuracy | peak RSS MiB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in (("pipeline (ours)", p), ("bare PyTorch loop, same batches", b), ("common recipe (max_length padding)", c)):
        tr_eff = f"{r['train_real_tokens'] / r['train_total_tokens']:.3f}" if "train_total_tokens" in r else "same batches"
        ev_eff = f"{r['eval_real_tokens'] / r['eval_total_tokens']:.3f}" if "eval_total_tokens" in r else "same batches"
        lines.append(f"| {name} | {rate(r, 'train'):.1f} | {tokens(r, 'train'):,.0f} | {rate(r, 'eval'):.1f} | "
                     f"{tokens(r, 'eval'):,.0f} | {tr_eff} | {ev_eff} | {r['accuracy']:.4f} | {r['peak_rss_mib']:.0f} |")
    def mfu(r, k):  # achieved FLOP/s over the measured matrix-product rate; bare runs the pipeline's batches
        return f[f"{k}_flops_per_token"] * p[f"{k}_total_tokens"] / r[f"{k}_seconds"] / (f["matmul_gflops"] * 1e9)

    lines += ["", f"Model FLOPs utilisation: the machine's fp32 matrix-product rate, measured in the same run with "
              f"{args.threads} threads ({args.rate_size} x {args.rate_size} products), is **{f['matmul_gflops']:.1f} GFLOP/s**. "
              f"FlopCounterMode counts {f['train_flops_per_token'] / 1e6:.1f} MFLOP per processed token for a training "
              f"step (forward and backward, LoRA) and {f['eval_flops_per_token'] / 1e6:.1f} MFLOP for an evaluation "
              "forward (8 real batches of each). Achieved FLOP/s = FLOPs per token x tokens processed / seconds.", "",
              "| case | train GFLOP/s | train MFU | eval GFLOP/s | eval MFU |", "| --- | --- | --- | --- | --- |"]
    for name, r in (("pipeline (ours)", p), ("bare PyTorch loop, same batches", b)):
        lines.append(f"| {name} | {mfu(r, 'train') * f['matmul_gflops']:.1f} | {mfu(r, 'train'):.3f} | "
                     f"{mfu(r, 'eval') * f['matmul_gflops']:.1f} | {mfu(r, 'eval'):.3f} |")
    headline = {
        "matmul_gflops": f["matmul_gflops"],
        "pipeline_train_mfu": mfu(p, "train"),
        "pipeline_eval_mfu": mfu(p, "eval"),
        "bare_train_mfu": mfu(b, "train"),
        "bare_eval_mfu": mfu(b, "eval"),
        "pipeline_vs_bare_train": rate(p, "train") / rate(b, "train"),
        "pipeline_vs_bare_eval": rate(p, "eval") / rate(b, "eval"),
        "common_over_pipeline_train_time": c["train_seconds"] / p["train_seconds"],
        "common_over_pipeline_eval_time": c["eval_seconds"] / p["eval_seconds"],
        "train_padding_efficiency": p["train_real_tokens"] / p["train_total_tokens"],
        "eval_padding_efficiency": p["eval_real_tokens"] / p["eval_total_tokens"],
        "pipeline_peak_rss_mib": p["peak_rss_mib"],
    }
    lines += ["", "Pipeline training time excludes the Trainer's per-epoch validation pass "
              f"({p['in_training_validation_seconds']:.1f} s, besides {p['train_seconds']:.1f} s of training), which "
              "the bare loop does not do; it includes everything else (logging, checkpointing, callbacks).", "",
              "Headline ratios:", "", "```"] + [f"{k}={v:.3f}" for k, v in headline.items()] + ["```", ""]
    return "\n".join(lines), headline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA))
    parser.add_argument("--train-size", type=int, default=2048)
    parser.add_argument("--eval-size", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--last-layer", default="head-token", choices=("head-token", "all-tokens"),
                        help="run's --last-layer for every case (all-tokens: the code before it existed)")
    parser.add_argument("--dropout-masks", default="16-bit", choices=("16-bit", "bernoulli"),
                        help="run's --dropout-masks for the pipeline and the bare loop (bernoulli: torch's own)")
    parser.add_argument("--case", choices=sorted(CASES), help="run one case in this process and print its JSON")
    parser.add_argument("--rate-size", type=int, default=2048,
                        help="side of the square fp32 products the rate is measured on (the tests pass 256)")
    parser.add_argument("--out", help="write the report here (replacing the section between the markers)")
    args = parser.parse_args()
    if args.threads is None:
        import os

        args.threads = os.cpu_count() or 1
    if args.case:
        print("BENCH_RESULT " + json.dumps(run_case(args)))
        return
    base = ["--model", args.model, "--data-dir", args.data_dir, "--train-size",
            str(args.train_size), "--batch-size", str(args.batch_size), "--max-length", str(args.max_length),
            "--threads", str(args.threads), "--rate-size", str(args.rate_size), "--last-layer", args.last_layer,
            "--dropout-masks", args.dropout_masks] + (
                ["--eval-size", str(args.eval_size)] if args.eval_size else [])
    results = {}
    for case in ("flops", "pipeline", "bare", "common"):
        print(f"running {case} ...", flush=True)
        results[case] = case_in_subprocess(base + ["--case", case])
    command = "python benchmarks/bench.py " + " ".join(sys.argv[1:])
    text, headline = report(args, results, command)
    if args.out:
        write_section(Path(args.out), text)
    print(text)
    for key, value in headline.items():
        print(f"{key}={value:.3f}")


BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def write_section(path: Path, text: str) -> None:
    """Replace the benchmark section of BENCHMARKS.md, keeping everything else (the quality study)."""
    old = path.read_text() if path.exists() else "# Benchmarks\n\n"
    block = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in old and END in old:
        new = old[: old.index(BEGIN)] + block + old[old.index(END) + len(END):]
    else:
        new = old.rstrip() + "\n\n" + block + "\n"
    path.write_text(new)


if __name__ == "__main__":
    main()
