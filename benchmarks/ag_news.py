"""AG News (a real 4-class set: headerless CSV, labels 1..4 named in classes.txt, title and description columns)
with the offline MiniLM and LoRA: title+description joined vs given as a sentence pair, and a truncation study.

    python benchmarks/ag_news.py --out-dir runs/ag_news                    # both tables (about 40 min on 2 cores)
    python benchmarks/ag_news.py --out-dir runs/ag_news --only columns     # or: --only truncation

Data: ../shared/data/ag_news/test.csv (7,600 articles), split 80/10/10 stratified by the package (seed 42): train
6,080, validation 760, test 760. Each run's results.json is kept in --out-dir; a run whose results exist is not
repeated, so an interrupted study continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "ag_news"

# name -> RunConfig settings; columns of the headerless file: 0 = class, 1 = title, 2 = description
COLUMNS = {
    "title + description joined": {"label_column": "0", "text_column": "1+2"},
    "title, description as a pair": {"label_column": "0", "text_column": "1", "text_pair_column": "2"},
}
TRUNCATION = {f"max_length {n}, {side}": {"label_column": "0", "text_column": "1+2", "max_length": n, "truncation": side,
                                          "epochs": 1.0}
              for n in (32, 64, 128) for side in ("head", "tail", "head+tail")}


def run_case(name: str, settings: dict, out_dir: Path, model: str) -> dict:
    from peft_helpers.config import RunConfig
    from peft_helpers.data import load_run_data, truncation_summary
    from peft_helpers.modeling import load_tokenizer
    from peft_helpers.workflow import run

    slug = "".join(c if c.isalnum() else "-" for c in name).strip("-")
    results_file = out_dir / f"{slug}.json"
    if results_file.is_file():
        return json.loads(results_file.read_text())
    cfg = RunConfig(model=model, data_dir=str(DATA), output_dir=str(out_dir / slug), checkpoint_dir=str(out_dir / f"{slug}-runs"),
                    **settings)
    results = run(cfg, overwrite=True)
    tokenizer = load_tokenizer(model)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    summary = truncation_summary(load_run_data(cfg), tokenizer, cfg.max_length)
    results["truncated_train"] = int(summary.loc["train", "truncated"])
    results["longest_tokens"] = int(summary["longest"].max())
    results_file.write_text(json.dumps(results, indent=2, default=str))
    return results


def row(name: str, r: dict) -> str:
    f1 = ", ".join(f"{c['label']} {100 * c['f1']:.1f}" for c in r["per_class"])
    epochs = r["config"]["epochs"]
    return (f"| {name} | {100 * r['baseline']['accuracy']:.2f}% → **{100 * r['finetuned']['accuracy']:.2f}%** | "
            f"{100 * r['baseline']['f1']:.2f}% → {100 * r['finetuned']['f1']:.2f}% | {f1} | {r['truncated_train']:,} | "
            f"{r['train_seconds'] / epochs:.0f} | {r['train_samples_per_second']:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", default="runs/ag_news")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--only", choices=["columns", "truncation"])
    args = parser.parse_args()
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    header = ("| run | accuracy before → after | macro F1 before → after | F1 per class (after) | train texts truncated | "
              "train s per epoch | train examples/s |\n| --- | --- | --- | --- | --- | --- | --- |")
    for title, cases in (("columns", COLUMNS), ("truncation", TRUNCATION)):
        if args.only and args.only != title:
            continue
        rows = [row(name, run_case(name, settings, out_dir, args.model)) for name, settings in cases.items()]
        print(f"\n{title}:\n{header}\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
