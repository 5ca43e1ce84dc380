"""Multi-label (SemEval-2018 E-c) and regression (STS-B) with the offline MiniLM: LoRA against a linear probe and
full fine-tuning on the same split, and for STS-B the untrained sentence-embedding baseline (cosine similarity of
MiniLM's mean-pooled embeddings, what all-MiniLM-L6-v2 was trained for).

    python benchmarks/problems.py --out-dir runs/problems                   # every row (about 25 min on 2 cores)
    python benchmarks/problems.py --out-dir runs/problems --only lora       # LoRA rows and the cosine baseline

Splits as the data READMEs say to use them: train on train.txt / train.tsv (validation carved from it, 10%,
seed 42), report on dev.txt / dev.tsv. Each run's results are kept in --out-dir; a finished run is not repeated.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"
EMOTIONS = "anger,anticipation,disgust,fear,joy,love,optimism,pessimism,sadness,surprise,trust"
TASKS = {
    "SemEval-2018 E-c": {"data_dir": str(SHARED / "semeval2018_ec"), "text_column": "Tweet", "label_column": EMOTIONS},
    "STS-B": {"data_dir": str(SHARED / "stsb"), "text_column": "sentence1", "text_pair_column": "sentence2",
              "label_column": "score"},
}
KINDS = ("lora", "linear_probe", "full")


def run_case(task: str, kind: str, out_dir: Path, model: str) -> dict:
    from peft_helpers.baselines import run_baseline
    from peft_helpers.config import RunConfig
    from peft_helpers.workflow import run

    slug = f"{task.split('-')[0].split()[0].lower()}-{kind}"
    results_file = out_dir / f"{slug}.json"
    if results_file.is_file():
        return json.loads(results_file.read_text())
    cfg = RunConfig(model=model, output_dir=str(out_dir / slug), test_split="dev", validation_split="none",
                    **TASKS[task])
    results = run(cfg, overwrite=True) if kind == "lora" else run_baseline(kind, cfg)
    results_file.write_text(json.dumps(results, indent=2, default=str))
    return results


def cosine_baseline(model: str) -> dict:
    """Pearson and Spearman of the cosine similarity of mean-pooled MiniLM embeddings on STS-B's dev split."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from peft_helpers.data import load_data
    from peft_helpers.metrics import regression_metrics
    from peft_helpers.modeling import resolve_model

    data = load_data(splits={"test": "dev", "validation": "none"}, **TASKS["STS-B"])["test"]
    tokenizer, net = AutoTokenizer.from_pretrained(resolve_model(model)), AutoModel.from_pretrained(resolve_model(model))

    @torch.inference_mode()
    def embed(texts):
        out = []
        for i in range(0, len(texts), 64):
            batch = tokenizer(texts[i:i + 64], padding=True, truncation=True, max_length=128, return_tensors="pt")
            hidden = net(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            out.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1))
        return torch.cat(out)

    similarity = (embed(list(data["text"])) * embed(list(data["text_pair"]))).sum(-1).numpy()
    return regression_metrics(data["label"], similarity * 5)  # correlations ignore the scale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", default="runs/problems")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--only", choices=KINDS)
    args = parser.parse_args()
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    from peft_helpers.hardware import matmul_gflops

    print(f"Machine: fp32 matrix products at {matmul_gflops(repeats=3):.0f} GFLOP/s")
    kinds = [args.only] if args.only else list(KINDS)
    lines = ["| task | method | trained params | headline metrics (dev split) | train s | ex/s |", "| --- | --- | --- | --- | --- | --- |"]
    for task in TASKS:
        for kind in kinds:
            r = run_case(task, kind, out_dir, args.model)
            m = r["finetuned"]
            scores = (f"Jaccard {m['jaccard']:.3f}, micro-F1 {m['micro_f1']:.3f}, macro-F1 {m['macro_f1']:.3f}"
                      + (f" (threshold {r['threshold']:.2f})" if "threshold" in r else "")
                      if "jaccard" in m else f"Pearson {m['pearson']:.3f}, Spearman {m['spearman']:.3f}")
            lines.append(f"| {task} | {kind} | {r['trainable_params']:,} | {scores} | {r['train_seconds']:.0f} | "
                         f"{r['train_samples_per_second']:.1f} |")
            print(lines[-1], flush=True)
    cosine = cosine_baseline(args.model)
    lines.append(f"| STS-B | untrained embeddings, cosine | 0 | Pearson {cosine['pearson']:.3f}, Spearman "
                 f"{cosine['spearman']:.3f} | 0 | - |")
    print("\n".join(lines))
    (out_dir / "table.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
