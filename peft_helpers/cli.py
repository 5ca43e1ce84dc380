"""Command line: `python -m peft_helpers run|demo|predict --help`."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from .config import RunConfig
from .environment import unsupported_message
from .errors import UserError

USAGE = """usage: python -m peft_helpers COMMAND [options]

commands:
  run      load data, evaluate the pretrained model, train LoRA, save, reload, evaluate, compare
  demo     `run` with the demo settings: GPT-2 + Hub data online, the packaged MiniLM + local data offline
  predict  classify texts with a saved adapter: predict ADAPTER_DIR "text" ...
  data     load and check the data of a run without a model: data --data-dir PATH (or --dataset NAME) ...

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




def _run(argv: list[str]) -> int:
    from .workflow import run

    parser = HfArgumentParser((RunConfig, RunOptions), prog="python -m peft_helpers run")
    cfg, options = _parse(parser, argv)
    run(cfg, overwrite=options.overwrite, resume=options.resume, results_path=options.results)
    return 0


def _demo(argv: list[str]) -> int:
    from .demo import demo_config
    from .workflow import run

    parser = HfArgumentParser((DemoOptions,), prog="python -m peft_helpers demo")
    (options,) = _parse(parser, argv)
    cfg = demo_config(options.local_data, model=options.model)
    print(f"Demo: model={cfg.model}, data={cfg.data_dir or 'Hub rotten_tomatoes'}")
    run(cfg, overwrite=True, results_path=options.results)
    return 0


def _predict(argv: list[str]) -> int:
    from .inference import predict
    from .persistence import load_adapter

    if len(argv) < 2 or argv[0] in ("-h", "--help"):
        print('usage: python -m peft_helpers predict ADAPTER_DIR "text" ["text" ...]')
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    model, tokenizer, _ = load_adapter(argv[0])
    for row in predict(model, tokenizer, argv[1:]).records():
        probs = ", ".join(f"{k}={v:.3f}" for k, v in row.items() if k.startswith("p("))
        print(f"{row['label']:>8}  [{probs}]  {row['text']}")
    return 0


def _data(argv: list[str]) -> int:
    """Load and check the data of a run (the same flags as `run`) without loading a model."""
    from .data import label_balance, load_run_data

    parser = HfArgumentParser((RunConfig,), prog="python -m peft_helpers data")
    (cfg,) = _parse(parser, argv)
    data = load_run_data(cfg)
    print(", ".join(f"{split} {len(ds):,}" for split, ds in data.items()) + f" rows; {sum(map(len, data.values())):,} in all")
    print(label_balance(data).to_string())
    return 0


def _parse(parser: HfArgumentParser, argv: list[str]):
    try:
        return parser.parse_args_into_dataclasses(args=argv)
    except TypeError as err:  # e.g. a dataclass rejecting a value
        raise UserError(str(err)) from None


COMMANDS = {"run": _run, "demo": _demo, "predict": _predict, "data": _data}


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
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: run again with --resume to continue from the last checkpoint.", file=sys.stderr)
        return 130
