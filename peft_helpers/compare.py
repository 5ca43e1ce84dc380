"""`python -m peft_helpers compare`: several PEFT methods and baselines on the same data, split and seed, one after
another, into one table (Markdown + CSV) and one plot. Each entry runs in its own process (so its peak memory is
its own and a crash in one method does not end the comparison) and keeps its results.json; an entry whose
results exist with the same settings is not run again, so an interrupted comparison continues where it stopped.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from .baselines import BASELINES
from .config import RunConfig, model_slug
from .errors import UserError
from .methods import METHOD_OPTIONS, METHODS, get_method
from .metrics import PROBLEM_METRICS
from .modeling import is_decoder
from .workflow import RESULTS_FILE, resolve, write_json

ENTRY_FILE = "compare-entry.json"  # the settings an entry's results were made with
DEFAULT_METHODS = [m for m in METHODS if m != "qlora"]
# The score column is named after the problem's headline metric: accuracy, jaccard (multi-label) or pearson.
COLUMNS = ["method", "seed", "trainable_params", "trainable_%", "adapter_MiB", "train_s", "train_examples_per_s",
           "peak_memory_MiB", "accuracy", "macro_f1"]
HEADLINES = [metrics[0] for metrics in PROBLEM_METRICS.values()]


@dataclass
class Entry:
    name: str  # a method or a baseline
    seed: int
    cfg: RunConfig

    @property
    def folder(self) -> Path:
        return Path(self.cfg.output_dir)

    @property
    def key(self) -> dict:
        return {"name": self.name, **self.cfg.to_dict()}


def resolved_key(name: str, cfg: RunConfig) -> dict:
    """What an entry's results were made with: its settings after the architecture's and method's defaults are
    filled in, so that a changed default reruns the entry too."""
    return json.loads(json.dumps({"name": name, **resolve(cfg).to_dict()}))


def plan(cfg: RunConfig, names: list[str], seeds: list[int], out_dir: str | Path) -> list[Entry]:
    """One entry per (name, seed). Options a method does not take are left out for it (--r applies to the LoRA
    family, not to IA3), so one set of flags can drive the whole list."""
    unknown = [n for n in names if n not in METHODS and n not in BASELINES]
    if unknown:
        raise UserError(f"compare: {', '.join(unknown)} is not a method or baseline: use {', '.join(METHODS)} or "
                        f"{', '.join(BASELINES)}.")
    out = Path(out_dir)
    entries = []
    for seed in seeds:
        for name in names:
            method = name if name in METHODS else "lora"
            takes = get_method(method).options
            settings = {k: (getattr(cfg, k) if k in takes else None) for k in METHOD_OPTIONS}
            entry_cfg = replace(cfg, **settings, method=method, seed=seed, output_dir=str(out / f"{name}-seed{seed}"),
                                checkpoint_dir=str(out / "checkpoints" / f"{name}-seed{seed}"))
            entries.append(Entry(name, seed, entry_cfg))
    return entries


def is_done(entry: Entry) -> bool:
    record = entry.folder / ENTRY_FILE
    if not (entry.folder / RESULTS_FILE).is_file() or not record.is_file():
        return False
    try:
        return json.loads(record.read_text()) == resolved_key(entry.name, entry.cfg)
    except UserError:  # the method no longer fits: not done
        return False


def run_entry(entry_json: str) -> int:
    """Run one entry in this process (called in a child process by `compare`)."""
    from .baselines import run_baseline
    from .workflow import run

    spec = json.loads(Path(entry_json).read_text())
    name = spec.pop("name")
    cfg = RunConfig(**spec)
    if name in BASELINES:
        run_baseline(name, cfg)
    else:
        run(cfg, overwrite=True, resume=True)  # an entry interrupted mid-training continues from its checkpoint
    write_json(cfg.output_dir + "/" + ENTRY_FILE, resolved_key(name, cfg))
    return 0


def run_child(command: list[str]) -> int:
    """Run one entry's process; if the comparison is stopped (Ctrl-C, or SIGTERM from `timeout` or a scheduler),
    stop the entry too instead of leaving it running unseen. Its checkpoints let the next comparison resume it."""
    def stop(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop) if threading.current_thread() is threading.main_thread() else None
    child = subprocess.Popen(command)
    try:
        return child.wait()
    except BaseException:
        child.terminate()
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def compare(cfg: RunConfig, names: list[str], seeds: list[int], out_dir: str | Path, fresh: bool = False,
            collect_only: bool = False) -> pd.DataFrame:
    """Run every entry not done yet (all with `fresh`), then write the table and plot. `collect_only`: run
    nothing, only tabulate what is there (entries not run are rows marked "not run")."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    entries = plan(cfg, names, seeds, out)
    skipped: dict[str, str] = {}
    for i, entry in enumerate([] if collect_only else entries, 1):
        label = f"[{i}/{len(entries)}] {entry.name} (seed {entry.seed})"
        if not fresh and is_done(entry):
            print(f"{label}: done before, results kept")
            continue
        try:  # a method that does not fit is a row with its reason, not a crash
            if entry.name in METHODS:
                resolve(entry.cfg)
            elif entry.name == "zero_shot" and not is_decoder(entry.cfg.model):
                raise UserError("zero_shot needs a decoder language model; this one is an encoder")
        except UserError as err:
            skipped[entry.name] = str(err)
            print(f"{label}: skipped: {err}")
            continue
        print(f"{label}: running", flush=True)
        spec = out / "checkpoints" / f"{entry.name}-seed{entry.seed}.json"
        spec.parent.mkdir(parents=True, exist_ok=True)
        spec.write_text(json.dumps(entry.key, default=str))
        code = run_child([sys.executable, "-c", "import sys; from peft_helpers.compare import run_entry; "
                          "sys.exit(run_entry(sys.argv[1]))", str(spec)])
        if code != 0:
            skipped[entry.name] = f"failed (exit status {code}); see the output above"
            print(f"{label}: failed with exit status {code}")
    table = collect(entries, skipped)
    write_table(table, out)
    return table


def collect(entries: list[Entry], skipped: dict[str, str] | None = None) -> pd.DataFrame:
    rows, headline = [], "accuracy"
    for entry in entries:
        path = entry.folder / RESULTS_FILE
        if not path.is_file():
            rows.append({"method": entry.name, "seed": entry.seed, "note": (skipped or {}).get(entry.name, "not run")})
            continue
        r = json.loads(path.read_text())
        headline = PROBLEM_METRICS[r.get("problem", "single-label")][0]
        peak = r.get("peak_memory_mib") or {}
        rows.append({
            "method": entry.name, "seed": entry.seed, "trainable_params": r["trainable_params"],
            "trainable_%": 100 * r["trainable_params"] / r["total_params"], "adapter_MiB": r.get("adapter_mib"),
            "train_s": r.get("train_seconds"), "train_examples_per_s": r.get("train_samples_per_second"),
            "peak_memory_MiB": peak.get("gpu", peak.get("rss")), headline: r["finetuned"][headline],
            "macro_f1": r["finetuned"].get("f1", r["finetuned"].get("macro_f1")),  # regression has none
        })
    columns = [headline if c == "accuracy" else c for c in COLUMNS]
    return pd.DataFrame(rows, columns=[*columns, "note"])


def markdown(table: pd.DataFrame) -> str:
    def cell(v) -> str:
        if isinstance(v, float):
            return "" if pd.isna(v) else f"{v:,.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
        return f"{v:,}" if isinstance(v, int) else str(v)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + " --- |" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def write_table(table: pd.DataFrame, out: Path) -> None:
    table.to_csv(out / "comparison.csv", index=False)
    (out / "comparison.md").write_text(markdown(table))
    fig = plot_comparison(table)
    fig.savefig(out / "comparison.png", dpi=120, bbox_inches="tight")
    print(table.drop(columns=["note"]).to_string(index=False, float_format="{:.4g}".format))
    print(f"\nTable: {out / 'comparison.md'} and {out / 'comparison.csv'}; plot: {out / 'comparison.png'}")


def plot_comparison(table: pd.DataFrame):
    """The test score (accuracy, Jaccard or Pearson) against trainable parameters (log scale); entries without
    training are horizontal lines."""
    import matplotlib.pyplot as plt

    score = next(c for c in table.columns if c in HEADLINES)
    done = table.dropna(subset=[score])
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    trained = done[done["trainable_params"] > 0]
    untrained = done[done["trainable_params"] == 0]
    points = []
    for name, rows in trained.groupby("method", sort=False):
        ax.scatter(rows["trainable_params"], rows[score], label=name, s=30)
        points.append((name, float(rows["trainable_params"].iloc[0]), float(rows[score].mean())))
    label_points(ax, points, done[score])
    for (name, rows), style in zip(untrained.groupby("method", sort=False), (":", "--", "-.")):
        ax.axhline(rows[score].mean(), linestyle=style, color="gray", linewidth=1)
        ax.annotate(f"{name} (no training)", (0.01, rows[score].mean()), xycoords=("axes fraction", "data"),
                    fontsize=7, color="gray", xytext=(0, 2), textcoords="offset points")
    if not trained.empty:
        ax.set_xscale("log")
    ax.set(xlabel="trainable parameters (log scale)", ylabel=f"test {score}", title=f"{score} against trainable parameters")
    fig.tight_layout()
    return fig


def label_points(ax, points: list[tuple[str, float, float]], accuracies) -> None:
    """Name each point; names of points with about the same parameter count (LoRA, DoRA, rsLoRA, PiSSA) are
    spread upwards in accuracy order so that none overlaps another."""
    gap = 0.04 * max(0.05, float(accuracies.max() - accuracies.min()))
    clusters: list[list[tuple[str, float, float]]] = []
    for point in sorted(points, key=lambda p: p[1]):
        if clusters and abs(np.log10(point[1] / clusters[-1][0][1])) < 0.15:
            clusters[-1].append(point)
        else:
            clusters.append([point])
    for cluster in clusters:
        last = -np.inf
        for name, x, y in sorted(cluster, key=lambda p: p[2]):
            text_y = max(y, last + gap)
            last = text_y
            ax.annotate(name, (x, y), xytext=(x * 1.25, text_y), textcoords="data", fontsize=7, va="center",
                        arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.5} if text_y != y else None)


def default_out_dir(cfg: RunConfig) -> str:
    return str(Path("runs") / f"compare-{model_slug(cfg.model)}")
