"""The offline demo's run (MiniLM on the full local Rotten Tomatoes, the demo's settings: 2 epochs, dropout off, no
validation pass) with one setting changed, in alternating pairs, to decide whether a lever belongs in the demo:

    python benchmarks/demo_variants.py --option attention --values eager sdpa    # 4 runs, about 15 minutes here
    python benchmarks/demo_variants.py --option precision --values bf16 fp32

Each round runs `python -m peft_helpers run` with the demo's settings plus `--OPTION VALUE`, once per value, each in
a fresh process, the order alternating by round (a, b; b, a) so that the shared host's drift falls on both, and
each between two measurements of the fp32 matrix-product rate (this host's rate moves by 20% within minutes). It
prints each run's training seconds, its training examples/s per GFLOP/s of that rate (the drift divided out), and
its accuracy; then per value the medians, and the first value's training examples/s over the second's round by
round (two adjacent runs: the steadier comparison when the rate measured around a run moves more than the run).
Further arguments go to `run` (the tests pass a tiny model and subsets).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def demo_arguments(data_dir: str, model: str | None = None) -> list[str]:
    """The offline demo's settings (peft_helpers.demo.demo_config) as `run` flags; `model` replaces its model."""
    from peft_helpers.config import RunConfig
    from peft_helpers.demo import OFFLINE_DEMO_SETTINGS, demo_config

    cfg, defaults = demo_config(data_dir, online=False, model=model), RunConfig()
    argv = ["--model", cfg.model, "--data-dir", str(Path(data_dir).resolve())]
    for name in OFFLINE_DEMO_SETTINGS:
        value = getattr(cfg, name)
        if isinstance(value, bool):
            argv += [] if value == getattr(defaults, name) else [f"--{'' if value else 'no-'}{name}"]
        else:
            argv += [f"--{name.replace('_', '-')}", str(value)]
    return argv


def measure(args, run_args: list[str]) -> list[dict]:
    from bench import alternating_passes

    base = [sys.executable, "-m", "peft_helpers", "run", *demo_arguments(args.data_dir, args.model), *run_args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONHASHSEED": "0"}
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    records = {}

    def run_pass(round_, value):
        results = workdir / f"{args.option}-{value}-{round_}.json"
        done = subprocess.run([*base, f"--{args.option.replace('_', '-')}", value, "--output-dir",
                               str(workdir / "adapter"), "--checkpoint-dir", str(workdir / "runs"), "--overwrite",
                               "--results", str(results)], cwd=workdir, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            tail = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit status {done.returncode}"
            sys.exit(f"run --{args.option} {value} failed: {tail}")
        records[round_, value] = json.loads(results.read_text())

    passes = alternating_passes(args.rounds, tuple(args.values), run_pass, args.threads, args.rate_size)
    for p in passes:
        record = records[p["round"], p["mode"]]
        p.update(train_seconds=record["train_seconds"], train_examples_per_s=record["train_samples_per_second"],
                 accuracy=record["finetuned"]["accuracy"], baseline_accuracy=record["baseline"]["accuracy"])
        p["train_examples_per_s_per_gflops"] = p["train_examples_per_s"] / p["rate"]
    return passes


def summary(passes: list[dict], values: list[str]) -> dict:
    """Per value: the medians over its runs."""
    out = {}
    for value in values:
        runs = [p for p in passes if p["mode"] == value]
        out[value] = {key: statistics.median(p[key] for p in runs)
                      for key in ("seconds", "train_seconds", "train_examples_per_s_per_gflops", "accuracy", "rate")}
    return out


def per_round_ratios(passes: list[dict], values: list[str]) -> list[float]:
    """The first value's training examples/s over the second's, round by round: two adjacent runs, the more robust
    comparison where the rate measured around a run moves more than the run itself."""
    by = {value: [p["train_examples_per_s"] for p in passes if p["mode"] == value] for value in values}
    return [a / b for a, b in zip(by[values[0]], by[values[1]])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--option", required=True, help="a `run` option, e.g. attention or precision")
    parser.add_argument("--values", nargs=2, required=True, metavar="VALUE", help="the two values to compare")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "rotten_tomatoes"))
    parser.add_argument("--model", default=None, help="instead of the demo's model (the tests use a tiny one)")
    parser.add_argument("--rounds", type=int, default=2, help="runs per value")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads of the rate measurement")
    parser.add_argument("--rate-size", type=int, default=2048, help="n of the n x n products that measure the rate")
    parser.add_argument("--workdir", default="/tmp/demo-variants", help="where the runs write their adapters")
    args, run_args = parser.parse_known_args()
    passes = measure(args, run_args)
    print(f"the demo's run with --{args.option} {' or '.join(args.values)}, alternating; the fp32 rate of "
          f"{args.rate_size}^3 products with {args.threads} threads around each run")
    for p in passes:
        print(f"  round {p['round']} {p['mode']:>6}: {p['seconds']:.0f} s in all, training {p['train_seconds']:.1f} s "
              f"= {p['train_examples_per_s']:.1f} examples/s at {p['rate']:.0f} GFLOP/s "
              f"({p['train_examples_per_s_per_gflops']:.3f} per GFLOP/s); accuracy {p['baseline_accuracy']:.2%} -> "
              f"{p['accuracy']:.2%}")
    medians = summary(passes, args.values)
    for value, m in medians.items():
        print(f"median {value}: training {m['train_seconds']:.1f} s, {m['train_examples_per_s_per_gflops']:.3f} "
              f"examples/s per GFLOP/s, accuracy {m['accuracy']:.2%}")
    a, b = args.values
    ratios = per_round_ratios(passes, args.values)
    print(f"{a} over {b}, training examples/s per round: {', '.join(f'{r:.3f}' for r in ratios)}x; median "
          f"{statistics.median(ratios):.3f}x (medians per GFLOP/s: "
          f"{medians[a]['train_examples_per_s_per_gflops'] / medians[b]['train_examples_per_s_per_gflops']:.3f}x)")
    print("DEMO_VARIANTS " + json.dumps({"option": args.option, "values": args.values, "passes": passes,
                                         "medians": medians, "per_round_ratios": ratios,
                                         "rate_size": args.rate_size, "threads": args.threads}))


if __name__ == "__main__":
    main()
