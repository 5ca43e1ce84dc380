"""Command line: `python -m peft_helpers run|demo|predict --help`."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from .config import RunConfig
from .distributed import is_main
from .environment import unsupported_message
from .errors import UserError

USAGE = """usage: python -m peft_helpers COMMAND [options]

commands:
  run      load data, evaluate the pretrained model, train LoRA, save, reload, evaluate, compare
  demo     `run` with the demo settings: GPT-2 + Hub data online, the packaged MiniLM + local data offline
  predict  classify with a saved adapter: predict ADAPTER_DIR "text" ... | --input FILE --output FILE
  data     load and check the data of a run without a model: data --data-dir PATH (or --dataset NAME) ...
  export   a standalone model (LoRA merged, head, labels, tokenizer): export ADAPTER_DIR OUT_DIR --merge
  compare  several PEFT methods and baselines on the same data, split and seed: one table and one plot
  tune     search learning rate, rank, alpha, dropout, epochs, targets with Optuna (--trials, --time-budget)

`python -m peft_helpers run --help` lists every option."""


@dataclass
class RunOptions:
    results: str | None = field(default=None, metadata={"help": "Also write the results JSON to this path."})
    overwrite: bool = field(
        default=False, metadata={"help": "Replace an existing adapter in output_dir and old checkpoints."}
    )
    resume: bool = field(default=False, metadata={"help": "Continue an interrupted run from its last checkpoint."})


@dataclass
class DemoOptions:
    local_data: str | None = field(
        default=None, metadata={"help": "Rotten Tomatoes folder (rt-polarity.pos/.neg) used when the Hub is unreachable."}
    )
    results: str | None = field(default=None, metadata={"help": "Also write the results JSON to this path."})
    model: str | None = field(default=None, metadata={"help": "Use this model instead of the demo's (GPT-2 / MiniLM)."})




@dataclass
class ExportOptions:
    adapter_dir: str = field(metadata={"help": "A folder saved by run/demo/the notebook."})
    out_dir: str = field(metadata={"help": "Where the merged model goes (must not exist unless --overwrite)."})
    merge: bool = field(default=False, metadata={"help": "Merge LoRA into the base weights (the only export kind)."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing out_dir."})
    check_data: str | None = field(
        default=None, metadata={"help": "Data to check the export's logits on, if the adapter's own data moved."}
    )
    push_to_hub: str | None = field(default=None, metadata={"help": "Also upload the folder to this Hub repo id."})


def _run(argv: list[str]) -> int:
    from .workflow import run

    parser = HfArgumentParser((RunConfig, RunOptions), prog="python -m peft_helpers run")
    cfg, options = _parse(parser, argv)
    run(cfg, overwrite=options.overwrite, resume=options.resume, results_path=options.results)
    return 0


def _demo(argv: list[str]) -> int:
    from .demo import demo_config, machine_line
    from .workflow import run

    parser = HfArgumentParser((DemoOptions,), prog="python -m peft_helpers demo")
    (options,) = _parse(parser, argv)
    cfg = demo_config(options.local_data, model=options.model)
    print(f"Demo: model={cfg.model}, data={cfg.data_dir or 'Hub rotten_tomatoes'}")
    print(machine_line())
    start = time.perf_counter()
    run(cfg, overwrite=True, results_path=options.results)
    minutes, seconds = divmod(round(time.perf_counter() - start), 60)
    print(f"Demo finished in {minutes} min {seconds} s (training and every evaluation).")
    return 0


@dataclass
class PredictFileOptions:
    input: str = field(metadata={"help": "CSV, TSV, JSON Lines or Parquet file to classify."})
    output: str = field(metadata={"help": "Where the predictions go (same formats): input columns + predicted_label + p(<label>)."})
    text_column: str = field(default="text", metadata={"help": "The column holding the texts."})
    text_pair_column: str | None = field(
        default=None, metadata={"help": "The column holding each pair's second text (an adapter trained on pairs)."})
    chunk_size: int = field(default=10_000, metadata={"help": "Rows read, predicted and written at a time (bounds memory)."})
    batch_size: int = field(default=64, metadata={"help": "Texts per forward pass."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing output file."})


def _predict(argv: list[str]) -> int:
    from .inference import load_for_prediction, predict, predict_file

    usage = ('usage: python -m peft_helpers predict ADAPTER_DIR "text" ["text" ...]\n'
             '       python -m peft_helpers predict ADAPTER_DIR --pairs "first" "second" ["first" "second" ...]\n'
             "       python -m peft_helpers predict ADAPTER_DIR --input FILE --output FILE [--text-column COLUMN] "
             "[--text-pair-column COLUMN]")
    if len(argv) < 2 or argv[0] in ("-h", "--help"):
        print(usage)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    if argv[1].startswith("--") and argv[1] != "--pairs":
        (options,) = _parse(HfArgumentParser((PredictFileOptions,), prog="python -m peft_helpers predict ADAPTER_DIR"), argv[1:])
        _check_pairs(argv[0], options.text_pair_column is not None)
        model, tokenizer = load_for_prediction(argv[0])
        rows = predict_file(model, tokenizer, options.input, options.output, options.text_column, options.chunk_size,
                            options.batch_size, options.overwrite, options.text_pair_column)
        print(f"{rows:,} rows classified: {options.output}")
        return 0
    texts, pairs = argv[1:], None
    if argv[1] == "--pairs":
        if len(argv) < 4 or len(argv[2:]) % 2:
            raise UserError("--pairs takes the texts two by two (first, second, first, second, ...): "
                            f"{len(argv[2:])} given.")
        texts, pairs = argv[2::2], argv[3::2]
    _check_pairs(argv[0], pairs is not None)
    model, tokenizer = load_for_prediction(argv[0])
    for row in predict(model, tokenizer, texts, text_pairs=pairs).records():
        text = row["text"] + (f"  |  {row['text_pair']}" if "text_pair" in row else "")
        if "score" in row:  # regression
            print(f"{row['score']:>8.3f}  {text}")
            continue
        label = ", ".join(row["label"]) or "(none)" if isinstance(row["label"], list) else row["label"]
        probs = ", ".join(f"{k}={v:.3f}" for k, v in row.items() if k.startswith("p("))
        print(f"{label:>8}  [{probs}]  {text}")
    return 0


def _check_pairs(adapter_dir: str, pairs: bool) -> None:
    """Texts given as the adapter was trained: pairs to a pair model (STS-B), single texts otherwise."""
    from .persistence import read_metadata

    trained_on = read_metadata(adapter_dir).get("config", {}).get("text_pair_column")
    if trained_on and not pairs:
        raise UserError(f"adapter {adapter_dir} was trained on text pairs (second text: {trained_on!r}): give "
                        "--pairs FIRST SECOND ..., or --text-pair-column with --input.")
    if pairs and not trained_on:
        raise UserError(f"adapter {adapter_dir} was trained on single texts: give them without --pairs or "
                        "--text-pair-column.")


def _data(argv: list[str]) -> int:
    """Load and check the data of a run (the same flags as `run`) without loading a model."""
    from .data import load_run_data
    from .reporting import label_balance

    parser = HfArgumentParser((RunConfig,), prog="python -m peft_helpers data")
    (cfg,) = _parse(parser, argv)
    data = load_run_data(cfg)
    print(", ".join(f"{split} {len(ds):,}" for split, ds in data.items()) + f" rows; {sum(map(len, data.values())):,} in all")
    print(label_balance(data).to_string())
    return 0


def _export(argv: list[str]) -> int:
    from .export import export_merged, push_to_hub

    parser = HfArgumentParser((ExportOptions,), prog="python -m peft_helpers export")
    positional = [a for a in argv[:2] if not a.startswith("-")]  # export ADAPTER_DIR OUT_DIR [options]
    if len(positional) == 2:
        argv = ["--adapter-dir", positional[0], "--out-dir", positional[1], *argv[2:]]
    (options,) = _parse(parser, argv)
    if not options.merge:
        raise UserError("export writes a merged model: add --merge (the adapter folder itself is what peft loads).")
    result = export_merged(options.adapter_dir, options.out_dir, options.overwrite, options.check_data)
    print(f"Merged model written to {result['out_dir']}; its logits match the adapter's on {result['checked_rows']} "
          f"test rows (largest difference {result['max_logit_diff']:.1e}).")
    if options.push_to_hub:
        print(f"Pushed: {push_to_hub(result['out_dir'], options.push_to_hub)}")
    return 0


@dataclass
class CompareOptions:
    methods: str = field(
        default="all", metadata={"help": "Comma-separated PEFT methods; 'all' is every method but qlora ('all,qlora' adds it)."}
    )
    baselines: str = field(default="random_head,linear_probe,full,zero_shot",
                           metadata={"help": "Comma-separated baselines (zero_shot: decoders only), or 'none'."})
    seeds: str | None = field(default=None, metadata={"help": "Comma-separated seeds (default: --seed)."})
    compare_dir: str | None = field(default=None, metadata={"help": "Where results go; default runs/compare-<model>."})
    fresh: bool = field(default=False, metadata={"help": "Run every entry again, even those already done."})
    collect_only: bool = field(default=False, metadata={"help": "Run nothing: only tabulate the entries already done."})


def _compare(argv: list[str]) -> int:
    from .compare import DEFAULT_METHODS, compare, default_out_dir

    parser = HfArgumentParser((RunConfig, CompareOptions), prog="python -m peft_helpers compare")
    cfg, options = _parse(parser, argv)
    methods = [m for name in options.methods.split(",") if name for m in (DEFAULT_METHODS if name == "all" else [name])]
    baselines = [] if options.baselines == "none" else [b for b in options.baselines.split(",") if b]
    try:
        seeds = [int(s) for s in options.seeds.split(",")] if options.seeds else [cfg.seed]
    except ValueError:
        raise UserError(f"seeds={options.seeds!r}: give whole numbers separated by commas, e.g. 42,43,44.") from None
    compare(cfg, methods + baselines, seeds, options.compare_dir or default_out_dir(cfg), options.fresh,
            options.collect_only)
    return 0


def _tune(argv: list[str]) -> int:
    from .tune import TuneOptions, tune

    parser = HfArgumentParser((RunConfig, TuneOptions), prog="python -m peft_helpers tune")
    cfg, options = _parse(parser, argv)
    tune(cfg, options)
    return 0


def _parse(parser: HfArgumentParser, argv: list[str]):
    try:
        return parser.parse_args_into_dataclasses(args=argv)
    except TypeError as err:  # e.g. a dataclass rejecting a value
        raise UserError(str(err)) from None


COMMANDS = {"run": _run, "demo": _demo, "predict": _predict, "data": _data, "export": _export, "compare": _compare,
            "tune": _tune}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"error: unknown command {argv[0]!r}: use one of {', '.join(COMMANDS)} (--help lists them).", file=sys.stderr)
        return 2
    problem = unsupported_message()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        return COMMANDS[argv[0]](argv[1:])
    except UserError as err:
        if is_main():  # in a launch of several processes they all fail with the same line: print it once
            print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: run again with --resume to continue from the last checkpoint.", file=sys.stderr)
        return 130
