"""Peak memory of batch prediction from files (`predict_file`) on generated CSVs of growing size: it must not grow
with the file, since rows are read, predicted and written in chunks.

    python benchmarks/predict_memory.py --rows 100000 1000000

Each size runs in its own process (a clean peak RSS). The texts are Rotten Tomatoes reviews repeated; the model
is a tiny random GPT-2 with the real GPT-2 tokenizer plus a LoRA adapter (the memory of reading, tokenizing,
batching and writing is what is measured; a real model adds its own, constant, size).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
SHARED = ROOT.parent / "shared"


def one(rows: int, work: Path) -> dict:
    import csv

    from conftest import make_tiny_gpt2

    from peft_helpers.config import RunConfig
    from peft_helpers.inference import predict_file
    from peft_helpers.persistence import load_adapter
    from peft_helpers.workflow import run

    model_dir = work / "tiny-gpt2"
    if not model_dir.exists():
        make_tiny_gpt2(model_dir)
    adapter = work / "adapter"
    if not adapter.exists():
        run(RunConfig(model=str(model_dir), data_dir=str(SHARED / "data" / "rotten_tomatoes"), train_size=64,
                      eval_size=32, batch_size=16, output_dir=str(adapter), checkpoint_dir=str(work / "runs")))
    texts = (SHARED / "data" / "rotten_tomatoes" / "rt-polarity.pos").read_bytes().decode("latin-1").splitlines()
    source = work / f"reviews-{rows}.csv"
    with open(source, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "review"])
        writer.writerows((i, texts[i % len(texts)]) for i in range(rows))
    model, tokenizer, _ = load_adapter(adapter, device="cpu")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    done = predict_file(model, tokenizer, source, work / f"out-{rows}.csv", text_column="review", overwrite=True)
    seconds = time.perf_counter() - start
    return {"rows": done, "file_mib": source.stat().st_size / 2**20, "seconds": seconds, "rows_per_second": done / seconds,
            "peak_rss_mib_before": before, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one(args.one, Path(args.work))))
        return
    with tempfile.TemporaryDirectory() as work:
        print("| rows | input file MiB | seconds | rows/s | peak RSS MiB after loading | peak RSS MiB at the end |")
        print("| --- | --- | --- | --- | --- | --- |")
        for rows in args.rows:
            proc = subprocess.run([sys.executable, __file__, "--one", str(rows), "--work", work], capture_output=True,
                                  text=True, cwd=ROOT)
            if proc.returncode != 0:
                sys.exit(proc.stderr[-3000:])
            r = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))[7:])
            print(f"| {r['rows']:,} | {r['file_mib']:.1f} | {r['seconds']:.0f} | {r['rows_per_second']:,.0f} | "
                  f"{r['peak_rss_mib_before']:.0f} | {r['peak_rss_mib']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
