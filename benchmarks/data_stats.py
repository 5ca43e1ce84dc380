"""Token lengths of a dataset under each offline model's tokenizer: does `max_length` truncate anything?

    python benchmarks/data_stats.py [--data-dir ../shared/data/rotten_tomatoes] [--models minilm smollm2]

Prints, per tokenizer and split: examples, mean / median / 99th percentile / longest token count (special tokens
included, as the model sees them), and how many examples a max_length of 128 would truncate.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "rotten_tomatoes"))
    parser.add_argument("--models", nargs="+", default=["minilm", "smollm2"])
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args()

    from peft_helpers.data import load_data
    from peft_helpers.modeling import load_tokenizer

    data = load_data(args.data_dir)
    print(f"{'tokenizer':<10} {'split':<10} {'examples':>8} {'mean':>6} {'median':>6} {'p99':>5} {'max':>5} "
          f"{f'> {args.max_length}':>7}")
    for model in args.models:
        tokenizer = load_tokenizer(model)
        for split, ds in data.items():
            lengths = np.array([len(ids) for ids in tokenizer(list(ds["text"]))["input_ids"]])
            print(f"{model:<10} {split:<10} {len(lengths):>8,} {lengths.mean():>6.1f} {np.median(lengths):>6.0f} "
                  f"{np.percentile(lengths, 99):>5.0f} {lengths.max():>5} {(lengths > args.max_length).sum():>7}")


if __name__ == "__main__":
    main()
