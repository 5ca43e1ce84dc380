"""Learning curves of finished runs, as a picture and a Markdown table (the evidence behind BENCHMARKS.md).

    python benchmarks/curves.py --out benchmarks/curves_minilm.png "LoRA r16=runs/a.json" "full=runs/b.json"

Each input is a results file with a `learning_curve` (results.json of `python -m peft_helpers run`, or the
output of benchmarks/full_finetune.py saved to a file: its RESULT line is read), optionally prefixed with a label
and "=".
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peft_helpers.reporting import plot_learning_curves, training_curves  # noqa: E402


def read(spec: str) -> tuple[str, dict]:
    label, _, path = spec.rpartition("=")
    text = Path(path).read_text()
    if "RESULT " in text:  # the saved output of full_finetune.py or pooling.py: its last RESULT line
        text = text[text.rindex("RESULT ") + len("RESULT "):].splitlines()[0]
    result = json.loads(text)
    if "learning_curve" not in result:
        raise SystemExit(f"{path} has no learning_curve: rerun it with the current code")
    return label or Path(path).stem, result


def accuracy_on_test(result: dict) -> float:
    return result["finetuned"]["accuracy"] if "finetuned" in result else result["accuracy"]


def table(runs: dict[str, dict]) -> str:
    """Validation accuracy after each epoch, the last logged training loss, and test accuracy, per run."""
    lines = ["| run | validation accuracy by epoch | last training loss | test accuracy |", "| --- | --- | --- | --- |"]
    for name, result in runs.items():
        train, evals = training_curves(result["learning_curve"])
        by_epoch = "-" if evals.empty else ", ".join(
            f"{e:g}: {100 * a:.2f}%" for e, a in zip(evals["epoch"], evals["eval_accuracy"])
        )
        loss = f"{train['loss'].iloc[-1]:.3f}" if not train.empty else "-"
        lines.append(f"| {name} | {by_epoch} | {loss} | {100 * accuracy_on_test(result):.2f}% |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="[label=]path to a results file")
    parser.add_argument("--out", required=True, help="PNG file for the curves")
    args = parser.parse_args()
    runs = dict(read(spec) for spec in args.results)
    fig = plot_learning_curves({name: r["learning_curve"] for name, r in runs.items()})
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}\n")
    print(table(runs))


if __name__ == "__main__":
    main()
